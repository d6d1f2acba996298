"""The domain classifier cache and the evaluate stage, end to end on sklearn's 8x8 digits."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from ganpipe.config import EvaluateParams, Params
from ganpipe.data.prepared import Prepared, Split, save_prepared, save_split
from ganpipe.errors import ConfigError, DataError
from ganpipe.evaluation.metrics.memorization import HEADLINE_KEYS as MEMORIZATION_KEYS
from ganpipe.paths import Paths
from ganpipe.stages import evaluate as stage
from ganpipe.stages.evaluate import PER_CLASS_COLUMNS, stratified_subsample
from ganpipe.tracker import Tracker
from tests.helpers import digits_prepared

PARAMS = EvaluateParams(
    classifier_epochs=15,
    classifier_batch_size=64,
    max_samples=1000,
    kid_subsets=10,
    kid_subset_size=200,
)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[Path, Prepared]:
    """sklearn digits as prepared data: uint8 8x8x1, 80/20 split."""
    prepared = digits_prepared()
    out = tmp_path_factory.mktemp("prepared")
    save_prepared(out, prepared)
    return out, prepared


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One evaluator cache for the module: the classifier is trained once, as in the pipeline."""
    return tmp_path_factory.mktemp("evaluator")


def evaluate(
    params: EvaluateParams,
    data_dir: Path,
    synthetic_dir: Path,
    out: Path,
    cache_dir: Path,
    tracker: Tracker | None = None,
    reference_dir: Path | None = None,
) -> dict:
    """The stage's library function with these evaluate params (the other sections default); with
    a tracker, the stage's `run`, which logs what the library function wrote."""
    full = Params(evaluate=params)
    if tracker is None:
        return stage.evaluate(full, data_dir, synthetic_dir, out, cache_dir, reference_dir)
    paths = Paths(prepared=data_dir, synthetic=synthetic_dir, metrics=out, evaluator=cache_dir)
    return stage.run(full, paths, tracker)


def write_samples(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_split(path / "samples.npz", Split(images, labels.astype(np.int64)))
    return path


class RecordingTracker(Tracker):
    def __init__(self) -> None:
        self.metrics: list[dict] = []
        self.artifacts: list[tuple[str, str | None]] = []

    def log_metrics(self, metrics, step=None):
        self.metrics.append(dict(metrics))

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((str(path), artifact_path))


# ---- classifier cache -----------------------------------------------------------------------------


def test_get_evaluator_trains_once_and_retrains_on_change(digits, tmp_path, monkeypatch):
    from ganpipe.evaluation import domain_classifier as clf

    data_dir, prepared = digits
    calls = []
    real_train = clf._train

    def counting_train(prep, params):
        calls.append(params)
        return real_train(prep, params)

    monkeypatch.setattr(clf, "_train", counting_train)
    params = EvaluateParams(classifier_epochs=1, classifier_batch_size=128)
    ev = clf.get_evaluator(data_dir, params, tmp_path)
    model, meta = ev.model, ev.meta
    assert len(calls) == 1
    assert (tmp_path / "classifier.keras").exists() and (tmp_path / "meta.json").exists()
    assert 0.0 <= meta["test_accuracy"] <= 1.0
    assert meta["key"]["content_hash"] == prepared.content_hash
    mtime = os.stat(tmp_path / "classifier.keras").st_mtime_ns

    ev2 = clf.get_evaluator(data_dir, params, tmp_path)
    again, meta2 = ev2.model, ev2.meta
    assert len(calls) == 1, "second call must load, not retrain"
    assert meta2 == meta
    assert os.stat(tmp_path / "classifier.keras").st_mtime_ns == mtime
    x = prepared.test.images[:16].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(
        np.asarray(again(x, training=False)), np.asarray(model(x, training=False)), atol=1e-5
    )

    # metric-only params do not invalidate the network
    clf.get_evaluator(data_dir, params.model_copy(update={"kid_subsets": 7}), tmp_path)
    assert len(calls) == 1
    # classifier params do
    meta3 = clf.get_evaluator(
        data_dir, params.model_copy(update={"classifier_epochs": 2}), tmp_path
    ).meta
    assert len(calls) == 2 and meta3["key"]["classifier_epochs"] == 2
    # and so does the code that builds and trains it: a cache made by other code is not reused
    monkeypatch.setattr(clf, "source_fingerprint", lambda *parts: "other code")
    meta4 = clf.get_evaluator(data_dir, params, tmp_path).meta
    assert len(calls) == 3 and meta4["key"]["code"] == "other code"


def test_get_evaluator_retrains_when_model_file_is_damaged(digits, tmp_path, monkeypatch):
    """The classifier stage (rebuild_damaged) retrains over a damaged model file; the stages that
    only read the evaluator stop with a DataError naming it (tests/test_damaged_files.py: the CLI)."""
    from ganpipe.evaluation import domain_classifier as clf

    data_dir, _ = digits
    params = EvaluateParams(classifier_epochs=1)
    clf.get_evaluator(data_dir, params, tmp_path)
    (tmp_path / "classifier.keras").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"classifier\.keras is damaged .*ganpipe classifier"):
        clf.get_evaluator(data_dir, params, tmp_path)
    calls = []
    real_train = clf._train
    monkeypatch.setattr(clf, "_train", lambda p, q: calls.append(1) or real_train(p, q))
    clf.get_evaluator(data_dir, params, tmp_path, rebuild_damaged=True)
    assert calls == [1]
    clf.get_evaluator(data_dir, params, tmp_path)  # rebuilt: loads again
    assert calls == [1]


def test_classifier_features_layer_and_extract(digits, cache_dir):
    from ganpipe.evaluation.domain_classifier import get_evaluator
    from ganpipe.evaluation.domain_net import feature_extractor
    from ganpipe.evaluation.metrics import extract

    data_dir, prepared = digits
    ev = get_evaluator(data_dir, PARAMS, cache_dir)
    model, meta = ev.model, ev.meta
    assert meta["test_accuracy"] > 0.85
    ext = feature_extractor(model)
    imgs = prepared.test.images[:300]
    f1, p1 = extract(ext, imgs, batch_size=64)
    f2, p2 = extract(ext, imgs, batch_size=300)
    assert f1.shape == (300, 128) and p1.shape == (300, 10)
    np.testing.assert_allclose(f1, f2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(p1.sum(axis=1), 1.0, atol=1e-5)
    f0, p0 = extract(ext, imgs[:0])
    assert f0.shape == (0, 128) and p0.shape == (0, 10)


# ---- evaluate -------------------------------------------------------------------------------------


def test_evaluate_realistic_beats_noise(digits, cache_dir, tmp_path):
    data_dir, prepared = digits
    rng = np.random.default_rng(1)
    test = prepared.test
    noisy = np.clip(test.images + rng.normal(0, 10, test.images.shape), 0, 255).astype(np.uint8)
    good_dir = write_samples(tmp_path / "good", noisy, test.labels)
    noise = rng.integers(0, 256, size=(400, 8, 8, 1), dtype=np.uint8)
    noise_dir = write_samples(tmp_path / "noise", noise, np.arange(400) % 10)

    tracker = RecordingTracker()
    with pytest.warns(UserWarning):  # small data: KID subsets shrink, per-class covs singular
        good = evaluate(PARAMS, data_dir, good_dir, tmp_path / "m_good", cache_dir, tracker)
    with pytest.warns(UserWarning):
        bad = evaluate(PARAMS, data_dir, noise_dir, tmp_path / "m_noise", cache_dir)

    keys = {
        "classifier_fd",
        "classifier_fd_floor",
        "kid_mean",
        "kid_std",
        "conditional_accuracy",
        "classifier_score",
        "evaluator_test_accuracy",
        "num_synthetic",
        "precision",
        "recall",
        "density",
        "coverage",
    } | set(MEMORIZATION_KEYS)
    on_disk = json.loads((tmp_path / "m_good" / "eval.json").read_text())
    assert keys <= set(on_disk) and on_disk == good
    assert all(math.isfinite(v) for v in good.values())
    assert good["num_synthetic"] == len(test)
    assert good["classifier_fd"] < bad["classifier_fd"]
    assert good["kid_mean"] < bad["kid_mean"]
    assert good["conditional_accuracy"] > 0.8 > bad["conditional_accuracy"]
    assert good["classifier_score"] > bad["classifier_score"]
    assert good["precision"] > bad["precision"] and good["coverage"] > bad["coverage"]
    assert good["evaluator_test_accuracy"] > 0.85
    # the floor uses the same code on real test images: the noisy copy sits close to it
    assert good["classifier_fd"] < 2 * good["classifier_fd_floor"] + 1.0
    assert good["classifier_fd_floor"] < 0.1 * bad["classifier_fd"]
    # the "good" samples are noisy copies of the held-out set: nearer it than the training images
    assert good["closer_to_train_fraction"] < 0.2 and good["dcr_ratio"] > 1.0
    # ... in every class, and they cover each class's variety better than the bad samples do
    assert good["max_class_closer_to_train_fraction"] < 0.5
    assert good["min_class_coverage"] > bad["min_class_coverage"]
    assert bad["near_copy_fraction"] == 0.0
    assert bad["classifier_fd_floor"] == pytest.approx(good["classifier_fd_floor"])

    assert good["num_real"] == min(PARAMS.max_samples, len(prepared.train))
    assert not [k for k in good if k.startswith(("cas_", "real_acc", "uplift_"))]  # utility is off

    lines = (tmp_path / "m_good" / "per_class.csv").read_text().splitlines()
    assert lines[0].split(",") == list(PER_CLASS_COLUMNS)
    assert len(lines) == 1 + prepared.num_classes
    assert tracker.metrics == [good]
    outputs = [
        "per_class.csv",
        "per_class_accuracy.png",
        "feature_space.png",
        "memorization.json",
        "nearest_copies.png",
    ]
    assert tracker.artifacts == [(str(tmp_path / "m_good" / f), "evaluate") for f in outputs]
    for png in (f for f in outputs if f.endswith(".png")):
        assert (tmp_path / "m_good" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "m_good").iterdir()) == sorted(
        ["eval.json", *outputs]
    )


def test_evaluate_caps_synthetic_samples(digits, cache_dir, tmp_path):
    data_dir, prepared = digits
    train = prepared.train
    syn = write_samples(tmp_path / "syn", train.images, train.labels)
    params = PARAMS.model_copy(update={"max_samples": 200})
    with pytest.warns(UserWarning):
        out = evaluate(params, data_dir, syn, tmp_path / "m", cache_dir)
    assert out["num_synthetic"] == 200


def test_evaluate_reports_memorization(digits, cache_dir, tmp_path):
    """Copies of training images, some moved by a pixel: all of them are near-copies."""
    data_dir, prepared = digits
    train = prepared.train
    rng = np.random.default_rng(6)
    # digits whose last column is blank lose nothing when moved one pixel to the right
    blank = np.flatnonzero((train.images[:, :, -1] == 0).all(axis=(1, 2)))
    pick = rng.choice(blank, 100, replace=False)
    copies = train.images[pick].copy()
    copies[:30] = np.roll(copies[:30], 1, axis=2)
    syn = write_samples(tmp_path / "syn", copies, train.labels[pick])
    tracker = RecordingTracker()
    with pytest.warns(UserWarning):
        out = evaluate(PARAMS, data_dir, syn, tmp_path / "m", cache_dir, tracker)
    assert set(MEMORIZATION_KEYS) <= set(json.loads((tmp_path / "m" / "eval.json").read_text()))
    assert (tmp_path / "m" / "nearest_copies.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (str(tmp_path / "m" / "nearest_copies.png"), "evaluate") in tracker.artifacts
    assert out["near_copy_fraction"] == 1.0
    # a quarter of the copies' originals are in the DCR train reference (matched to the 360
    # held-out images out of 1437): those are nearer the training set, the rest are a coin toss
    assert out["closer_to_train_fraction"] > 0.5 and out["pixel_closer_to_train_fraction"] > 0.5

    report = json.loads((tmp_path / "m" / "memorization.json").read_text())
    assert set(report["per_class"]) == set(prepared.class_names)
    assert report["guard"]["num_train"] == len(train)  # the whole train split, not max_samples
    assert report["guard"]["quantile"] == 0.02  # augment.memorization_quantile's default
    assert report["num_dcr_reference"] == len(prepared.test)


def test_evaluate_missing_samples_is_data_error(digits, cache_dir, tmp_path):
    data_dir, _ = digits
    with pytest.raises(DataError, match=r"samples\.npz.*ganpipe generate"):
        evaluate(PARAMS, data_dir, tmp_path / "nothing", tmp_path / "m", cache_dir)
    assert not (tmp_path / "m").exists()


def test_evaluate_shape_mismatch_is_data_error(digits, cache_dir, tmp_path):
    data_dir, _ = digits
    syn = write_samples(tmp_path / "syn", np.zeros((20, 9, 9, 1), np.uint8), np.arange(20) % 10)
    with pytest.raises(DataError, match=r"samples\.npz.*9x9x1.*8x8x1"):
        evaluate(PARAMS, data_dir, syn, tmp_path / "m", cache_dir)
    syn = write_samples(tmp_path / "syn2", np.zeros((20, 8, 8, 1), np.uint8), np.full(20, 12))
    with pytest.raises(DataError, match="labels must be in 0..9"):
        evaluate(PARAMS, data_dir, syn, tmp_path / "m", cache_dir)


def test_stratified_subsample_keeps_class_shares():
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    idx = stratified_subsample(labels, 100, np.random.default_rng(0))
    assert len(idx) == 100 and len(np.unique(idx)) == 100
    assert np.bincount(labels[idx]).tolist() == [60, 30, 10]
    again = stratified_subsample(labels, 100, np.random.default_rng(0))
    np.testing.assert_array_equal(idx, again)
    assert len(stratified_subsample(labels, 5000, np.random.default_rng(0))) == 1000
    odd = stratified_subsample(np.repeat([0, 1, 2], [5, 5, 5]), 7, np.random.default_rng(1))
    assert len(odd) == 7


# ---- reference cache, extractors, utility ---------------------------------------------------------


def test_second_generator_reuses_the_real_reference(digits, cache_dir, tmp_path, monkeypatch):
    from ganpipe.evaluation.metrics.extractors import Extractor

    data_dir, prepared = digits
    extracted = []
    real_feature_set = Extractor.feature_set

    def counting(self, images, labels):
        extracted.append(len(images))
        return real_feature_set(self, images, labels)

    monkeypatch.setattr(Extractor, "feature_set", counting)
    # Four evaluations of which only the features and numbers matter here: without the plots (most
    # of an evaluation's time; test_evaluate_realistic_beats_noise checks them).
    for plots in ("evaluation_plots", "memorization_plots"):
        monkeypatch.setattr(stage, plots, lambda *args: None)
    ref_dir = tmp_path / "reference"
    rng = np.random.default_rng(5)
    gens = []
    for i in range(2):  # two generators of the same data: their samples differ
        idx = rng.choice(len(prepared.train), 300, replace=False)
        gens.append(write_samples(tmp_path / f"gen{i}", *_noisy(prepared.train, idx, rng)))
    with pytest.warns(UserWarning):
        first = evaluate(
            PARAMS, data_dir, gens[0], tmp_path / "m0", cache_dir, reference_dir=ref_dir
        )
    # train and test subsamples, the samples, then the whole train split for the memorization guard
    assert extracted == [PARAMS.max_samples, len(prepared.test), 300, len(prepared.train)]
    assert len(list(ref_dir.glob("classifier-*.npz"))) == 3
    with pytest.warns(UserWarning):
        second = evaluate(
            PARAMS, data_dir, gens[1], tmp_path / "m1", cache_dir, reference_dir=ref_dir
        )
    assert extracted[4:] == [300], "the real sets must come from the reference cache"
    assert second["classifier_fd_floor"] == first["classifier_fd_floor"]
    assert second["classifier_fd"] != first["classifier_fd"]
    # another sample of the real data (seed, max_samples) is another reference
    params = PARAMS.model_copy(update={"max_samples": 250})
    with pytest.warns(UserWarning):
        evaluate(params, data_dir, gens[1], tmp_path / "m2", cache_dir, reference_dir=ref_dir)
    assert extracted[5:] == [250, 250, 250]
    # by default the cache lives beside the classifier's directory, not in it (a DVC output)
    classifier_files = sorted(p.name for p in cache_dir.iterdir())
    with pytest.warns(UserWarning):
        evaluate(PARAMS, data_dir, gens[1], tmp_path / "m3", cache_dir)
    assert list((cache_dir.parent / ".ganpipe_cache/reference").glob("classifier-train-*.npz"))
    assert sorted(p.name for p in cache_dir.iterdir()) == classifier_files


def _noisy(
    split: Split, idx: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    noise = rng.normal(0, 8, split.images[idx].shape)
    return np.clip(split.images[idx] + noise, 0, 255).astype(np.uint8), split.labels[idx]


def test_inception_without_weights_refuses_before_any_training(digits, tmp_path, monkeypatch):
    from ganpipe.evaluation.metrics import extractors

    data_dir, prepared = digits
    syn = write_samples(tmp_path / "syn", prepared.test.images, prepared.test.labels)

    def offline(weights):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None")

    monkeypatch.setattr(extractors, "_inception_v3", offline)
    params = PARAMS.model_copy(update={"extractor": "inception"})
    with pytest.raises(ConfigError, match="inception_weights"):
        evaluate(params, data_dir, syn, tmp_path / "m", tmp_path / "evaluator")
    assert not (tmp_path / "evaluator").exists() and not (tmp_path / "m").exists()


def test_inception_features_are_reported_as_fid(digits, cache_dir, tmp_path, monkeypatch):
    """The Inception path end to end, with a small stand-in network (no weights to download)."""
    import keras

    from ganpipe.evaluation.metrics import extractors

    def stand_in(weights):
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [
                keras.Input((299, 299, 3)),
                keras.layers.Conv2D(8, 5, strides=5, activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(16, activation="tanh"),
            ]
        )

    monkeypatch.setattr(extractors, "_inception_v3", stand_in)
    monkeypatch.setattr(extractors, "INCEPTION_DIM", 16)
    data_dir, prepared = digits
    syn = write_samples(tmp_path / "syn", prepared.test.images, prepared.test.labels)
    params = PARAMS.model_copy(update={"extractor": "inception", "max_samples": 150})
    with pytest.warns(UserWarning):
        out = evaluate(
            params, data_dir, syn, tmp_path / "m", cache_dir, reference_dir=tmp_path / "r"
        )
    assert {"fid", "fid_floor", "kid_mean", "conditional_accuracy"} <= set(out)
    assert "classifier_fd" not in out and out["fid"] >= 0
    assert out["conditional_accuracy"] > 0.8  # probabilities still from the domain classifier
    header = (tmp_path / "m" / "per_class.csv").read_text().splitlines()[0].split(",")
    assert header[-1] == "fid"
    assert len(list((tmp_path / "r").glob("inception-*.npz"))) == 2
