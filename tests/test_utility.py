"""The utility stage: metrics, the paired interval and verdict, splits, class weights, the classic
augmentation, the downstream trainer (test split never steers it), user models, scenarios and the
stage's outputs. On sklearn's 8x8 digits; few real trainings (each one traces a new network)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from ganpipe.config import Params, UtilityParams
from ganpipe.data.prepared import Prepared, Split, load_prepared, make_summary, save_prepared
from ganpipe.errors import ConfigError, DataError
from ganpipe.evaluation import downstream as U
from ganpipe.evaluation.downstream import class_weights_mean_over_images as class_weights
from ganpipe.evaluation.downstream_net import (
    check_fits,
    classic_augmentation,
    fresh_network,
    load_user_model,
)
from ganpipe.io import read_json, save_npz, write_json
from ganpipe.paths import Paths
from ganpipe.stages import utility as stage
from tests.helpers import digits_prepared

T_975_2DF = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2): 3 seeds


@pytest.fixture(scope="module")
def digits() -> Prepared:
    return digits_prepared()


@pytest.fixture(scope="module")
def small(digits) -> Prepared:
    """400 training and 150 test digits: enough to learn something in two epochs."""
    train = Split(digits.train.images[:400], digits.train.labels[:400])
    test = Split(digits.test.images[:150], digits.test.labels[:150])
    return Prepared(train, test, make_summary(train, test, digits.class_names, "digits"))


# ---- pure functions ------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn on the never-true class 3
def test_metrics_match_sklearn_and_skip_classes_absent_from_test():
    from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    p = np.array([0, 1, 0, 1, 1, 2, 0, 2, 3, 0])  # class 3 predicted once, never true
    m = U.classification_metrics(y, p, num_classes=4)
    assert set(m) == set(U.METRICS)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, labels=[0, 1, 2], average="macro"))
    assert m["worst_class_recall"] == pytest.approx(recall_score(y, p, average=None)[:3].min())
    assert U.classification_metrics(y, y, 4) == dict.fromkeys(U.METRICS, 1.0)


@pytest.mark.parametrize(
    ("baseline", "treatment", "verdict"),
    [
        ([0.80, 0.82, 0.81], [0.85, 0.86, 0.87], "helps"),  # +0.05 +0.04 +0.06
        ([0.80, 0.82, 0.81], [0.75, 0.79, 0.77], "hurts"),  # -0.05 -0.03 -0.04
        ([0.80, 0.82, 0.81], [0.85, 0.79, 0.82], "no measurable effect"),  # +0.05 -0.03 +0.01
        ([0.80, 0.82, 0.81], [0.80, 0.82, 0.81], "no measurable effect"),  # identical
    ],
)
def test_paired_interval_and_verdict(baseline, treatment, verdict):
    c = U.paired_interval(baseline, treatment)
    diff = np.subtract(treatment, baseline)
    half = T_975_2DF * diff.std(ddof=1) / math.sqrt(3)
    assert c["per_seed"] == pytest.approx(diff.tolist())
    assert c["mean"] == pytest.approx(diff.mean())
    assert (c["low"], c["high"]) == pytest.approx((diff.mean() - half, diff.mean() + half))
    assert c["verdict"] == verdict
    assert U.verdict_of(0.001, 0.1) == "helps" and U.verdict_of(-0.1, -0.001) == "hurts"
    assert U.verdict_of(0.0, 0.1) == "no measurable effect"  # touching 0 is not above it
    # t_0.8 with 2 degrees of freedom is 1.0607: the effect seen 4 times in 5 (scipy.stats.t)
    assert c["detectable"] == pytest.approx(half + 1.0606601717798212 * half / T_975_2DF)


def test_the_detectable_effect_is_what_the_run_calls_with_80_percent_power():
    """Simulated paired differences of a true effect equal to the reported detectable size (the
    spread known): the interval excludes 0 in about 80% of runs; at half that size far fewer."""
    rng = np.random.default_rng(0)
    n, sd, runs = 10, 0.01, 4000
    probe = U.paired_interval(np.zeros(n), rng.normal(0, sd, n))
    # the detectable size for a run whose differences have exactly this spread
    size = probe["detectable"] * sd / np.std(probe["per_seed"], ddof=1)

    def called(effect: float) -> float:
        hits = 0
        for _ in range(runs):
            c = U.paired_interval(np.zeros(n), rng.normal(effect, sd, n))
            hits += c["verdict"] != "no measurable effect"
        return hits / runs

    # the t-based size assumes the spread is estimated: power at that size is about 0.8 (+-0.03:
    # 4000 runs give a standard error of 0.006, and the formula is an approximation)
    assert called(size) == pytest.approx(0.8, abs=0.03)
    assert called(size / 2) < 0.4


def test_summarize_arms_and_headline_verdict():
    def scores(base: float, step: float) -> list[dict[str, float]]:
        return [dict.fromkeys(U.METRICS, base + step * i) for i in range(3)]

    per_seed = {
        "real": scores(0.70, 0.01),
        "real_classic": scores(0.80, 0.01),
        "real_synthetic": scores(0.69, 0.012),  # -0.01, -0.008, -0.006: hurts
        "real_classic_synthetic": scores(0.82, 0.011),  # +0.02, +0.021, +0.022: helps
    }
    s = U.summarize(per_seed, "macro_f1")
    assert s["verdict"] == "helps" and s["headline_comparison"] == U.HEADLINE
    assert s["arms"]["real"]["accuracy"]["mean"] == pytest.approx(0.71)
    assert s["arms"]["real"]["accuracy"]["std"] == pytest.approx(0.01)  # ddof=1
    assert s["comparisons"]["real_synthetic_vs_real"]["metrics"]["accuracy"]["verdict"] == "hurts"


def test_validation_split_is_stratified_seeded_and_keeps_a_training_image_per_class():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 1 + [3] * 2)
    tr, va = U.validation_split(labels, 0.2, np.random.default_rng(0))
    assert not set(tr) & set(va) and len(tr) + len(va) == len(labels)
    assert np.bincount(labels[va], minlength=4).tolist() == [10, 2, 0, 0]  # round(0.2 n), < n
    assert set(labels[tr]) == {0, 1, 2, 3}
    tr2, va2 = U.validation_split(labels, 0.2, np.random.default_rng(0))
    assert (va == va2).all() and (tr == tr2).all()
    assert not (U.validation_split(labels, 0.2, np.random.default_rng(1))[1] == va).all()


def test_class_weights_exactly_when_imbalanced():
    balanced = np.repeat(np.arange(3), [10, 12, 14])  # 14/10 = 1.4 <= 1.5
    imbalanced = np.repeat(np.arange(3), [10, 10, 40])
    assert class_weights(balanced, 3, "auto") is None
    w = class_weights(imbalanced, 3, "auto")
    assert w == pytest.approx({0: 2.0, 1: 2.0, 2: 0.5})  # n / (k n_c)
    per_image = np.array([w[c] for c in imbalanced])
    assert per_image.mean() == pytest.approx(1.0)  # the loss keeps its scale
    assert class_weights(imbalanced, 3, False) is None
    assert class_weights(balanced, 3, True) is not None  # forced on
    assert class_weights(np.repeat([0, 2], [5, 20]), 3, True)[1] == 1.0  # absent class


def test_scenario_subsets():
    labels = np.repeat(np.arange(3), [100, 30, 4])
    rng = np.random.default_rng(0)
    idx = U.label_fraction_subset(labels, 0.1, rng)
    assert np.bincount(labels[idx]).tolist() == [10, 3, 1]  # >= 1 per class
    names = ["a", "b", "c"]
    idx = U.class_caps_subset(labels, names, {"a": 7, "c": 9}, rng)
    assert np.bincount(labels[idx]).tolist() == [7, 30, 4]
    with pytest.raises(ConfigError, match=r"unknown class name.*'z'.*'a', 'b', 'c'"):
        U.class_caps_subset(labels, names, {"z": 1}, rng)


# ---- networks ------------------------------------------------------------------------------------


def test_classic_augmentation_only_in_training():
    x = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 1)).astype(np.float32)
    aug = classic_augmentation(0.2, 30.0, seed=0)
    assert np.array_equal(np.asarray(aug(x, training=False)), x)
    assert not np.allclose(np.asarray(aug(x, training=True)), x)
    model = fresh_network(None, (16, 16, 1), 10, seed=0, augmentation=(0.2, 30.0))
    assert model.get_layer("classic_augmentation") is not None
    inner = model.layers[-1]
    assert np.allclose(model(x, training=False), inner(x, training=False), atol=1e-6)
    for shape in ((8, 8, 1), (28, 28, 1), (32, 32, 3), (64, 64, 3)):
        assert fresh_network(None, shape, 7, seed=0).output_shape == (None, 7)


def _user_model(num_classes: int, softmax: bool = False) -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    out = keras.layers.Dense(num_classes, activation="softmax" if softmax else None)(x)
    return keras.Model(inputs, out)


def test_user_model_checked_and_cloned_fresh(tmp_path):
    path = tmp_path / "mine.keras"
    _user_model(10, softmax=True).save(path)
    model = load_user_model(path)
    check_fits(model, (8, 8, 1), 10, "utility.model_path")
    from ganpipe.evaluation.downstream_net import outputs_probabilities

    assert outputs_probabilities(model) and not outputs_probabilities(_user_model(10))
    clone = fresh_network(model, (8, 8, 1), 10, seed=3)
    assert not np.allclose(clone.get_weights()[0], model.get_weights()[0])  # re-initialised
    again = fresh_network(model, (8, 8, 1), 10, seed=3)
    assert np.allclose(clone.get_weights()[0], again.get_weights()[0])  # seeded

    wrong = tmp_path / "three.keras"
    _user_model(3).save(wrong)
    with pytest.raises(ConfigError, match=r"utility.model_path.*outputs shape \(3,\).*10 classes"):
        check_fits(load_user_model(wrong), (8, 8, 1), 10, "utility.model_path")
    with pytest.raises(ConfigError, match="inputs of shape"):
        check_fits(model, (28, 28, 1), 10, "utility.model_path")
    with pytest.raises(ConfigError, match="not found"):
        load_user_model(tmp_path / "missing.keras")


# ---- the trainer ---------------------------------------------------------------------------------


def test_training_never_sees_the_test_split_and_is_reproducible(small):
    """Changing the test labels changes the scores only: the same epochs, the same best epoch,
    the same predictions (scores on the original labels reproduce)."""
    params = UtilityParams(max_epochs=3, patience=1, batch_size=32, class_weight="auto")
    tr, va = U.validation_split(small.train.labels, 0.1, np.random.default_rng(0))
    train = Split(small.train.images[tr], small.train.labels[tr])
    val = Split(small.train.images[va], small.train.labels[va])
    shuffled = Split(small.test.images, np.roll(small.test.labels, 1))

    def fit(test: Split, classic: bool = False) -> U.TrainResult:
        return U.train_and_score(train, val, test, (8, 8, 1), 10, params, 0, classic)

    a = fit(small.test)
    b = fit(small.test)
    c = fit(shuffled)
    assert 1 <= a.epochs <= 3 and 1 <= a.best_epoch <= a.epochs
    assert set(a.scores) == set(U.METRICS)
    assert all(0.0 <= v <= 1.0 for v in a.scores.values())
    assert a.scores["accuracy"] > 0.3  # it learns something in 3 epochs
    assert not a.class_weighted  # digits are balanced
    assert (a.epochs, a.best_epoch) == (b.epochs, b.best_epoch) == (c.epochs, c.best_epoch)
    assert a.scores == pytest.approx(b.scores, abs=0.02)  # seeded; CPU kernels may differ in bits
    assert c.scores["accuracy"] < a.scores["accuracy"] - 0.2  # the labels did change


def test_fit_gets_class_weights_exactly_when_imbalanced(small, monkeypatch):
    """What train_and_score hands Keras's fit: class weights for imbalanced training classes only
    (class_weight auto), the classic augmentation layers only for classic arms, the validation
    split as validation data. fit itself is stood in for (no training)."""
    seen: list[dict] = []

    def fake_fit(model, x, y, **kw):
        names = {layer.name for layer in model.layers}
        seen.append(kw | {"classic": "classic_augmentation" in names, "n": len(x)})
        for callback in kw["callbacks"]:
            callback.set_model(model)
            callback.on_train_begin()
        return SimpleNamespace(history={"loss": [1.0]})  # what train_and_score reads

    monkeypatch.setattr(keras.Model, "fit", fake_fit)
    params = UtilityParams(max_epochs=2, class_weight="auto")
    labels = small.train.labels
    val = Split(small.train.images[:30], labels[:30])
    balanced_idx = np.concatenate([np.flatnonzero(labels == c)[-20:] for c in range(10)])
    balanced = Split(small.train.images[balanced_idx], labels[balanced_idx])
    skewed_idx = np.concatenate([np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)[:60]])
    skewed = Split(small.train.images[skewed_idx], labels[skewed_idx])
    for train, classic in ((balanced, False), (skewed, True)):
        U.train_and_score(train, val, small.test, (8, 8, 1), 10, params, 0, classic)
    assert seen[0]["class_weight"] is None and not seen[0]["classic"]
    assert seen[1]["class_weight"] is not None and seen[1]["classic"]
    w = seen[1]["class_weight"]
    assert w[0] < 1 < w[1]  # the common class down, rare ones up
    for call in seen:
        assert np.array_equal(call["validation_data"][1], val.labels)
        assert call["epochs"] == 2 and call["callbacks"][0].restore_best_weights


# ---- the study with a stand-in trainer --------------------------------------------------------------


class FakeTrainer:
    """Records what each training got; scores: synthetic +0.03, classic +0.05, seed-dependent
    base; with `hurt`, synthetic -0.03."""

    def __init__(self, hurt: bool = False) -> None:
        self.calls: list[dict] = []
        self.hurt = hurt

    def __call__(self, train, val, test, shape, k, params, seed, classic, template=None):
        self.calls.append(dict(train=train, val=val, test=test, seed=seed, classic=classic))
        n_syn = (train.images[:, 0, 0, 0] == 255).sum()  # the stand-ins' mark
        value = 0.7 + 0.01 * seed + 0.05 * classic + (-0.03 if self.hurt else 0.03) * (n_syn > 0)
        weighted = class_weights(train.labels, k, params.class_weight) is not None
        return U.TrainResult(dict.fromkeys(U.METRICS, value), 2, 1, 0.5, weighted)


def marked_synthetic(split: Split, n: int) -> Split:
    """Stand-in synthetic samples: real digits with the top-left pixel (always 0 in digits) at 255."""
    idx = np.random.default_rng(1).choice(len(split), n)
    images = split.images[idx].copy()
    images[:, 0, 0, 0] = 255
    return Split(images, split.labels[idx])


def test_run_study_pairs_arms_and_adds_synthetic_to_training_only(small, monkeypatch):
    fake = FakeTrainer()
    monkeypatch.setattr(U, "train_and_score", fake)
    params = UtilityParams(seeds=3, validation_fraction=0.2)
    syn = marked_synthetic(small.train, 100)
    r = U.run_study(small, syn, params)
    assert len(fake.calls) == 3 * 4
    for i in range(3):  # per seed: one split, one seed, shared by the four arms
        calls = fake.calls[4 * i : 4 * i + 4]
        assert {c["seed"] for c in calls} == {i}
        assert all(np.array_equal(c["val"].labels, calls[0]["val"].labels) for c in calls)
        assert [c["classic"] for c in calls] == [False, True, False, True]
        for c, arm in zip(calls, U.ARMS, strict=True):
            assert c["test"] is small.test
            assert (c["val"].images[:, 0, 0, 0] != 255).all()  # validation: real only
            n_syn = (c["train"].images[:, 0, 0, 0] == 255).sum()
            assert n_syn == (100 if arm.endswith("synthetic") else 0)
            assert len(c["train"]) - n_syn + len(c["val"]) == len(small.train)
    assert r["verdict"] == "helps"
    n_val = np.floor(0.2 * np.bincount(small.train.labels) + 0.5).sum()
    assert r["num_real"] == 400 and r["num_synthetic"] == 100 and r["num_validation"] == n_val
    assert r["epochs"] == dict.fromkeys(U.ARMS, [2, 2, 2])
    assert r["seconds_per_arm"] == dict.fromkeys(U.ARMS, 1.5)
    assert r["arms"]["real_classic"]["accuracy"]["mean"] == pytest.approx(0.76)
    assert U.run_study(small, syn, params).keys() == r.keys()
    monkeypatch.setattr(U, "train_and_score", FakeTrainer(hurt=True))
    assert U.run_study(small, syn, params)["verdict"] == "hurts"
    with pytest.raises(DataError, match="no synthetic samples"):
        U.run_study(small, Split(syn.images[:0], syn.labels[:0]), params)


def test_class_weighted_only_for_imbalanced_arms(small, monkeypatch):
    fake = FakeTrainer()
    monkeypatch.setattr(U, "train_and_score", fake)
    labels = small.train.labels
    # balanced real data plus synthetic samples of one class only: the synthetic arms are skewed
    syn = marked_synthetic(Split(small.train.images[labels == 3], labels[labels == 3]), 200)
    r = U.run_study(small, syn, UtilityParams())
    weighted = {arm: {t["class_weighted"] for t in ts} for arm, ts in r["trainings"].items()}
    assert weighted == {
        "real": {False},
        "real_classic": {False},
        "real_synthetic": {True},
        "real_classic_synthetic": {True},
    }


# ---- the stage -----------------------------------------------------------------------------------


def stage_params(**utility) -> Params:
    """A tiny GAN (tests/train_fixtures.py's sizes), a 1-epoch evaluator, augment without the
    memorization guard (these stand-in samples are copies of training digits by construction)."""
    return Params.model_validate(
        {
            "model": {"latent_dim": 8, "embed_dim": 4, "filters": 16},
            "train": {"epochs": 1, "batch_size": 32, "sample_every": 50, "checkpoint_every": 50},
            "generate": {"per_class": 30, "write_png": False},
            "augment": {"synthetic_ratio": 1.0, "memorization_guard": False},
            "evaluate": {"classifier_epochs": 1},
            "utility": {"enabled": True, "max_epochs": 2, "patience": 1, "batch_size": 32}
            | utility,
            "tracking": {"enabled": False},
        }
    )


@pytest.fixture(scope="module")
def project(small, tmp_path_factory) -> Paths:
    """Prepared digits and stand-in synthetic samples (marked, 60 per class) in a pipeline layout."""
    paths = Paths.under(tmp_path_factory.mktemp("utility_project"))
    save_prepared(paths.prepared, small)
    rng = np.random.default_rng(2)
    labels = small.train.labels
    idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), 60) for c in range(10)])
    images = small.train.images[idx].copy()
    images[:, 0, 0, 0] = 255
    paths.synthetic.mkdir(parents=True)
    save_npz(paths.synthetic / "samples.npz", images=images, labels=labels[idx])
    write_json(paths.synthetic / "summary.json", {"class_names": small.class_names})
    return paths


def test_stage_disabled_writes_a_null_verdict(tmp_path):
    paths = Paths.under(tmp_path)
    result = stage.run(stage_params(enabled=False), paths, U_NULL, progress=False)
    assert result == {"enabled": False, "verdict": None}
    assert read_json(paths.metrics / "utility.json") == result
    assert (paths.metrics / "utility.csv").read_text().strip() == "scenario,arm,metric,mean,std"
    assert (paths.metrics / "utility.png").stat().st_size > 0
    assert U.read_verdict(paths.metrics) is None
    with pytest.raises(DataError, match="not found"):
        U.read_verdict(tmp_path / "nowhere")
    (paths.metrics / "utility.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        U.read_verdict(paths.metrics)


class RecordingTracker:
    def __init__(self) -> None:
        self.metrics: dict = {}
        self.tags: dict = {}
        self.artifacts: list = []

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_artifact(self, path, artifact_path=None):
        assert Path(path).exists()
        self.artifacts.append(Path(path).name)


U_NULL = RecordingTracker()


def test_stage_as_given_and_label_fraction(project, small, monkeypatch):
    """as_given adds the pipeline's synthetic samples; label_fraction writes its subset and trains
    its own GAN, generator and evaluator on it (the real pipeline stages, a tiny GAN); the outputs
    and the tracker get the results. The classifier trainings are stood in for."""
    fake = FakeTrainer()
    monkeypatch.setattr(U, "train_and_score", fake)
    tracker = RecordingTracker()
    params = stage_params(scenarios=["as_given", "label_fraction"], label_fraction=0.1)
    result = stage.run(params, project, tracker, progress=False)

    assert result["enabled"] and result["verdict"] == "helps"
    assert result["verdict_metric"] == "balanced_accuracy"
    assert list(result["scenarios"]) == ["as_given", "label_fraction"]
    given, frac = result["scenarios"]["as_given"], result["scenarios"]["label_fraction"]
    assert given["num_real"] == 400 and given["num_synthetic"] == 400  # ratio 1
    assert (np.bincount(small.train.labels, minlength=10) >= 1).all()

    sub = stage.scenario_paths(project, "label_fraction")
    assert sub.checkpoints == project.checkpoints and sub.prepared.is_relative_to(project.utility)
    data = load_prepared(sub.prepared)
    want = np.maximum(1, np.floor(0.1 * np.bincount(small.train.labels) + 0.5))
    assert np.bincount(data.train.labels).tolist() == want.astype(int).tolist()
    assert np.array_equal(data.test.images, small.test.images)  # test split unchanged
    assert frac["num_real"] == len(data.train) and frac["num_synthetic"] == len(data.train)
    # its own GAN, samples and evaluator, all from the subset
    assert read_json(sub.models / "train_summary.json")  # trained there
    assert read_json(sub.synthetic / "summary.json")["data_content_hash"] == data.content_hash
    assert read_json(sub.evaluator / "meta.json")["num_train"] == len(data.train)
    # the generated (unmarked) samples were added, not the pipeline's marked stand-ins
    frac_calls = fake.calls[12:]
    assert all((c["train"].images[:, 0, 0, 0] != 255).all() for c in frac_calls)

    on_disk = read_json(project.metrics / "utility.json")
    assert on_disk["verdict"] == "helps" and on_disk["headline_scenario"] == "as_given"
    h = on_disk["headline"]
    assert h["delta_balanced_accuracy"] == pytest.approx(0.03)
    assert h["real_classic_synthetic_balanced_accuracy"] == pytest.approx(0.79)
    assert all(isinstance(v, int | float) for v in h.values())
    rows = (project.metrics / "utility.csv").read_text().strip().splitlines()
    assert rows[0] == "scenario,arm,metric,mean,std" and len(rows) == 1 + 2 * 4 * 4
    assert (project.metrics / "utility.png").stat().st_size > 0
    gate = U.read_verdict(project.metrics)
    assert gate["verdict"] == "helps" and gate["headline"] == h

    assert tracker.metrics["utility_real_accuracy_mean"] == pytest.approx(0.71)
    assert tracker.metrics["utility_delta_macro_f1"] == pytest.approx(0.03)
    assert "utility_label_fraction_delta_macro_f1" in tracker.metrics
    assert tracker.tags["utility.verdict"] == "helps"
    assert set(tracker.artifacts) == {"utility.json", "utility.png"}


def test_stage_refuses_before_training(project, tmp_path):
    wrong = tmp_path / "three.keras"
    _user_model(3).save(wrong)
    with pytest.raises(ConfigError, match=r"outputs shape \(3,\).*10 classes"):
        stage.run(stage_params(model_path=str(wrong)), project, U_NULL, progress=False)
    caps = stage_params(scenarios=["long_tail"], class_caps={"eleven": 3})
    with pytest.raises(ConfigError, match="unknown class name.*'eleven'"):
        stage.run(caps, project, U_NULL, progress=False)
