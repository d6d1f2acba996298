"""A disk that fills up mid-stage, for real: the output dir on a small tmpfs in a private mount
namespace (unshare), already holding the previous run's outputs. The stage must stop with exit 2
and a message saying the disk is full and naming the file, leave the previous outputs byte for
byte and leave no temporary file behind. Skipped where unshare/mount is not permitted."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

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
    assert suite.diff(before, suite.snapshot(ws)) == []
