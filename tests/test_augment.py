"""augment: per-class ratio, flags, ratio 0, shortages, shape/class checks, test split copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ganpipe.config import AugmentParams
from ganpipe.data.prepared import Prepared, Split, load_prepared, make_summary, save_prepared
from ganpipe.data.synthetic import synthetic_counts, wanted_counts
from ganpipe.errors import ConfigError, DataError
from ganpipe.evaluation.domain_classifier import Evaluator, accept_mask
from ganpipe.evaluation.filters import active_filters
from ganpipe.io import read_json, save_npz, write_json
from ganpipe.stages.augment import augment

CLASS_NAMES = ["zero", "one", "two"]
REAL_COUNTS = [8, 4, 3]
SHAPE = (4, 4, 1)


def P(**kw) -> AugmentParams:
    """Augment params with the memorization guard off (its own tests switch it on): these 4x4
    stand-ins have no evaluator features to measure copies in."""
    return AugmentParams(**({"memorization_guard": False} | kw))


@pytest.fixture
def data_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), REAL_COUNTS).astype(np.int64)
    # Real images are < 128, synthetic ones >= 128, so each row's origin can be told.
    train = Split(rng.integers(0, 128, (len(labels), *SHAPE), dtype=np.uint8), labels)
    test = Split(rng.integers(0, 128, (5, *SHAPE), dtype=np.uint8), np.arange(5) % 3)
    d = tmp_path / "prepared"
    save_prepared(d, Prepared(train, test, make_summary(train, test, CLASS_NAMES, "test")))
    return d


def make_synthetic(path: Path, per_class: int, shape=SHAPE, class_names=CLASS_NAMES) -> Path:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(len(class_names)), per_class).astype(np.int64)
    images = rng.integers(128, 256, (len(labels), *shape), dtype=np.uint8)
    images[:, 0, 0, 0] = 128 + np.arange(len(labels)) % 128  # distinct rows
    save_npz(path / "samples.npz", images=images, labels=labels)
    write_json(
        path / "summary.json",
        {"class_names": class_names, "generator_version": "abc123def456", "seed": 1},
    )
    return path


def load_train(out: Path):
    with np.load(out / "train.npz") as f:
        return f["images"], f["labels"], f["is_synthetic"]


def test_ratio_counts_and_flags(data_dir, tmp_path):
    syn = make_synthetic(tmp_path / "synthetic", per_class=10)
    out = tmp_path / "augmented"
    summary = augment(P(synthetic_ratio=0.5, seed=3), data_dir, syn, out)

    images, labels, is_syn = load_train(out)
    expected_syn = [4, 2, 2]  # round(0.5 * [8, 4, 3]), halves up
    assert images.dtype == np.uint8 and images.shape == (15 + 8, *SHAPE)
    assert labels.dtype == np.int64 and is_syn.dtype == bool
    assert np.bincount(labels[~is_syn], minlength=3).tolist() == REAL_COUNTS
    assert np.bincount(labels[is_syn], minlength=3).tolist() == expected_syn
    # the flag matches where each image came from, and synthetic rows are distinct picks
    np.testing.assert_array_equal(images.reshape(len(images), -1).max(axis=1) >= 128, is_syn)
    assert (images[is_syn, 0, 0, 0] >= 128).all()
    assert len(np.unique(images[is_syn].reshape(is_syn.sum(), -1), axis=0)) == is_syn.sum()
    assert not (is_syn[: is_syn.sum()]).all()  # shuffled, not real-then-synthetic

    real = load_prepared(data_dir)
    for k in range(3):  # every real image is there, with its label
        got = images[~is_syn & (labels == k)]
        want = real.train.images[real.train.labels == k]
        assert sorted(map(bytes, got)) == sorted(map(bytes, want))

    assert summary["real_counts"] == REAL_COUNTS
    assert summary["synthetic_counts"] == expected_syn
    assert summary["counts_by_class"]["zero"] == {"real": 8, "synthetic": 4}
    assert summary["synthetic_ratio"] == 0.5 and summary["num_synthetic"] == 8
    assert summary["sources"]["synthetic"]["generator_version"] == "abc123def456"
    assert summary["sources"]["real"]["content_hash"] == real.content_hash
    assert read_json(out / "summary.json") == summary
    # the output is itself prepared data
    aug = load_prepared(out)
    assert len(aug.train) == 23 and aug.summary["train_counts"] == [12, 6, 5]
    assert (out / "test.npz").read_bytes() == (data_dir / "test.npz").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_seeded_selection(data_dir, tmp_path):
    syn = make_synthetic(tmp_path / "synthetic", per_class=10)
    augment(P(synthetic_ratio=1.0, seed=0), data_dir, syn, tmp_path / "a")
    augment(P(synthetic_ratio=1.0, seed=0), data_dir, syn, tmp_path / "b")
    augment(P(synthetic_ratio=1.0, seed=1), data_dir, syn, tmp_path / "c")
    a, b, c = (load_train(tmp_path / n) for n in "abc")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_ratio_zero_is_real_copy(data_dir, tmp_path):
    out = tmp_path / "augmented"
    # no synthetic samples are needed at ratio 0
    summary = augment(P(synthetic_ratio=0), data_dir, tmp_path / "missing", out)
    images, labels, is_syn = load_train(out)
    real = load_prepared(data_dir)
    np.testing.assert_array_equal(images, real.train.images)
    np.testing.assert_array_equal(labels, real.train.labels)
    assert not is_syn.any()
    assert summary["num_synthetic"] == 0 and summary["synthetic_counts"] == [0, 0, 0]
    assert summary["content_hash"] == real.content_hash
    assert (out / "test.npz").read_bytes() == (data_dir / "test.npz").read_bytes()


def test_not_enough_synthetic(data_dir, tmp_path):
    syn = make_synthetic(tmp_path / "synthetic", per_class=5)
    out = tmp_path / "augmented"
    with pytest.raises(
        DataError, match=r"'zero': needs 8, has 5\): generate more \(generate\.per_class: auto"
    ):
        augment(P(synthetic_ratio=1.0), data_dir, syn, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_synthetic(data_dir, tmp_path):
    with pytest.raises(DataError, match="samples.npz: not found.*ganpipe generate"):
        augment(P(), data_dir, tmp_path / "nothing", tmp_path / "out")


def test_shape_mismatch(data_dir, tmp_path):
    syn = make_synthetic(tmp_path / "synthetic", per_class=10, shape=(8, 8, 1))
    with pytest.raises(DataError, match=r"images are 8x8x1.*4x4x1"):
        augment(P(), data_dir, syn, tmp_path / "out")


def test_class_mismatch(data_dir, tmp_path):
    syn = make_synthetic(tmp_path / "synthetic", per_class=10, class_names=["a", "b", "c"])
    with pytest.raises(DataError, match="differ from the real classes"):
        augment(P(), data_dir, syn, tmp_path / "out")


def test_failure_keeps_previous_output(data_dir, tmp_path, monkeypatch):
    syn = make_synthetic(tmp_path / "synthetic", per_class=10)
    out = tmp_path / "augmented"
    augment(P(synthetic_ratio=0.5), data_dir, syn, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    import ganpipe.stages.augment as aug_mod

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(aug_mod.shutil, "copyfile", broken)
    with pytest.raises(OSError, match="disk full"):
        augment(P(synthetic_ratio=1.0), data_dir, syn, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_synthetic_counts_rounding():
    assert synthetic_counts(0.5, np.array([8, 4, 3, 1, 0])).tolist() == [4, 2, 2, 1, 0]
    assert synthetic_counts(2.0, np.array([3])).tolist() == [6]
    assert synthetic_counts(0.0, np.array([3])).tolist() == [0]


def label_reader() -> Evaluator:
    """A stand-in evaluator with fixed weights: it predicts class c when pixel (0, 1 + c)
    is bright (255) and the others of that row are dark (128)."""
    import keras

    inputs = keras.Input(SHAPE)
    flat = keras.layers.Flatten()(inputs)
    features = keras.layers.Dense(3, use_bias=False, name="features")(flat)
    logits = keras.layers.Dense(3, use_bias=False, name="logits")(features)
    model = keras.Model(inputs, logits)
    pick = np.zeros((int(np.prod(SHAPE)), 3), np.float32)
    pick[[1, 2, 3], [0, 1, 2]] = 10.0  # pixels 1..3 of the first row, scaled: sharp softmax
    model.get_layer("features").set_weights([pick])
    model.get_layer("logits").set_weights([np.eye(3, dtype=np.float32)])
    return Evaluator(model, {})


def make_drawn(path: Path, per_class: int, off_label: dict[int, int]) -> np.ndarray:
    """Synthetic samples whose drawn class (what label_reader sees) is their label, except the
    first off_label[c] of class c, drawn as class (c + 1) % 3. Returns the off-label mask."""
    make_synthetic(path, per_class)
    with np.load(path / "samples.npz") as f:
        images, labels = f["images"], f["labels"]
    drawn = labels.copy()
    for c, n in off_label.items():
        drawn[np.flatnonzero(labels == c)[:n]] = (c + 1) % 3
    images[:, 0, 1:4, 0] = 128
    images[np.arange(len(labels)), 0, 1 + drawn, 0] = 255
    save_npz(path / "samples.npz", images=images, labels=labels)
    return drawn != labels


def test_reject_off_label(data_dir, tmp_path):
    off = make_drawn(tmp_path / "synthetic", per_class=10, off_label={0: 3, 2: 1})
    with np.load(tmp_path / "synthetic" / "samples.npz") as f:
        codes_off = set(f["images"][off, 0, 0, 0].tolist())  # the distinct-row codes
    params = P(synthetic_ratio=0.5, seed=3, reject_off_label=True)
    summary = augment(params, data_dir, tmp_path / "synthetic", tmp_path / "out", label_reader())

    images, labels, is_syn = load_train(tmp_path / "out")
    assert np.bincount(labels[is_syn], minlength=3).tolist() == [4, 2, 2]
    assert not codes_off & set(images[is_syn, 0, 0, 0].tolist())  # no off-label sample kept
    filters = summary["filters"]
    off_label = filters["filters"]["off_label"]
    assert off_label["dropped_by_class"] == {"zero": 3, "one": 0, "two": 1}
    assert off_label["kept_by_class"] == {"zero": 7, "one": 10, "two": 9}
    assert filters["keep_rate"] == pytest.approx(26 / 30) and filters["kept"] == 26
    assert read_json(tmp_path / "out" / "summary.json")["filters"] == filters

    # class "zero" needs 8 at ratio 1, and only 7 pass: the message says the filters are why
    with pytest.raises(
        DataError, match=r"'zero': needs 8, has 7 \(3 more dropped by the filters\)"
    ):
        augment(
            P(synthetic_ratio=1.0, reject_off_label=True),
            data_dir, tmp_path / "synthetic", tmp_path / "out2", label_reader(),
        )  # fmt: skip
    with pytest.raises(ValueError, match="needs the evaluator"):
        augment(params, data_dir, tmp_path / "synthetic", tmp_path / "out3")
    # off: the same samples are all eligible, and the summary says no filter ran
    summary = augment(P(synthetic_ratio=1.0), data_dir, tmp_path / "synthetic", tmp_path / "out4")
    assert summary["filters"] is None and summary["num_synthetic"] == 15


def test_reject_off_label_auto_is_on_only_for_imbalanced_data(data_dir, tmp_path):
    """augment.reject_off_label auto (the default): off for the fixture's counts (8, 4, 3: 2.7x),
    on once class "two" is cut to 2 images (4x, the long-tail threshold), and the summary says
    which it was."""
    from ganpipe.evaluation.filters import resolve_auto

    make_drawn(tmp_path / "synthetic", per_class=10, off_label={0: 3, 2: 1})
    auto = P(synthetic_ratio=0.5, seed=3)
    assert auto.reject_off_label == "auto"
    summary = augment(auto, data_dir, tmp_path / "synthetic", tmp_path / "out1")
    assert summary["reject_off_label"] is False and summary["filters"] is None
    real = load_prepared(data_dir)
    keep = np.flatnonzero(real.train.labels != 2)
    keep = np.concatenate([keep, np.flatnonzero(real.train.labels == 2)[:2]])
    tail = Split(real.train.images[keep], real.train.labels[keep])
    tail_dir = tmp_path / "tail"
    save_prepared(
        tail_dir, Prepared(tail, real.test, make_summary(tail, real.test, CLASS_NAMES, "t"))
    )
    with pytest.raises(ValueError, match="off_label filter needs the evaluator"):
        augment(auto, tail_dir, tmp_path / "synthetic", tmp_path / "out2")
    summary = augment(auto, tail_dir, tmp_path / "synthetic", tmp_path / "out2", label_reader())
    assert summary["reject_off_label"] is True
    dropped = summary["filters"]["filters"]["off_label"]["dropped_by_class"]
    assert dropped == {"zero": 3, "one": 0, "two": 1}
    params, why = resolve_auto(auto, np.array([8, 4, 2]))
    assert params.reject_off_label is True and "augment.reject_off_label: auto" in why
    assert resolve_auto(P(reject_off_label=False), np.array([8, 4, 2])) == (
        P(reject_off_label=False),
        "",
    )  # an explicit value is kept
    with pytest.raises(ValueError, match="resolve it"):
        active_filters(auto)


def test_accept_mask_confidence():
    probs = np.array([[0.9, 0.05, 0.05], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    labels = np.array([0, 0, 0, 2])
    assert accept_mask(probs, labels).tolist() == [True, True, False, True]
    assert accept_mask(probs, labels, min_confidence=0.5).tolist() == [True, True, False, False]
    assert accept_mask(probs, labels, min_confidence=0.6).tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="do not match"):
        accept_mask(probs, labels[:2])


# ---- modes ---------------------------------------------------------------------------------------


def test_wanted_counts_per_mode():
    names = ["a", "b", "c"]
    real = np.array([100, 20, 5])
    assert wanted_counts(P(synthetic_ratio=0.5), real, names).tolist() == [50, 10, 3]
    assert wanted_counts(P(mode="balance"), real, names).tolist() == [0, 80, 95]
    target = P(mode="balance", target_per_class=50)
    assert wanted_counts(target, real, names).tolist() == [0, 30, 45]  # never below 0
    counts = P(mode="counts", counts={"c": 7, "a": 1})
    assert wanted_counts(counts, real, names).tolist() == [1, 0, 7]
    with pytest.raises(ConfigError, match=r"augment.counts: unknown class 'd'.*'a', 'b', 'c'"):
        wanted_counts(P(mode="counts", counts={"d": 1}), real, names)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"mode": "counts"}, "augment.counts .* required when mode is 'counts'"),
        ({"counts": {"a": 1}}, "only read when augment.mode is 'counts'"),
        ({"target_per_class": 5}, "only read when augment.mode is 'balance'"),
    ],
)
def test_mode_params_checked(kw, message):
    with pytest.raises(ValueError, match=message):
        AugmentParams(**kw)


def test_balance_fills_small_classes(data_dir, tmp_path):
    syn = make_synthetic(tmp_path / "synthetic", per_class=10)
    summary = augment(P(mode="balance"), data_dir, syn, tmp_path / "out")
    _, labels, is_syn = load_train(tmp_path / "out")
    assert np.bincount(labels, minlength=3).tolist() == [8, 8, 8]  # real 8, 4, 3 topped up
    assert np.bincount(labels[is_syn], minlength=3).tolist() == [0, 4, 5]
    assert summary["mode"] == "balance" and summary["synthetic_counts"] == [0, 4, 5]
    with pytest.raises(DataError, match=r"class 'two': needs 17, has 10"):
        augment(P(mode="balance", target_per_class=20), data_dir, syn, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_counts_mode(data_dir, tmp_path):
    syn = make_synthetic(tmp_path / "synthetic", per_class=10)
    augment(P(mode="counts", counts={"two": 6}), data_dir, syn, tmp_path / "out")
    _, labels, is_syn = load_train(tmp_path / "out")
    assert np.bincount(labels[is_syn], minlength=3).tolist() == [0, 0, 6]


# ---- filters -------------------------------------------------------------------------------------


class PixelFeatures:
    """A stand-in evaluator whose features are the pixels (scaled to [0, 1]) and whose
    probabilities say every sample is its own label's: for the filters that measure distances."""

    def __init__(self, labels_of=None):
        self.labels_of = labels_of

    def features(self, images, batch_size=256):
        feats = images.reshape(len(images), -1).astype(np.float32) / 255.0
        probs = np.full((len(images), 3), 1 / 3, np.float32)
        return feats, probs


def test_memorization_guard_drops_planted_copies(data_dir, tmp_path):
    """Exact copies of training images planted among the samples are dropped by the guard,
    counted per class in the report, and never exported."""
    real = load_prepared(data_dir)
    syn = make_synthetic(tmp_path / "synthetic", per_class=10)
    with np.load(syn / "samples.npz") as f:
        images, labels = f["images"], f["labels"]
    planted = np.flatnonzero(labels == 0)[:3]
    sources = np.flatnonzero(real.train.labels == 0)[:3]
    images[planted] = real.train.images[sources]
    save_npz(syn / "samples.npz", images=images, labels=labels)

    params = AugmentParams(synthetic_ratio=0.5, memorization_guard=True)
    summary = augment(params, data_dir, syn, tmp_path / "out", PixelFeatures())
    guard = summary["filters"]["filters"]["memorization"]
    assert guard["dropped_by_class"]["zero"] >= 3
    out_images, _, is_syn = load_train(tmp_path / "out")
    exported = {bytes(x) for x in out_images[is_syn]}
    assert not exported & {bytes(x) for x in real.train.images[sources]}


def test_fidelity_filter_drops_outliers(data_dir, tmp_path):
    """Samples far from every real training image (outside the real k-NN balls) are dropped;
    samples equal to a real image's neighbourhood are kept."""
    real = load_prepared(data_dir)
    syn = make_synthetic(tmp_path / "synthetic", per_class=10)
    with np.load(syn / "samples.npz") as f:
        images, labels = f["images"], f["labels"]
    # class "one": samples one grey level away from real images of any class (inside the balls)
    near = np.flatnonzero(labels == 1)
    images[near] = real.train.images[np.arange(len(near)) % len(real.train)] + 1
    save_npz(syn / "samples.npz", images=images, labels=labels)

    params = P(mode="counts", counts={"one": 5}, fidelity_filter=True, fidelity_k=2)
    summary = augment(params, data_dir, syn, tmp_path / "out", PixelFeatures())
    fidelity = summary["filters"]["filters"]["fidelity"]
    assert fidelity["kept_by_class"]["one"] == 10  # all near ones kept
    assert fidelity["dropped_by_class"]["zero"] == 10 == fidelity["dropped_by_class"]["two"]
    with pytest.raises(DataError, match=r"class 'zero': needs 1, has 0 \(10 more dropped"):
        augment(P(mode="counts", counts={"zero": 1}, fidelity_filter=True), data_dir, syn,
                tmp_path / "out2", PixelFeatures())  # fmt: skip


# ---- the utility gate ----------------------------------------------------------------------------


def write_verdict(metrics_dir: Path, treated_shift: float) -> str:
    """A utility.json as the utility stage writes it (tests/helpers.py's hand-made study)."""
    from ganpipe.stages.utility import headline
    from tests.helpers import utility_study

    study = utility_study(treated_shift)
    write_json(
        metrics_dir / "utility.json",
        {
            "enabled": True,
            "verdict": study["verdict"],
            "verdict_metric": "balanced_accuracy",
            "headline": headline(study, "balanced_accuracy"),
        },
    )
    return study["verdict"]


def test_require_benefit_gates_the_export(data_dir, tmp_path):
    """augment.require_benefit: a 'hurts' verdict stops the stage before it writes anything,
    with the numbers; 'helps' exports; a missing verdict file is a clear error."""
    from ganpipe.config import Params
    from ganpipe.paths import Paths
    from ganpipe.stages.augment import run as run_augment
    from ganpipe.tracker import NULL_TRACKER

    make_synthetic(tmp_path / "synthetic", per_class=10)
    paths = Paths(prepared=data_dir, synthetic=tmp_path / "synthetic",
                  augmented=tmp_path / "augmented", metrics=tmp_path / "metrics")  # fmt: skip
    params = Params.model_validate(
        {
            "augment": {
                "synthetic_ratio": 0.5,
                "memorization_guard": False,
                "require_benefit": True,
            },
            "utility": {"enabled": True},
        }
    )
    with pytest.raises(DataError, match=r"utility.json: not found \(run `ganpipe utility`"):
        run_augment(params, paths, NULL_TRACKER)
    assert write_verdict(tmp_path / "metrics", -0.05) == "hurts"
    with pytest.raises(DataError, match=r"verdict is 'hurts'.*balanced_accuracy by -0\.04"):
        run_augment(params, paths, NULL_TRACKER)
    assert not paths.augmented.exists()
    assert write_verdict(tmp_path / "metrics", +0.05) == "helps"
    assert run_augment(params, paths, NULL_TRACKER)["num_synthetic"] == 8


# ---- the export's per-image targets and the loaders that apply them ----------------------------------


def test_teacher_soft_labels_weights_and_the_loaders(data_dir, tmp_path):
    import keras

    from ganpipe.data.loaders import TorchDataset, keras_dataset, load_augmented

    off = make_drawn(tmp_path / "synthetic", per_class=10, off_label={0: 3})
    with np.load(tmp_path / "synthetic" / "samples.npz") as f:
        codes_off = set(f["images"][off, 0, 0, 0].tolist())
    params = P(synthetic_ratio=1.0, teacher_mix=0.5, synthetic_weight=0.25)
    summary = augment(params, data_dir, tmp_path / "synthetic", tmp_path / "out", label_reader())
    data = load_augmented(tmp_path / "out")
    real, syn = ~data.is_synthetic, data.is_synthetic
    np.testing.assert_array_equal(data.soft_labels[real], np.eye(3)[data.labels[real]])
    assert set(data.weights[real]) == {1.0} and set(data.weights[syn]) == {0.25}
    np.testing.assert_allclose(data.soft_labels.sum(axis=1), 1.0, atol=1e-6)
    on_label = data.soft_labels[np.arange(len(data)), data.labels]
    drawn_off = syn & np.isin(data.images[:, 0, 0, 0], list(codes_off))
    assert drawn_off.sum() > 0
    # half the target stays on the label; the teacher (which reads the drawn class) moves the
    # rest: nearly all of it for a sample drawn as its label, almost none for one drawn as another
    assert on_label[drawn_off].max() < 0.6 and on_label[syn & ~drawn_off].min() > 0.85
    teacher = summary["targets"]["teacher"]
    assert teacher["agreement"] == pytest.approx(1 - drawn_off.sum() / syn.sum())
    assert summary["targets"]["synthetic_weight"] == 0.25

    # Keras: (x, soft labels, weights) is what fit/evaluate take as (x, y, sample_weight)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True))
    ds = keras_dataset(tmp_path / "out", batch_size=len(data), shuffle=False)
    x, y, w = next(iter(ds))
    np.testing.assert_allclose(x.numpy(), data.inputs())
    direct = model.evaluate(data.inputs(), data.soft_labels, sample_weight=data.weights, verbose=0)
    assert model.evaluate(ds, verbose=0) == pytest.approx(direct, rel=1e-5)  # float32 sums
    model.fit(keras_dataset(tmp_path / "out", batch_size=8), epochs=1, verbose=0)
    real_x = next(iter(keras_dataset(tmp_path / "out", batch_size=len(data), synthetic=False)))[0]
    assert len(real_x) == (~data.is_synthetic).sum() < len(data)

    # PyTorch: channels first in [0, 1], as DataLoader collates them
    torch_ds = TorchDataset(tmp_path / "out")
    image, target, weight = torch_ds[3]
    assert len(torch_ds) == len(data) and image.shape == (1, *SHAPE[:2])
    np.testing.assert_allclose(image[0], data.inputs(3)[..., 0])
    np.testing.assert_array_equal(target, data.soft_labels[3])
    assert weight == data.weights[3] and image.dtype == np.float32


def test_default_targets_are_hard_and_old_exports_still_load(data_dir, tmp_path):
    from ganpipe.data.loaders import load_augmented
    from ganpipe.evaluation.downstream_fit import teacher_targets

    make_synthetic(tmp_path / "synthetic", per_class=10)
    summary = augment(P(), data_dir, tmp_path / "synthetic", tmp_path / "out")
    data = load_augmented(tmp_path / "out" / "train.npz")
    np.testing.assert_array_equal(data.soft_labels, np.eye(3)[data.labels])
    assert set(data.weights) == {1.0} and summary["targets"]["teacher"] is None
    with pytest.raises(ValueError, match="teacher is the evaluator"):
        augment(P(teacher_mix=0.5), data_dir, tmp_path / "synthetic", tmp_path / "out2")
    # an export from before soft labels: one-hot targets, weight 1
    images, labels, is_syn = load_train(tmp_path / "out")
    save_npz(tmp_path / "old.npz", images=images, labels=labels, is_synthetic=is_syn)
    old = load_augmented(tmp_path / "old.npz", num_classes=3)
    np.testing.assert_array_equal(old.soft_labels, data.soft_labels)
    assert (old.synthetic_start, old.synthetic_stop) == (0.0, 1.0)
    save_npz(tmp_path / "bad.npz", images=images, labels=labels, weights=np.ones(2, np.float32))
    with pytest.raises(DataError, match="must match"):
        load_augmented(tmp_path / "bad.npz")
    save_npz(tmp_path / "late.npz", images=images, labels=labels, synthetic_start=np.float32(1.5))
    with pytest.raises(DataError, match=r"synthetic_start 1.5 must be in \[0, 1\)"):
        load_augmented(tmp_path / "late.npz")
    save_npz(tmp_path / "shut.npz", images=images, labels=labels, synthetic_start=np.float32(0.5),
             synthetic_stop=np.float32(0.5))  # fmt: skip
    with pytest.raises(DataError, match=r"synthetic_stop 0.5 must be in \(0.5, 1\]"):
        load_augmented(tmp_path / "shut.npz")
    with pytest.raises(ValueError, match="must be below augment.synthetic_stop"):
        P(synthetic_start=0.5, synthetic_stop=0.5)
    # the tempered teacher: T=1 is the teacher itself, a large T flattens it towards uniform
    probs = np.array([[0.7, 0.2, 0.1]])
    np.testing.assert_allclose(teacher_targets(probs, 1.0), probs, rtol=1e-6)
    assert np.ptp(teacher_targets(probs, 100.0)) < 0.02


# ---- augment.mode auto: the utility study's choice --------------------------------------------------


def write_choice(
    metrics_dir: Path,
    verdict: str,
    share: float,
    weight: float,
    mix: float | None = None,
    start: float | None = None,
    fill: float | None = None,
    stop: float | None = None,
) -> None:
    """A utility.json as the stage writes it, with the headline keys augment's auto reads (no
    chosen_teacher_mix with mix None, no chosen_synthetic_start with start None: a study from
    before soft targets or deferral)."""
    h = {"delta_balanced_accuracy": 0.02, "delta_balanced_accuracy_low": 0.01,
         "delta_balanced_accuracy_high": 0.03, "chosen_share": share,
         "chosen_synthetic_weight": weight}  # fmt: skip
    if mix is not None:
        h["chosen_teacher_mix"] = mix
    if start is not None:
        h["chosen_synthetic_start"] = start
    if fill is not None:
        h["chosen_real_fill"] = fill
    if stop is not None:
        h["chosen_synthetic_stop"] = stop
    metrics_dir.mkdir(parents=True, exist_ok=True)
    write_json(metrics_dir / "utility.json", {"enabled": True, "verdict": verdict,
               "verdict_metric": "balanced_accuracy", "headline": h})  # fmt: skip


def test_auto_pools_by_the_tail_and_exports_the_choice_only_when_it_helps(data_dir, tmp_path):
    from ganpipe.stages.augment import auto_choice

    names = ["a", "b", "c"]
    balanced, tail = np.array([10, 9, 8]), np.array([40, 40, 5])
    auto = P(mode="auto", synthetic_ratio=0.5)
    # the pool: ratio on balanced data, balance (fill to the largest) on a long tail (>= 4x)
    assert wanted_counts(auto, balanced, names).tolist() == [5, 5, 4]  # 4.5 rounds up
    assert wanted_counts(auto, tail, names).tolist() == [0, 0, 35]
    assert wanted_counts(auto, tail, names, share=0.5).tolist() == [0, 0, 18]
    assert wanted_counts(auto, tail, names, share=0.0).tolist() == [0, 0, 0]

    make_synthetic(tmp_path / "synthetic", per_class=10)
    metrics = tmp_path / "metrics"
    write_choice(metrics, "helps", share=0.5, weight=0.25)
    chosen = auto_choice(metrics)
    assert "chose 0.5 of the synthetic pool at loss weight 0.25" in chosen["why"]
    summary = augment(auto, data_dir, tmp_path / "synthetic", tmp_path / "out", choice=chosen)
    images, labels, is_syn = load_train(tmp_path / "out")
    # REAL_COUNTS 8, 4, 3 (2.7x: not a long tail): the pool is ratio 0.5 (4, 2, 2), half of it
    assert np.bincount(labels[is_syn], minlength=3).tolist() == [2, 1, 1]
    with np.load(tmp_path / "out" / "train.npz") as f:
        assert set(f["weights"][f["is_synthetic"]]) == {0.25}
    assert summary["auto"]["verdict"] == "helps" and summary["targets"]["teacher"] is None
    # a chosen teacher mix: the export's synthetic targets mix in the teacher (the evaluator)
    write_choice(metrics, "helps", share=1.0, weight=1.0, mix=0.5)
    chosen = auto_choice(metrics)
    assert chosen["teacher_mix"] == 0.5 and "0.5 of each target from the teacher" in chosen["why"]
    with pytest.raises(ValueError, match="teacher is the evaluator"):
        augment(auto, data_dir, tmp_path / "synthetic", tmp_path / "o1", choice=chosen)
    summary = augment(auto, data_dir, tmp_path / "synthetic", tmp_path / "o1", label_reader(),
                      choice=chosen)  # fmt: skip
    assert summary["targets"]["teacher"]["mix"] == 0.5
    assert summary["targets"]["synthetic_start"] == 0.0  # a study from before deferral
    # a chosen deferral: recorded in the export, and the loaders give the real part alone
    from ganpipe.data.loaders import TorchDataset, load_augmented

    write_choice(metrics, "helps", share=1.0, weight=1.0, start=0.5)
    chosen = auto_choice(metrics)
    assert chosen["synthetic_start"] == 0.5 and "joining after 0.5 of the training" in chosen["why"]
    summary = augment(auto, data_dir, tmp_path / "synthetic", tmp_path / "o4", choice=chosen)
    data = load_augmented(tmp_path / "o4")
    assert summary["targets"]["synthetic_start"] == data.synthetic_start == 0.5
    real_part = TorchDataset(tmp_path / "o4", synthetic=False)
    assert len(real_part) == (~data.is_synthetic).sum() == len(data) - summary["num_synthetic"] > 0
    assert not real_part.data.is_synthetic.any() and len(TorchDataset(tmp_path / "o4")) == len(data)
    assert data.synthetic_stop == 1.0 and summary["targets"]["synthetic_stop"] == 1.0
    # a chosen fine-tuning: the stop is recorded beside the start
    write_choice(metrics, "helps", share=1.0, weight=1.0, start=0.25, stop=0.75)
    chosen = auto_choice(metrics)
    assert "joining after 0.25 of the training, leaving after 0.75 of it" in chosen["why"]
    augment(auto, data_dir, tmp_path / "synthetic", tmp_path / "o6", choice=chosen)
    data = load_augmented(tmp_path / "o6")
    assert (data.synthetic_start, data.synthetic_stop) == (0.25, 0.75)
    assert data.real_only().synthetic_stop == 0.75

    # a chosen real fill: each real image weighs 1 + its class's copies / its real count
    write_choice(metrics, "helps", share=0.5, weight=1.0, fill=1.0)
    chosen = auto_choice(metrics)
    assert chosen["real_fill"] == 1.0 and "weighted for 1 of the gap" in chosen["why"]
    summary = augment(auto, data_dir, tmp_path / "synthetic", tmp_path / "o5", choice=chosen)
    # the pool 4, 2, 2 (above); half of it exported (2, 1, 1); copies 2, 1, 1 on 8, 4, 3 reals
    expected = [1 + 2 / 8, 1 + 1 / 4, 1 + 1 / 3]
    np.testing.assert_allclose(list(summary["targets"]["real_weights"].values()), expected)
    with np.load(tmp_path / "out" / "train.npz") as f:  # no fill: every real image weighs 1
        assert set(f["weights"][~f["is_synthetic"]]) == {1.0}
    with np.load(tmp_path / "o5" / "train.npz") as f:
        real = ~f["is_synthetic"]
        np.testing.assert_allclose(f["weights"][real], np.array(expected)[f["labels"][real]],
                                   rtol=1e-6)  # fmt: skip

    for verdict in ("no measurable effect", "hurts"):
        write_choice(metrics, verdict, share=1.0, weight=1.0, start=0.5, fill=1.0, stop=0.75)
        chosen = auto_choice(metrics)
        assert f"verdict is '{verdict}'" in chosen["why"] and "real data alone" in chosen["why"]
        summary = augment(auto, data_dir, tmp_path / "synthetic", tmp_path / "o2", choice=chosen)
        assert summary["num_synthetic"] == 0 and summary["targets"]["synthetic_start"] == 0.0
        assert set(summary["targets"]["real_weights"].values()) == {1.0}
        assert summary["targets"]["synthetic_stop"] == 1.0
    # the utility stage asks for the pool (no choice yet): all of it
    assert augment(auto, data_dir, tmp_path / "synthetic", tmp_path / "o3")["num_synthetic"] == 8
    # no choice recorded: a clear error; auto without the study: refused when the params load
    write_json(metrics / "utility.json", {"enabled": False})
    with pytest.raises(DataError, match="records no choice"):
        auto_choice(metrics)
    from ganpipe.config import load_params

    with pytest.raises(ConfigError, match="augment.mode auto .* needs utility.enabled"):
        load_params(None, ["augment.mode=auto"])
