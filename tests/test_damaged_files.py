"""Damaged files (issue 13, "Never lose a run"): a truncated or overwritten prepared `.npz`,
`data.path` `.npz`, checkpoint, `generator.keras`, evaluator or reference-cache entry gives one
clear message naming the file, never a traceback; a damaged newest checkpoint falls back to the
one before it, a damaged cache entry is rebuilt; nothing is ever unpickled and every model is
loaded with Keras's safe_mode.

Real files and real processes throughout: one tiny `ganpipe run` (8x8 digits, tracking off) per
module, then each test damages a copy of one of its outputs and runs the real CLI on it.
"""

from __future__ import annotations

import ast
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ganpipe.data.prepared import load_prepared
from ganpipe.errors import DataError
from ganpipe.io import read_npz
from tests.helpers import REPO, run, tiny_project

DETERMINISTIC = {"TF_DETERMINISTIC_OPS": "1"}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A finished tiny pipeline run (about 15 s): every file the tests below damage, on a copy."""
    root = tiny_project(tmp_path_factory.mktemp("pristine"))
    result = run(["ganpipe", "run", "--quiet"], cwd=root, **DETERMINISTIC)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture
def work(project, tmp_path) -> Path:
    """A copy of the finished run, for one test to damage."""
    return Path(shutil.copytree(project, tmp_path / "work", symlinks=True))


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["ganpipe", *args, "--quiet"], cwd=root, **DETERMINISTIC)


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def overwrite(path: Path, offset: int, data: bytes = b"\xff" * 16) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def damaged_versions(path: Path) -> list[tuple[str, bytes]]:
    """(what was done, the bytes) for truncations at several offsets (the zip's directory, a
    member's header, the middle of compressed data, the last byte) and overwritten middles."""
    data = path.read_bytes()
    n = len(data)
    cuts = sorted({0, 3, 30, 100, n // 4, n // 2, n - 23, n - 1})
    return [(f"truncated at {c}", data[:c]) for c in cuts] + [
        (f"overwritten at {o}", data[:o] + b"\xff" * 16 + data[o + 16 :])
        for o in (64, n // 3, n // 2)
    ]


def assert_clear_error(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    """Exit status 2, no traceback, and each phrase (the file's path, what to run) in stderr."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for phrase in phrases:
        assert phrase in result.stderr, (phrase, result.stderr[-3000:])


# ---- prepared data and data.path -------------------------------------------------------------


def test_damaged_prepared_split_is_named_by_every_reader(work):
    split = work / "data/prepared/train.npz"
    pristine = split.read_bytes()
    for what, data in damaged_versions(split):
        split.write_bytes(data)
        with pytest.raises(DataError, match="data/prepared/train.npz is damaged") as e:
            load_prepared(work / "data/prepared")
        assert "rerun `ganpipe prepare`" in str(e.value), what
    split.write_bytes(pristine)
    load_prepared(work / "data/prepared")

    truncate(split, len(pristine) // 2)
    for stage in ("train", "evaluate"):
        assert_clear_error(
            cli(work, stage),
            f"ganpipe {stage}: error: data/prepared/train.npz is damaged (not a readable .npz",
            "rerun `ganpipe prepare` to write it again",
        )


def test_damaged_prepared_summary_is_named(work):
    (work / "data/prepared/summary.json").write_text('{"class_names": ["0", "1"')
    assert_clear_error(cli(work, "generate"), "data/prepared/summary.json", "ganpipe prepare")


def test_prepared_split_with_pickled_objects_is_refused(work):
    split = work / "data/prepared/test.npz"
    np.savez(split, images=np.array([{"a": 1}], dtype=object), labels=np.zeros(1, np.int64))
    with pytest.raises(DataError, match=r"test\.npz: array 'images' holds pickled Python objects"):
        load_prepared(work / "data/prepared")


def keras_layout_npz(path: Path) -> Path:
    """A small .npz in the layout `data.source=mnist` reads from `data.path`."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 8, 8), dtype=np.uint8)
    labels = np.tile(np.arange(10), 6)
    np.savez_compressed(path, x_train=images, y_train=labels, x_test=images, y_test=labels)
    return path


def test_truncated_data_path_npz_is_named_not_a_traceback(tmp_path):
    root = tiny_project(tmp_path / "p")
    source = keras_layout_npz(tmp_path / "mnist.npz")
    truncate(source, source.stat().st_size // 2)
    result = cli(root, "prepare", "--set", "data.source=mnist", "--set", f"data.path={source}")
    assert_clear_error(result, f"{source} is damaged (not a readable .npz file")
    assert "BadZipFile" in result.stderr  # the cause, inside the message, not as a traceback


def test_data_path_npz_damaged_pickled_or_a_lone_array(tmp_path):
    from ganpipe.config import DataParams
    from ganpipe.data.sources import load_source

    def load(path: Path) -> None:
        load_source(DataParams(source="mnist", path=str(path)))

    source = keras_layout_npz(tmp_path / "mnist.npz")
    load(source)
    for _, data in damaged_versions(source):
        bad = tmp_path / "bad.npz"
        bad.write_bytes(data)
        with pytest.raises(DataError, match=f"{bad} is damaged"):
            load(bad)

    pickled = tmp_path / "pickled.npz"
    objects = np.array([np.zeros((8, 8))] * 10 + [None], dtype=object)
    np.savez(pickled, x_train=objects, y_train=np.zeros(11), x_test=objects, y_test=np.zeros(11))
    with pytest.raises(DataError, match="x_train' holds pickled Python objects"):
        load(pickled)

    lone = tmp_path / "lone.npz"
    with open(lone, "wb") as f:
        np.save(f, np.zeros((2, 8, 8)))
    with pytest.raises(DataError, match="a single .npy array, not a .npz archive"):
        load(lone)


# ---- checkpoints ---------------------------------------------------------------------------------


def test_damaged_newest_checkpoint_falls_back_at_any_offset(tmp_path, caplog):
    import keras

    from ganpipe.gan.training.checkpoint import HISTORY_COLUMNS, Checkpoints

    ckpt = Checkpoints(tmp_path / "ck")
    rng = np.random.default_rng(0)
    shapes = [(40, 30), (30,), (3, 3, 8, 16)]
    groups = {"g": [keras.Variable(rng.normal(size=s).astype("float32")) for s in shapes]}
    ckpt.save(4, groups, np.zeros((4, len(HISTORY_COLUMNS))))
    saved = [v.numpy() for v in groups["g"]]
    for v in groups["g"]:
        v.assign(v.numpy() + 1.0)
    newest = ckpt.save(8, groups, np.ones((8, len(HISTORY_COLUMNS))))
    pristine = newest.read_bytes()

    caplog.set_level(logging.WARNING, logger="ganpipe.gan.training.checkpoint")
    for what, data in damaged_versions(newest):
        newest.write_bytes(data)
        caplog.clear()
        restored = ckpt.restore(groups)
        assert restored is not None and restored[0] == 4, what
        for v, value in zip(groups["g"], saved, strict=True):
            np.testing.assert_array_equal(v.numpy(), value)
        assert f"{newest} is damaged" in caplog.text, what
        assert "falling back to the previous one, ckpt_0000004.npz" in caplog.text, what

    newest.write_bytes(pristine)
    assert ckpt.restore(groups)[0] == 8
    for path in ckpt.paths():
        truncate(path, 100)
    caplog.clear()
    assert ckpt.restore(groups) is None
    assert "training starts afresh" in caplog.text
    assert caplog.text.count("unusable checkpoint") == 2


def test_train_resumes_from_the_previous_checkpoint_to_the_same_result(work, project):
    import keras

    import ganpipe.gan.models  # noqa: F401  (registers the layers the saved models use)

    ckpts = sorted((work / "checkpoints").glob("*/ckpt_*.npz"))
    assert len(ckpts) == 2, ckpts
    newest, previous = ckpts[-1], ckpts[-2]
    truncate(newest, newest.stat().st_size // 3)
    (work / "models").rename(work / "models.before")  # what the rerun writes, written anew

    result = cli(work, "train")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    rel = newest.relative_to(work)
    assert f"unusable checkpoint: {rel} is damaged" in result.stderr
    assert f"falling back to the previous one, {previous.name}" in result.stderr
    assert f"resuming from step {int(previous.stem.split('_')[1])}" in result.stdout

    # the run the damage interrupted ends exactly where the undamaged one did
    for name in ("generator.keras", "discriminator.keras"):
        a = keras.models.load_model(work / "models" / name, safe_mode=True).get_weights()
        b = keras.models.load_model(project / "models" / name, safe_mode=True).get_weights()
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    with np.load(newest, allow_pickle=False) as f:  # rewritten whole
        assert int(f["step"]) == int(newest.stem.split("_")[1])


# ---- generator.keras ----------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_damaged_generator_is_named_with_the_stage_that_writes_it(work, damage):
    path = work / "models/generator.keras"
    if damage == "truncated":
        truncate(path, path.stat().st_size // 2)
    else:
        overwrite(path, path.stat().st_size // 2)
    assert_clear_error(
        cli(work, "generate"),
        "ganpipe generate: error: models/generator.keras is damaged (not a readable Keras file",
        "rerun `ganpipe train` to write it again",
    )


def test_generator_with_code_is_refused_by_safe_mode(work):
    import keras

    z, label = keras.Input((8,), name="z"), keras.Input((1,), name="label")
    x = keras.layers.Concatenate()([z, label])
    x = keras.layers.Lambda(lambda t: t * 2.0)(keras.layers.Dense(64)(x))
    model = keras.Model([z, label], keras.layers.Reshape((8, 8, 1))(x))
    model.save(work / "models/generator.keras")
    assert_clear_error(
        cli(work, "generate"),
        "models/generator.keras: cannot load the generator",
        "safe_mode",
        "rerun `ganpipe train`",
    )


# ---- the evaluator ------------------------------------------------------------------------------


def test_damaged_evaluator_stops_readers_and_the_classifier_stage_rebuilds_it(work):
    model = work / "evaluator/classifier.keras"
    truncate(model, model.stat().st_size // 2)
    for stage, extra in (("evaluate", ()), ("augment", ("--set", "augment.reject_off_label=true"))):
        assert_clear_error(
            cli(work, stage, *extra),
            f"ganpipe {stage}: error: evaluator/classifier.keras is damaged (not a readable Keras",
            "run `ganpipe classifier` to rebuild it",
        )

    result = cli(work, "classifier")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "evaluator/classifier.keras is damaged" in result.stderr
    assert "training the classifier again" in result.stderr
    assert cli(work, "evaluate").returncode == 0


def test_damaged_evaluator_meta_is_named(work):
    (work / "evaluator/meta.json").write_text('{"key": ')
    assert_clear_error(
        cli(work, "evaluate"),
        "evaluator/meta.json is damaged (not readable JSON",
        "run `ganpipe classifier`",
    )


# ---- the reference-statistics cache -------------------------------------------------------------


def test_damaged_reference_cache_entries_are_rebuilt(work, project):
    entries = sorted((work / ".ganpipe_cache/reference").glob("*.npz"))
    assert entries
    truncate(entries[0], entries[0].stat().st_size // 2)
    for entry in entries[1:]:
        overwrite(entry, entry.stat().st_size // 2)
    result = cli(work, "evaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    for entry in entries:
        assert f"{entry.relative_to(work)} is damaged" in result.stderr
    assert result.stderr.count("rebuilding it") == len(entries)
    for entry in entries:  # rewritten whole (atomically, beside no temp file)
        assert read_npz(entry, ("key", "features", "mu", "sigma"))
    assert not list((work / ".ganpipe_cache/reference").glob(".*"))
    again = json.loads((work / "metrics/eval.json").read_text())
    before = json.loads((project / "metrics/eval.json").read_text())
    assert again["classifier_fd"] == pytest.approx(before["classifier_fd"], rel=1e-9)

    result = cli(work, "evaluate")  # now read from the rebuilt cache, without a warning
    assert result.returncode == 0 and "is damaged" not in result.stderr


# ---- nothing unpickled, no model loaded without safe_mode ---------------------------------------


def _unsafe_loads(path: Path) -> list[tuple[str, str, int]]:
    """(file, call, line) of each np.load without allow_pickle=False and each load_model without
    safe_mode=True (directly or in mlflow's load_model_kwargs) in the file at `path`."""

    def keyword(call: ast.Call, name: str) -> object:
        for kw in call.keywords:
            if kw.arg == name and isinstance(kw.value, ast.Constant):
                return kw.value.value
            if kw.arg == "load_model_kwargs" and isinstance(kw.value, ast.Dict):
                for k, v in zip(kw.value.keys, kw.value.values, strict=True):
                    if isinstance(k, ast.Constant) and k.value == name:
                        return v.value if isinstance(v, ast.Constant) else None
        return None

    found = []
    rel = str(path.relative_to(REPO))
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if node.func.attr == "load" and isinstance(owner, ast.Name) and owner.id in ("np", "numpy"):
            if keyword(node, "allow_pickle") is not False:
                found.append((rel, "np.load", node.lineno))
        elif node.func.attr == "load_model" and keyword(node, "safe_mode") is not True:
            found.append((rel, "load_model", node.lineno))
    return found


def test_every_load_refuses_pickles_and_code():
    files = sorted((REPO / "ganpipe").rglob("*.py")) + sorted((REPO / "benchmarks").rglob("*.py"))
    unsafe = [hit for path in files for hit in _unsafe_loads(path)]
    assert not unsafe, (
        f"np.load without allow_pickle=False / load_model without safe_mode: {unsafe}"
    )
