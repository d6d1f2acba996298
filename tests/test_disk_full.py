"""A disk that fills up mid-stage, for real: the output dir on a small tmpfs in a private mount
namespace (unshare), already holding the previous run's outputs. The stage must stop with exit 2
and a message saying the disk is full and naming the file, leave the previous outputs byte for
byte and leave no temporary file behind. Skipped where unshare/mount is not permitted."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ganpipe.errors import ConfigError, DiskFullError
from ganpipe.io import atomic_dir, atomic_path, save_npz, write_json
from tests.test_bad_inputs import suite


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    reason = suite.small_disk_unavailable()
    if reason:
        pytest.skip(reason)
    return suite.build_workspace(tmp_path_factory.mktemp("disk-full") / "base")


@pytest.mark.parametrize(
    ("stage", "out", "args", "headroom", "named"),
    [
        # The PNG tree: 1,000 files of a page each fill 256 KiB of room after ~60 of them.
        ("generate", "data/synthetic", ["--set", "generate.per_class=100"], 256 << 10,
         "synthetic/images/"),
        # Keras's model.save of generator.keras (54 KB), the first file of the model dir.
        ("train", "models", [], 16 << 10, "models/generator.keras"),
    ],
    ids=["generate-pngs", "train-keras-save"],
)  # fmt: skip
def test_disk_full_mid_stage_keeps_previous_outputs(
    workspace: Path,
    tmp_path: Path,
    stage: str,
    out: str,
    args: list[str],
    headroom: int,
    named: str,
) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(workspace, ws)
    before = suite.snapshot(ws)
    small = f"{suite.SMALL_DISK}/{Path(out).name}"
    argv = [suite.GANPIPE, stage, *args, f"--{Path(out).name}-dir", small, "--quiet"]
    done = subprocess.run(
        suite.small_disk(out, headroom)(ws, argv), cwd=ws, env=suite.env(),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert suite.TRACEBACK not in output
    error = next(line for line in done.stderr.splitlines() if line.startswith(f"ganpipe {stage}:"))
    assert error.startswith(f"ganpipe {stage}: error: disk full (no space left on device)"), error
    assert f"{small}/" in error and named in error, error
    assert f"the previous {small} was kept" in error, error
    # The outputs as they were, byte for byte, and nothing beside them (no temporary file or dir).
    # Checkpoints are not outputs: with code edited since the workspace was built the run key
    # differs and train trains (and checkpoints) a new run before the export fails.
    changed = suite.diff(before, suite.snapshot(ws))
    assert [c for c in changed if not c[1:].startswith("checkpoints/")] == []


# --- the same contract without a namespace: ENOSPC injected into the writers ----------------------


def _enospc(*_args: object, **_kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".*"))


@pytest.mark.parametrize("write", ["write_json", "save_npz"])
def test_injected_enospc_in_a_file_writer(tmp_path: Path, monkeypatch, write: str) -> None:
    path = tmp_path / ("out.json" if write == "write_json" else "out.npz")
    path.write_bytes(b"previous")
    monkeypatch.setattr(Path, "write_text", _enospc)
    monkeypatch.setattr(np, "savez_compressed", _enospc)
    with pytest.raises(DiskFullError, match=r"^disk full \(no space left on device\)") as err:
        if write == "write_json":
            write_json(path, {"a": 1})
        else:
            save_npz(path, a=np.zeros(3))
    assert f"while writing {path};" in str(err.value) and f"previous {path} was kept" in str(
        err.value
    )
    assert path.read_bytes() == b"previous" and _leftovers(tmp_path) == []


def test_injected_enospc_in_a_dir_names_the_file_where_it_would_land(tmp_path: Path) -> None:
    out = tmp_path / "synthetic"
    out.mkdir()
    (out / "old.txt").write_text("previous")
    with pytest.raises(DiskFullError) as err, atomic_dir(out) as tmp:
        (tmp / "a.png").write_bytes(b"png")
        (tmp / "b.png").write_bytes(b"partial")
        _enospc()  # as Pillow fails: on close, with no file name: the newest file is named
    assert f"while writing {out / 'b.png'};" in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["old.txt"] and _leftovers(tmp_path) == []

    # A nested writer's file (inside the temporary dir) is named under the real output dir; h5py
    # (Keras's weights) keeps only the text of the errno.
    with pytest.raises(DiskFullError) as err, atomic_dir(out) as tmp:
        with atomic_path(tmp / "generator.keras"):
            raise OSError(
                None, "Can't write data (errno = 28, error message = 'No space left on device')"
            )
    assert f"while writing {out / 'generator.keras'}; the previous {out} was kept" in str(err.value)
    assert (out / "old.txt").read_text() == "previous" and _leftovers(tmp_path) == []


def test_other_errors_pass_through_and_a_new_output_says_nothing_was_written(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="not a disk"), atomic_path(tmp_path / "x.json"):
        raise ValueError("not a disk problem")
    with pytest.raises(DiskFullError, match="nothing was written to"), atomic_dir(tmp_path / "new"):
        _enospc()
    assert list(tmp_path.iterdir()) == []


def test_a_mount_point_output_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "mnt"
    out.mkdir()
    real_replace = os.replace

    def busy(src, dst):
        if Path(src) == out:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(src))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", busy)
    with pytest.raises(ConfigError, match="mount point"), atomic_dir(out) as tmp:
        (tmp / "f").write_text("new")
    assert out.is_dir() and list(out.iterdir()) == [] and _leftovers(tmp_path) == []
