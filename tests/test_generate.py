"""generate: counts, formats, PNG tree, manifest, seeding, errors and atomicity.

Uses a tiny stand-in generator (built-in layers, inputs `z` and `label`) so it does not depend on
ganpipe.gan.models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ganpipe.data.synthetic as synthetic_mod
import ganpipe.stages.generate as gen_mod
from ganpipe.config import AugmentParams, GenerateParams, Params
from ganpipe.data.prepared import Prepared, Split, make_summary, save_prepared
from ganpipe.data.synthetic import class_counts, class_dir_names
from ganpipe.errors import DataError
from ganpipe.io import read_json
from ganpipe.paths import Paths
from ganpipe.tracker import Tracker

SHAPE = (8, 8, 1)
LATENT = 6
CLASS_NAMES = ["cat", "a/b c", ".."]  # the last two are unsafe as folder names
TRAIN_COUNTS = [6, 3, 1]


def make_generator(path: Path, num_classes: int, shape=SHAPE, latent_dim: int = LATENT) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    z = keras.Input((latent_dim,), name="z")
    label = keras.Input((), dtype="int32", name="label")
    e = keras.layers.Embedding(num_classes, 4)(label)
    x = keras.layers.Concatenate()([z, e])
    x = keras.layers.Dense(int(np.prod(shape)), activation="tanh")(x)
    x = keras.layers.Reshape(shape)(x)
    keras.Model([z, label], x).save(path)
    return path


def make_prepared(path: Path, class_names=CLASS_NAMES, counts=TRAIN_COUNTS, shape=SHAPE) -> Path:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(class_names)), counts).astype(np.int64)
    train = Split(rng.integers(0, 256, (len(labels), *shape), dtype=np.uint8), labels)
    test = Split(train.images[:3].copy(), labels[:3].copy())
    save_prepared(path, Prepared(train, test, make_summary(train, test, class_names, "test")))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("model")
    make_generator(d / "generator.keras", len(CLASS_NAMES))
    return d


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("prepared"))


def generate(
    params: GenerateParams,
    model_dir: Path,
    data_dir: Path,
    out: Path,
    tracker: Tracker | None = None,
) -> dict:
    """The stage's library function with these generate params and an augment mode that needs no
    samples (so a fixed per_class is not checked against it); with a tracker, the stage's `run`."""
    full = Params(generate=params, augment=AugmentParams(synthetic_ratio=0.0))
    if tracker is None:
        return gen_mod.generate(full, model_dir, data_dir, out)
    return gen_mod.run(full, Paths(prepared=data_dir, models=model_dir, synthetic=out), tracker)


def load_samples(out: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(out / "samples.npz") as f:
        return f["images"], f["labels"]


class RecordingTracker(Tracker):
    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}
        self.artifacts: list[tuple[Path, str | None]] = []

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.update(metrics)

    def log_artifact(self, path, artifact_path=None) -> None:
        self.artifacts.append((Path(path), artifact_path))


def test_per_class_outputs(model_dir, data_dir, tmp_path):
    params = GenerateParams(per_class=7, batch_size=4, seed=3)
    tracker = RecordingTracker()
    out = tmp_path / "synthetic"
    result = generate(params, model_dir, data_dir, out, tracker=tracker)

    images, labels = load_samples(out)
    assert images.dtype == np.uint8 and images.shape == (21, *SHAPE)
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [7, 7, 7]
    assert len(np.unique(images.reshape(21, -1), axis=0)) > 1

    summary = read_json(out / "summary.json")
    assert summary["total"] == 21 and summary["counts"] == [7, 7, 7]
    assert summary["counts_by_class"] == {"cat": 7, "a/b c": 7, "..": 7}
    assert summary["shape"] == list(SHAPE) and summary["seed"] == 3
    assert summary["latent_dim"] == LATENT
    assert len(summary["generator_version"]) == 12
    assert result["generator_version"] == summary["generator_version"]
    assert Path(result["paths"]["samples"]) == (out / "samples.npz").resolve()

    # PNG tree: safe, unique folder names; one file per sample; pixels round-trip.
    pngs = sorted((out / "images").rglob("*.png"))
    assert len(pngs) == 21
    dirs = summary["class_dirs"]
    assert set(dirs) == set(CLASS_NAMES)
    assert all("/" not in d and d not in (".", "..") for d in dirs.values())
    assert len(set(dirs.values())) == 3

    manifest = pd.read_csv(out / "manifest.csv", dtype={"generator_version": str})
    assert list(manifest.columns) == [
        "file",
        "index",
        "label",
        "class_name",
        "seed",
        "generator_version",
    ]
    assert len(manifest) == 21
    assert manifest["index"].tolist() == list(range(21))
    assert manifest["label"].tolist() == labels.tolist()
    assert manifest["class_name"].tolist() == [CLASS_NAMES[k] for k in labels]
    assert (manifest["seed"] == 3).all()
    assert (manifest["generator_version"] == summary["generator_version"]).all()
    for row in manifest.itertuples():
        assert row.file == f"images/{dirs[row.class_name]}/{row.index:06d}.png"
        assert (out / row.file).exists()
    row = manifest.iloc[10]
    with Image.open(out / row["file"]) as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), images[row["index"], ..., 0])

    with Image.open(out / "grid.png") as im:
        assert im.size[0] > im.size[1]  # 10 columns, 3 rows

    assert tracker.metrics == {"generated_samples": 21}
    assert tracker.artifacts == [(out / "grid.png", "generate")]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_proportional_counts_exact(model_dir, data_dir, tmp_path):
    params = GenerateParams(per_class=5, proportional=True, write_png=False, seed=0)
    out = tmp_path / "synthetic"
    summary = generate(params, model_dir, data_dir, out)
    _, labels = load_samples(out)
    # 15 split 6:3:1 -> 9, 4.5, 1.5 -> 9, 5, 1 (tie on .5 goes to the lower class)
    assert np.bincount(labels, minlength=3).tolist() == [9, 5, 1] == summary["counts"]
    assert summary["total"] == 15
    assert not (out / "images").exists()
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert len(manifest) == 15 and (manifest["file"] == "").all()


@pytest.mark.parametrize(
    ("per_class", "counts"),
    [(1, [1, 0, 0, 0]), (10, [1, 1, 1, 97]), (3, [5, 5, 5, 0]), (7, [2, 3, 5, 1])],
)
def test_class_counts_largest_remainder(per_class, counts):
    params = GenerateParams(per_class=per_class, proportional=True)
    got = class_counts(params, counts, [str(k) for k in range(len(counts))])
    assert got.sum() == per_class * len(counts)
    exact = np.asarray(counts) / sum(counts) * per_class * len(counts)
    assert np.all(np.abs(got - exact) < 1)


def test_class_dir_names_safe_unique():
    names = class_dir_names(["a/b", "a b", "..", "", "A_b", "T-shirt/top", "ok"])
    assert len({n.lower() for n in names}) == len(names)
    assert all(n and n not in (".", "..") and "/" not in n and " " not in n for n in names)
    assert names[-1] == "ok" and names[5] == "T-shirt_top"


def test_seeded(model_dir, data_dir, tmp_path):
    p1 = GenerateParams(per_class=5, batch_size=3, seed=11, write_png=False)
    generate(p1, model_dir, data_dir, tmp_path / "a")
    generate(p1, model_dir, data_dir, tmp_path / "b")
    generate(p1.model_copy(update={"seed": 12}), model_dir, data_dir, tmp_path / "c")
    a, b, c = (tmp_path / n / "samples.npz" for n in "abc")
    assert a.read_bytes() == b.read_bytes()
    ia, la = load_samples(tmp_path / "a")
    ic, lc = load_samples(tmp_path / "c")
    np.testing.assert_array_equal(la, lc)
    assert not np.array_equal(ia, ic)


def test_missing_generator(data_dir, tmp_path):
    with pytest.raises(DataError, match=r"generator\.keras: not found \(run `ganpipe train`"):
        generate(GenerateParams(), tmp_path / "nomodel", data_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_data_summary(model_dir, tmp_path):
    with pytest.raises(DataError, match="summary.json: not found"):
        generate(GenerateParams(), model_dir, tmp_path / "nodata", tmp_path / "out")


def test_class_count_mismatch(model_dir, tmp_path):
    other = make_prepared(tmp_path / "other", class_names=["x", "y"], counts=[2, 2])
    with pytest.raises(DataError, match="trained for 3 classes.*has 2.*another dataset"):
        generate(GenerateParams(per_class=2), model_dir, other, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_shape_mismatch(model_dir, tmp_path):
    other = make_prepared(tmp_path / "other", shape=(4, 4, 1))
    with pytest.raises(DataError, match=r"makes \(8, 8, 1\) images.*\(4, 4, 1\)"):
        generate(GenerateParams(per_class=2), model_dir, other, tmp_path / "out")


def test_rgb_png(tmp_path):
    shape = (4, 4, 3)
    make_generator(tmp_path / "generator.keras", 2, shape=shape)
    data = make_prepared(tmp_path / "data", class_names=["r", "g"], counts=[2, 2], shape=shape)
    out = tmp_path / "out"
    generate(GenerateParams(per_class=2), tmp_path, data, out)
    images, _ = load_samples(out)
    with Image.open(out / "images" / "g" / "000003.png") as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), images[3])


def test_failure_keeps_previous_output(model_dir, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "synthetic"
    generate(GenerateParams(per_class=3, seed=1), model_dir, data_dir, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    calls = []

    def broken(path, image):
        calls.append(path)
        if len(calls) > 4:
            raise OSError("disk full")
        Image.fromarray(image[..., 0]).save(path)

    monkeypatch.setattr(synthetic_mod, "_write_png", broken)
    with pytest.raises(OSError, match="disk full"):
        generate(GenerateParams(per_class=3, seed=2), model_dir, data_dir, out)

    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]  # no temp dir left behind


def test_auto_counts_follow_augment_mode():
    """per_class auto: what augment's mode needs x headroom, at least min_per_class; a fixed
    number that is too few for augment stops before anything is written, naming the class."""
    from ganpipe.config import AugmentParams

    names = ["a", "b", "c"]
    real = [1000, 20, 300]
    auto = GenerateParams(per_class="auto", headroom=1.5, min_per_class=100)
    balance = AugmentParams(mode="balance")
    assert class_counts(auto, real, names, balance).tolist() == [100, 1470, 1050]
    ratio = AugmentParams(synthetic_ratio=0.5)
    assert class_counts(auto, real, names, ratio).tolist() == [750, 100, 225]
    # headroom auto: 1.5 here (1000 / 20 is imbalanced: 2), where the off-label filter is on too
    tail = GenerateParams(per_class="auto", headroom="auto", min_per_class=100)
    assert class_counts(tail, real, names, balance).tolist() == [100, 1960, 1400]
    assert class_counts(tail, [300, 200, 100], names, balance).tolist() == [100, 150, 300]
    with pytest.raises(DataError, match="per_class auto needs the augment params"):
        class_counts(auto, real, names)
    fixed = GenerateParams(per_class=500)
    assert class_counts(fixed, real, names, ratio).tolist() == [500, 500, 500]
    with pytest.raises(
        DataError, match=r"class 'b': needs 980, would get 500; class 'c': needs 700"
    ):
        class_counts(fixed, real, names, balance)
