"""The utility protocol and stage: metrics, the paired interval and verdict, splits, class weights,
the choice on validation, the combined verdict, the worth curve, batches and losses, the networks,
one training (the test split never steers it), the study's arms (stand-in trainings), planted
harmful and helpful sets (real trainings), scenarios and the stage's outputs. On sklearn's 8x8
digits; few real trainings (each one traces a new network)."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest

from ganpipe.config import UtilityParams
from ganpipe.data.prepared import Prepared, Split, make_summary
from ganpipe.errors import ConfigError, DataError
from ganpipe.evaluation import downstream as U
from ganpipe.evaluation import downstream_fit as F
from ganpipe.evaluation import downstream_study as S
from ganpipe.evaluation.downstream import class_weights_mean_over_images as class_weights
from ganpipe.evaluation.downstream_net import (
    build_network,
    check_fits,
    classic_augmentation,
    fresh_network,
    load_user_model,
)
from ganpipe.io import write_json
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


def test_choice_is_made_on_validation_never_on_test():
    validation = {
        "a": {"balanced_accuracy": {"mean": 0.80}},
        "b": {"balanced_accuracy": {"mean": 0.85}},
        "c": {"balanced_accuracy": {"mean": 0.85}},
    }
    assert U.choose(validation, ["a", "b", "c"], "balanced_accuracy") == "b"  # tie: first listed
    assert U.choose(validation, ["a"], "balanced_accuracy") == "a"


@pytest.mark.parametrize(
    ("verdicts", "combined"),
    [
        (["helps", "helps"], "helps"),
        (["helps", "no measurable effect"], "no measurable effect"),
        (["helps", "hurts"], "hurts"),  # either architecture's harm blocks a gated export
        (["no measurable effect", "hurts"], "hurts"),
        (["helps"], "helps"),
    ],
)
def test_two_architectures_combine(verdicts, combined):
    assert U.combine_verdicts(verdicts) == combined


def test_worth_reads_the_curve_where_the_treatment_lands():
    x = [1.0, 1.5, 2.0, 3.0]
    curve = np.array([[0.80, 0.84, 0.88, 0.96]] * 4) + np.array([[0.0], [0.01], [-0.01], [0.0]])
    # the treatment's mean 0.86 lies half-way between the 1.5x (0.84) and 2x (0.88) points
    w = U.worth_in_real_images(x, curve, np.array([0.86, 0.87, 0.85, 0.86]))
    assert w["worth"] == pytest.approx(1.75)
    assert w["low"] <= 1.75 <= w["high"] and not (w["below"] or w["above"])
    assert U.crossing(np.array(x), np.array([0.8, 0.84, 0.88, 0.96]), 0.92) == pytest.approx(2.5)
    # outside the curve: the end point, flagged (a bound, not a value)
    w = U.worth_in_real_images(x, curve, np.full(4, 0.99))
    assert w["worth"] == 3.0 and w["above"] and not w["below"]
    w = U.worth_in_real_images(x, curve, np.full(4, 0.70))
    assert w["worth"] == 1.0 and w["below"]
    # a curve that dips is read as non-decreasing (more real images never count as worse)
    assert U.crossing(np.array(x), np.array([0.8, 0.9, 0.85, 0.95]), 0.88) == pytest.approx(1.4)
    assert U.held_out_counts(np.array([100, 10, 10]), np.array([0, 50, 12]),
                             np.array([False, True, True]), 2.0) == (0, 10, 10)  # fmt: skip
    assert U.held_out_counts(np.array([100, 10, 10]), np.array([0, 50, 12]),
                             np.array([False, True, True]), 3.0) == (0, 20, 12)  # fmt: skip


# ---- batches and losses --------------------------------------------------------------------------


def test_batch_plan_pairs_the_real_batches_of_every_arm():
    real, _ = F.batch_plan(100, 0, 16, 20, seed=3)
    real2, extra = F.batch_plan(100, 50, 16, 20, seed=3)
    assert real.shape == (20, 16) and np.array_equal(real, real2)  # same real batches per step
    assert extra.shape == (20, 8)  # 16 x 50 / 100 extra images per batch
    # an epoch of the real part (6 steps of 16 of 100) visits distinct images; extra ones cycle
    assert len(set(real[:6].ravel())) == 96
    assert np.bincount(extra.ravel(), minlength=50).min() >= 3  # 160 draws over 50: all seen
    assert not np.array_equal(F.batch_plan(100, 0, 16, 20, seed=4)[0], real)


def test_oversampling_repeats_real_images_to_the_synthetic_counts():
    labels = np.repeat(np.arange(3), [50, 5, 0])
    idx = F.oversample_indices(labels, np.array([0, 45, 10]), np.random.default_rng(0))
    assert np.bincount(labels[idx], minlength=3).tolist() == [0, 45, 0]  # no image of class 2
    prior = F.log_prior(np.repeat([0, 1], [30, 10]), 3)
    assert np.exp(prior[:2]) == pytest.approx([0.75, 0.25])
    assert prior[2] == pytest.approx(prior[1])  # an absent class at the rarest present one's


def test_balanced_softmax_is_cross_entropy_of_logits_plus_log_prior():
    prior = np.log(np.array([0.7, 0.2, 0.1], dtype=np.float32))
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], dtype=np.float32)
    y = np.array([2, 0])
    got = np.asarray(F.balanced_softmax_loss(prior)(y, logits))
    z = logits + prior
    want = -(z[np.arange(2), y] - np.log(np.exp(z).sum(axis=1)))
    assert got == pytest.approx(want, rel=1e-5)
    # a rare true class costs more than plain cross-entropy would charge: its logit must win more
    plain = -(logits[0, 2] - np.log(np.exp(logits[0]).sum()))
    assert got[0] > plain


def test_the_resnet_is_a_different_network_for_any_image_size():
    for shape in ((8, 8, 1), (28, 28, 1), (32, 32, 3)):
        net = build_network("resnet", shape, 7, seed=0, augmentation=(0.1, 10.0))
        assert net.output_shape == (None, 7)
    cnn = build_network("cnn", (28, 28, 1), 10, seed=0, augmentation=None)
    res = build_network("resnet", (28, 28, 1), 10, seed=0, augmentation=None)
    assert any(isinstance(layer, keras.layers.Add) for layer in res.layers)
    assert not any(isinstance(layer, keras.layers.Add) for layer in cnn.layers)
    with pytest.raises(ConfigError, match="needs utility.model_path"):
        build_network("user", (8, 8, 1), 10, seed=0, augmentation=None)


# ---- one training --------------------------------------------------------------------------------


def settings(**kw) -> F.Settings:
    base = dict(batch_size=32, learning_rate=1e-3, validation_fraction=0.1, split_seed=0,
                classic_shift=0.1, classic_rotation=10.0, max_epochs=3, patience=1,
                model_path=None)  # fmt: skip
    return F.Settings(**(base | kw))


def arrays(tmp: Path, real: Prepared, synthetic: Split, held: Split | None = None) -> str:
    return F.arrays_file(tmp / "arrays.npz", real.train, real.test, synthetic, held, 10)


def test_training_never_sees_the_test_split_and_is_reproducible(small, tmp_path):
    """Changing the test labels changes the test scores only: the same validation scores, the
    same predictions (scores on the original labels reproduce)."""
    syn = Split(small.train.images[:20], small.train.labels[:20])
    shuffled = Prepared(small.train, Split(small.test.images, np.roll(small.test.labels, 1)),
                        small.summary)  # fmt: skip
    a_path = arrays(tmp_path, small, syn)
    (tmp_path / "b").mkdir()
    b_path = arrays(tmp_path / "b", shuffled, syn)
    job = F.Job("real_weighted", 0, 0, steps=25)
    a, c = F.fit_job(job, a_path, settings()), F.fit_job(job, b_path, settings())
    assert set(a["test"]) == set(U.METRICS) and a["steps"] == 25 and a["num_extra"] == 0
    assert a["test"]["accuracy"] > 0.3  # it learns something in 25 steps
    # training did not see the test labels: the same validation scores (seeded; CPU kernels may
    # differ in the last bits between runs, which can flip a prediction or two, hence not exact)
    assert a["val"] == pytest.approx(c["val"], abs=0.03)
    assert c["test"]["accuracy"] < a["test"]["accuracy"] - 0.2  # the labels did change
    calibrated = F.fit_job(F.Job("calibration", 0, 0, calibrate=True), a_path, settings())
    per_epoch = len(U.split_of_seed(small.train.labels, 0.1, 0, 0)[0]) // 32
    assert 1 <= calibrated["best_epoch"] <= 3
    assert calibrated["steps"] == calibrated["best_epoch"] * per_epoch
    with_syn = F.fit_job(F.Job("synthetic_balanced_softmax", 0, 0, "balanced_softmax",
                               "synthetic", steps=5), a_path, settings())  # fmt: skip
    assert with_syn["num_extra"] == 20


# ---- the study's arms, with stand-in trainings --------------------------------------------------------


class FakeFit:
    """Stands in for fit_job: records the jobs; scores 0.70 + 0.01 x seed, + `syn` for synthetic
    arms (its sign per architecture: `resnet_syn`), + 0.005 for oversampled ones, + 0.02 for
    balanced softmax on validation but - 0.02 on test (the choice must follow validation), +
    0.001 per held-out image."""

    def __init__(self, syn: float = 0.03, resnet_syn: float | None = None) -> None:
        self.jobs: list[F.Job] = []
        self.settings: F.Settings | None = None
        self.syn, self.resnet_syn = syn, syn if resnet_syn is None else resnet_syn

    def __call__(self, job, path, settings):
        self.jobs.append(job)
        self.settings = settings
        base = 0.70 + 0.01 * job.seed_index + 0.001 * sum(job.held_out_counts)
        base += 0.005 * (job.extra == "oversample")
        if job.extra == "synthetic":
            base += self.resnet_syn if job.architecture == "resnet" else self.syn
        bs = job.loss == "balanced_softmax"
        return {
            "arm": job.arm, "seed": job.seed, "seed_index": job.seed_index,
            "architecture": job.architecture, "steps": job.steps, "best_epoch": None,
            "num_extra": 0, "seconds": 0.5,
            "val": dict.fromkeys(U.METRICS, base + 0.02 * bs),
            "test": dict.fromkeys(U.METRICS, base - 0.02 * bs),
        }  # fmt: skip


def marked_synthetic(split: Split, n: int) -> Split:
    """Stand-in synthetic samples: real digits with the top-left pixel (always 0 in digits) at 255."""
    idx = np.random.default_rng(1).choice(len(split), n)
    images = split.images[idx].copy()
    images[:, 0, 0, 0] = 255
    return Split(images, split.labels[idx])


def test_study_runs_every_arm_paired_and_chooses_on_validation(small, tmp_path, monkeypatch):
    fake = FakeFit()
    monkeypatch.setattr(S, "fit_job", fake)
    params = UtilityParams(seeds=3, steps=12, workers=1)
    held = Split(small.train.images[:40], np.repeat([8, 9], 20))
    r = S.run_study(small, marked_synthetic(small.train, 100), params, tmp_path, held)
    arms = {j.arm for j in fake.jobs}
    assert arms == {
        "real_weighted", "real_balanced_softmax", "oversampled_weighted",
        "oversampled_balanced_softmax", "synthetic_weighted", "synthetic_balanced_softmax",
        "resnet:oversampled_balanced_softmax", "resnet:synthetic_balanced_softmax",
        "worth_1.5x:oversampled_balanced_softmax", "worth_2x:oversampled_balanced_softmax",
        "worth_3x:oversampled_balanced_softmax",
    }  # fmt: skip
    for arm in arms:  # every arm: the same seeds, the fixed budget
        jobs = [j for j in fake.jobs if j.arm == arm]
        assert [(j.seed_index, j.seed, j.steps) for j in jobs] == [(i, i, 12) for i in range(3)]
    # chosen on validation (balanced softmax, +0.02 there) although it is worse on test
    assert (r["baseline"], r["treatment"]) == (
        "oversampled_balanced_softmax", "synthetic_balanced_softmax")  # fmt: skip
    assert r["verdicts"] == {"cnn": "helps", "resnet": "helps"} and r["verdict"] == "helps"
    d = r["comparisons"]["headline"]["metrics"]["balanced_accuracy"]
    assert d["mean"] == pytest.approx(0.025) and d["per_seed"] == pytest.approx([0.025] * 3)
    # the curve's held-out images: (m - 1) x the real count of the classes that have held-out ones
    counts = np.bincount(small.train.labels, minlength=10)
    worth_jobs = {j.arm: j.held_out_counts for j in fake.jobs if j.arm.startswith("worth")}
    assert worth_jobs["worth_2x:oversampled_balanced_softmax"][8] == min(20, counts[8])
    assert worth_jobs["worth_2x:oversampled_balanced_softmax"][:8] == (0,) * 8
    assert r["worth"]["multiples"] == [1.0, 1.5, 2.0, 3.0] and r["worth"]["rare_classes"] == [8, 9]
    assert r["num_synthetic"] == 100 and r["num_held_out"] == 40 and r["steps"] == 12
    # one architecture's harm blocks; no held-out images: no curve, no curve trainings
    monkeypatch.setattr(S, "fit_job", fake := FakeFit(syn=0.03, resnet_syn=-0.03))
    r = S.run_study(small, marked_synthetic(small.train, 100), params, tmp_path)
    assert r["verdicts"] == {"cnn": "helps", "resnet": "hurts"} and r["verdict"] == "hurts"
    assert r["worth"] is None and not any(j.arm.startswith("worth") for j in fake.jobs)
    with pytest.raises(DataError, match="no synthetic samples"):
        S.run_study(small, Split(small.train.images[:0], small.train.labels[:0]), params, tmp_path)
    assert S.planned_trainings(params, with_worth=True) == 3 * (6 + 2 + 3)


def test_treatments_span_shares_and_weights_and_the_choice_is_recorded(
    small, tmp_path, monkeypatch
):
    """Each loss x share x weight is a treatment; the one best on validation is the choice."""
    fake = FakeFit()
    monkeypatch.setattr(S, "fit_job", fake)
    params = UtilityParams(seeds=3, steps=5, workers=1, losses=["weighted"], oversample_control=False,
                           second_architecture=False, synthetic_shares=[0.5, 1.0],
                           synthetic_weights=[0.25, 1.0])  # fmt: skip
    r = S.run_study(small, marked_synthetic(small.train, 100), params, tmp_path)
    specs = {j.arm: (j.share, j.synthetic_weight) for j in fake.jobs if j.extra == "synthetic"}
    assert specs == {
        "synthetic_weighted-share0.5-weight0.25": (0.5, 0.25),
        "synthetic_weighted-share0.5-weight1": (0.5, 1.0),
        "synthetic_weighted-share1-weight0.25": (1.0, 0.25),
        "synthetic_weighted": (1.0, 1.0),
    }
    # FakeFit scores every synthetic arm alike: the first listed wins the tie on validation
    assert r["treatment"] == "synthetic_weighted-share0.5-weight0.25"
    assert r["choice"] == {"loss": "weighted", "share": 0.5, "synthetic_weight": 0.25,
                           "teacher_mix": 0.0, "synthetic_start": 0.0, "synthetic_stop": 1.0,
                           "real_fill": 0.0}  # fmt: skip
    flat = stage.headline(r, "balanced_accuracy")
    assert (flat["chosen_share"], flat["chosen_synthetic_weight"]) == (0.5, 0.25)
    assert S.planned_trainings(params, with_worth=False) == 3 * (1 + 4)
    assert r["teacher"] is None and not fake.settings.save_teacher
    # 400 digits: about 4 validation images a class, too few to choose among 4 treatments
    assert "close to chance" in r["selection"]["warning"]


def test_a_choice_on_a_thin_validation_split_is_flagged():
    """The long-tail preset's split: 2 validation images of each rare class."""
    labels = np.repeat(np.arange(10), [1000] * 5 + [20] * 5)
    warning = S.thin_validation(labels, 0.1, 0, treatments=4)
    assert "only 2 image(s) of class(es) 5, 6, 7, 8, 9" in warning
    assert "choosing among 4 treatments" in warning
    assert S.thin_validation(labels, 0.1, 0, treatments=1) == ""  # nothing to choose
    assert S.thin_validation(labels, 0.5, 0, treatments=4) == ""  # 10 of each rare class
    assert S.thin_validation(np.repeat(np.arange(10), 1000), 0.1, 0, treatments=4) == ""


def test_soft_target_treatments_are_taught_by_the_chosen_baseline(small, tmp_path, monkeypatch):
    """utility.teacher_mixes: each mix is a treatment (-teacher<m>), trained after the others and
    taught by the baseline chosen on validation (so every baseline saves its softmax)."""
    fake = FakeFit()
    monkeypatch.setattr(S, "fit_job", fake)
    params = UtilityParams(seeds=3, steps=5, workers=1, oversample_control=True,
                           second_architecture=True, teacher_mixes=[0.0, 0.5])  # fmt: skip
    r = S.run_study(small, marked_synthetic(small.train, 100), params, tmp_path)
    soft = [j for j in fake.jobs if j.teacher_mix]
    # FakeFit: balanced softmax wins on validation, oversampling adds 0.005
    assert r["baseline"] == "oversampled_balanced_softmax"
    assert {j.arm for j in soft if j.architecture == "cnn"} == {
        "synthetic_weighted-teacher0.5", "synthetic_balanced_softmax-teacher0.5"}  # fmt: skip
    assert {j.teacher for j in soft} == {r["baseline"]} and {j.teacher_mix for j in soft} == {0.5}
    first_soft = fake.jobs.index(soft[0])
    assert all(not j.teacher_mix for j in fake.jobs[:first_soft] if j.architecture == "cnn")
    assert all(j.teacher == "" for j in fake.jobs if not j.teacher_mix)
    assert fake.settings.save_teacher
    assert r["teacher"] == {"arm": r["baseline"], "temperature": 2.0}
    assert S.spec_of("synthetic_weighted-share0.2-weight1-teacher0.5") == {
        "loss": "weighted", "extra": "synthetic", "share": 0.2, "synthetic_weight": 1.0,
        "teacher_mix": 0.5, "synthetic_start": 0.0, "synthetic_stop": 1.0,
        "real_fill": 0.0}  # fmt: skip
    assert (
        S.treatment_name("weighted", 0.2, 1.0, 0.5)
        == "synthetic_weighted-share0.2-weight1-teacher0.5"
    )
    assert S.planned_trainings(params, with_worth=False) == 3 * (4 + 4 + 2)


def test_soft_targets_mix_the_teachers_softmax_into_the_synthetic_rows(small, tmp_path):
    syn = Split(small.train.images[:40], small.train.labels[:40])
    path = arrays(tmp_path, small, syn)
    teacher = np.full((40, 10), 0.02, np.float32)
    teacher[np.arange(40), (syn.labels + 1) % 10] = 0.82  # the teacher reads each as the next class
    F.teacher_file(path, "real_weighted", 0).parent.mkdir()
    np.save(F.teacher_file(path, "real_weighted", 0), teacher)
    job = F.Job("s", 0, 0, extra="synthetic", teacher_mix=0.5, teacher="real_weighted")
    data = F.training_set(job, F.load_arrays(path), settings(teacher_temperature=1.0), path)
    t = data["extra_targets"]
    np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(t[np.arange(40), data["extra"].labels], 0.5 + 0.5 * 0.02, rtol=1e-5)
    np.testing.assert_allclose(t[np.arange(40), (data["extra"].labels + 1) % 10], 0.5 * 0.82,
                               rtol=1e-5)  # fmt: skip
    plan = F.batches(data["real"], data["extra"], None, 32, 3, 0, data["extra_weight"], t)
    x, y, w = plan[0]
    assert y.shape == (len(x), 10) and np.all(y[:32].max(axis=1) == 1.0)  # real rows one-hot
    assert np.all(y[32:].max(axis=1) < 1.0)
    # without a mix: hard labels, no targets
    hard = F.training_set(
        F.Job("s", 0, 0, extra="synthetic"), F.load_arrays(path), settings(), path
    )
    assert hard["extra_targets"] is None


def test_deferred_treatments_are_named_chosen_and_recorded(small, tmp_path, monkeypatch):
    """utility.synthetic_starts: each start is a treatment (-from<s>) whose jobs carry it; the
    choice and the flat headline record the chosen start for augment.mode auto."""
    fake = FakeFit()
    monkeypatch.setattr(S, "fit_job", fake)
    params = UtilityParams(seeds=3, steps=5, workers=1, losses=["weighted"], oversample_control=False,
                           second_architecture=False, synthetic_starts=[0.5, 0.0])  # fmt: skip
    r = S.run_study(small, marked_synthetic(small.train, 100), params, tmp_path)
    starts = {j.arm: j.synthetic_start for j in fake.jobs if j.extra == "synthetic"}
    assert starts == {"synthetic_weighted-from0.5": 0.5, "synthetic_weighted": 0.0}
    # FakeFit scores both alike: the first listed wins the tie on validation
    assert r["treatment"] == "synthetic_weighted-from0.5"
    assert r["choice"]["synthetic_start"] == 0.5
    assert stage.headline(r, "balanced_accuracy")["chosen_synthetic_start"] == 0.5
    assert S.spec_of("synthetic_balanced_softmax-share0.2-weight1-teacher0.5-from0.25") == {
        "loss": "balanced_softmax", "extra": "synthetic", "share": 0.2, "synthetic_weight": 1.0,
        "teacher_mix": 0.5, "synthetic_start": 0.25, "synthetic_stop": 1.0,
        "real_fill": 0.0}  # fmt: skip
    assert S.planned_trainings(params, with_worth=False) == 3 * (1 + 2)
    with pytest.raises(ValueError, match="less than 1"):
        UtilityParams(synthetic_starts=[1.0])
    with pytest.raises(ValueError, match="each value once"):
        UtilityParams(synthetic_starts=[0.5, 0.5])


def test_filled_and_fine_tuned_treatments_are_named_chosen_and_recorded(
    small, tmp_path, monkeypatch
):
    """utility.real_fills and utility.synthetic_stops: a fill is a treatment (-fill<f>) for each
    share below 1 (at share 1 there is no gap to fill), a stop one (-until<e>) for each start
    below it; the choice and the flat headline record both."""
    fake = FakeFit()
    monkeypatch.setattr(S, "fit_job", fake)
    params = UtilityParams(seeds=3, steps=5, workers=1, losses=["weighted"], oversample_control=False,
                           second_architecture=False, synthetic_shares=[0.5, 1.0],
                           synthetic_starts=[0.5, 0.0], synthetic_stops=[0.5, 1.0],
                           real_fills=[1.0, 0.0])  # fmt: skip
    r = S.run_study(small, marked_synthetic(small.train, 100), params, tmp_path)
    specs = {j.arm: (j.real_fill, j.synthetic_start, j.synthetic_stop)
             for j in fake.jobs if j.extra == "synthetic"}  # fmt: skip
    # fills x (stop 0.5: start 0 only; stop 1: both starts) x shares, share 1 unfilled only
    assert len(specs) == 3 * 2 + 3
    assert specs["synthetic_weighted-share0.5-weight1-until0.5-fill1"] == (1.0, 0.0, 0.5)
    assert specs["synthetic_weighted-share0.5-weight1-from0.5-fill1"] == (1.0, 0.5, 1.0)
    assert specs["synthetic_weighted-until0.5"] == (0.0, 0.0, 0.5)
    assert not any("from0.5-until0.5" in a or ("share" not in a and "fill" in a) for a in specs)
    # FakeFit scores every synthetic arm alike: the first listed wins the tie
    assert r["treatment"] == "synthetic_weighted-share0.5-weight1-until0.5-fill1"
    assert (r["choice"]["real_fill"], r["choice"]["synthetic_stop"]) == (1.0, 0.5)
    flat = stage.headline(r, "balanced_accuracy")
    assert (flat["chosen_real_fill"], flat["chosen_synthetic_stop"]) == (1.0, 0.5)
    assert S.spec_of("synthetic_weighted-share0.2-weight1-fill0.5")["real_fill"] == 0.5
    with pytest.raises(ValueError, match="less than or equal to 1"):
        UtilityParams(real_fills=[1.5])
    with pytest.raises(ValueError, match="greater than 0"):
        UtilityParams(synthetic_stops=[0.0])


def test_a_full_fill_brings_every_class_to_the_controls_counts(small, tmp_path):
    """At fill 1 the extra images per class are the oversampled control's counts: the share's
    synthetic images plus copies of the class's real images (before them); at fill 0.5 half the
    gap. The copies are real images of their own class."""
    syn = marked_synthetic(small.train, 200)
    path = arrays(tmp_path, small, syn)
    a = F.load_arrays(path)
    pool = np.bincount(syn.labels, minlength=10)

    def extra(arm: str, **spec) -> tuple[np.ndarray, np.ndarray]:
        e = F.training_set(F.Job(arm, 0, 0, **spec), a, settings())["extra"]
        marked = e.images[:, 0, 0, 0] == 255
        return np.bincount(e.labels, minlength=10), marked

    control, _ = extra("o", extra="oversample")
    full, marked = extra("s", extra="synthetic", share=0.25, real_fill=1.0)
    np.testing.assert_array_equal(full, control)
    np.testing.assert_array_equal(full, pool)
    n_syn = marked.sum()
    assert 0.15 * len(syn) < n_syn < 0.35 * len(syn) and marked[-n_syn:].all()  # synthetic last
    half, marked = extra("s", extra="synthetic", share=0.25, real_fill=0.5)
    shared = np.bincount(syn.labels[F.share_indices(syn.labels, 0.25, np.random.default_rng([0, 4]))],
                         minlength=10)  # fmt: skip
    np.testing.assert_array_equal(half, shared + np.floor(0.5 * (pool - shared) + 0.5))
    none, _ = extra("s", extra="synthetic", share=0.25)
    np.testing.assert_array_equal(none, shared)


def test_deferral_keeps_the_real_batches_and_adds_the_synthetic_ones_late(small, tmp_path):
    """A deferred arm's batches: step s < start x steps holds the same real images as without
    deferral and no synthetic one; from there on, the same batch as without deferral."""
    syn = marked_synthetic(small.train, 60)
    path = arrays(tmp_path, small, syn)
    now, late = (F.Job("s", 0, 0, extra="synthetic", steps=8, synthetic_start=x) for x in (0, 0.5))
    assert (F.synthetic_window(now, 8), F.synthetic_window(late, 8)) == ((0, 8), (4, 8))
    assert F.synthetic_window(F.Job("o", 0, 0, extra="oversample", synthetic_start=0.5), 8) == (
        0,
        8,
    )
    data = F.training_set(late, F.load_arrays(path), settings())
    assert data["first_synthetic"] == 0
    plain = F.batches(data["real"], data["extra"], None, 32, 8, 0)
    deferred = F.batches(data["real"], data["extra"], None, 32, 8, 0, window=(4, 8))
    for step in range(8):
        x, y, _ = deferred[step]
        x0, y0, _ = plain[step]
        marked = (x[:, 0, 0, 0] > 0.99).sum()  # the synthetic images' top-left pixel
        if step < 4:
            np.testing.assert_array_equal(x, x0[:32])
            np.testing.assert_array_equal(y, y0[:32])
            assert len(x) == 32 and marked == 0
        else:
            np.testing.assert_array_equal(x, x0)
            assert len(x) > 32 and marked == len(x) - 32
    # a deferred training runs end to end (the batch grows mid-fit)
    result = F.fit_job(late, path, settings())
    assert result["steps"] == 8 and result["num_extra"] == 60


def test_fine_tuning_drops_the_synthetic_images_but_keeps_the_real_copies(small, tmp_path):
    """A filled arm with a stop: every step holds its real batch and its real copies; the
    synthetic images only before the stop (the rest fine-tunes on real images)."""
    syn = marked_synthetic(small.train, 200)
    path = arrays(tmp_path, small, syn)
    job = F.Job("s", 0, 0, extra="synthetic", steps=8, share=0.5, synthetic_stop=0.75,
                real_fill=1.0)  # fmt: skip
    assert F.synthetic_window(job, 8) == (0, 6)
    data = F.training_set(job, F.load_arrays(path), settings())
    extra, first = data["extra"], data["first_synthetic"]
    assert 0 < first < len(extra) and not (extra.images[:first, 0, 0, 0] == 255).any()
    assert (extra.images[first:, 0, 0, 0] == 255).all()
    plain = F.batches(data["real"], extra, None, 32, 8, 0)
    tuned = F.batches(data["real"], extra, None, 32, 8, 0, window=(0, 6), windowed_from=first)
    copies_seen = 0
    for step in range(8):
        x, _, _ = tuned[step]
        x0, _, _ = plain[step]
        marked = x[:, 0, 0, 0] > 0.99
        np.testing.assert_array_equal(x[:32], x0[:32])  # the same real batch
        if step < 6:
            np.testing.assert_array_equal(x, x0)
        else:
            assert not marked.any() and len(x) == 32 + (~(x0[32:, 0, 0, 0] > 0.99)).sum()
            copies_seen += len(x) - 32
    assert copies_seen > 0  # the copies stay in the fine-tuning steps
    result = F.fit_job(job, path, settings())
    assert result["steps"] == 8 and result["num_extra"] == len(extra)


def test_a_share_draws_that_part_of_each_class_and_the_weight_scales_its_loss(small, tmp_path):
    labels = np.repeat([0, 1, 2], [10, 4, 1])
    idx = F.share_indices(labels, 0.5, np.random.default_rng(0))
    assert np.bincount(labels[idx], minlength=3).tolist() == [5, 2, 1]  # 0.5 rounds up
    assert len(np.unique(idx)) == len(idx)
    syn = Split(small.train.images[:40], small.train.labels[:40])
    path = arrays(tmp_path, small, syn)
    job = F.Job("s", 0, 0, extra="synthetic", share=0.5, synthetic_weight=0.25)
    data = F.training_set(job, F.load_arrays(path), settings())
    assert len(data["extra"]) == sum(math.floor(n / 2 + 0.5) for n in np.bincount(syn.labels) if n)
    assert set(data["extra_weight"]) == {0.25}
    plan = F.batches(data["real"], data["extra"], {0: 2.0}, 32, 3, 0, data["extra_weight"])
    _, y, w = plan[0]
    n_extra = len(y) - 32
    np.testing.assert_allclose(w[:32], np.where(y[:32] == 0, 2.0, 1.0))
    np.testing.assert_allclose(w[32:], np.where(y[32:] == 0, 2.0, 1.0) * 0.25)
    assert n_extra >= 1


class NoiseFit:
    """No arm has any effect: every score is 0.80 + independent noise (sd 0.01) per arm, seed and
    split, from a generator seeded by the study's index, so validation tells nothing about test."""

    def __init__(self, study: int) -> None:
        self.study = study

    def __call__(self, job, path, settings):
        def score(split: int) -> float:
            key = [self.study, job.seed_index, split, *job.arm.encode()]
            return 0.80 + 0.01 * float(np.random.default_rng(key).standard_normal())

        return {
            "arm": job.arm, "seed": job.seed, "seed_index": job.seed_index,
            "architecture": job.architecture, "steps": job.steps, "best_epoch": None,
            "num_extra": 0, "seconds": 0.0,
            "val": dict.fromkeys(U.METRICS, score(0)), "test": dict.fromkeys(U.METRICS, score(1)),
        }  # fmt: skip


def test_choosing_among_many_treatments_on_validation_keeps_the_verdict_honest(
    small, tmp_path, monkeypatch
):
    """A planted neutral set: 8 treatments, none with an effect. Over 120 simulated studies the
    headline (chosen on validation) averages about 0 and says `helps` about as often as the 2.5%
    a 95% interval allows; had the choice looked at the test split it would be biased upwards."""
    params = UtilityParams(seeds=10, steps=5, workers=1, losses=["weighted", "balanced_softmax"],
                           oversample_control=False, second_architecture=False,
                           synthetic_shares=[0.5, 1.0], synthetic_weights=[0.5, 1.0])  # fmt: skip
    syn = marked_synthetic(small.train, 50)
    headline, helps, peeked = [], 0, []
    for study in range(120):
        monkeypatch.setattr(S, "fit_job", NoiseFit(study))
        r = S.run_study(small, syn, params, tmp_path)
        d = r["comparisons"]["headline"]["metrics"]["balanced_accuracy"]
        headline.append(d["mean"])
        helps += d["verdict"] == "helps"
        test = {a: v["balanced_accuracy"]["mean"] for a, v in r["arms"].items()}
        base = test[r["baseline"]]
        peeked.append(max(test[a] for a in r["treatment_candidates"]) - base)
    # one study's headline has sd 0.01 * sqrt(2 / 10) = 0.0045; the mean of 120: 0.0004
    assert abs(np.mean(headline)) < 4 * 0.0045 / math.sqrt(120)
    assert helps <= 0.06 * 120  # 2.5% expected; 6% is 2.8 binomial sds above
    # the best of 8 on test: E[max of 8 standard normals] = 1.42 sds above, 0.0064
    assert np.mean(peeked) > 0.004


# ---- planted sets, real trainings ------------------------------------------------------------------


def long_tail(digits: Prepared, cap: int) -> tuple[Prepared, Split]:
    """digits with classes 5-9 capped at `cap` training images, and the images the caps removed
    (shuffled): a long tail whose missing images are known."""
    rng = np.random.default_rng(0)
    labels = digits.train.labels
    keep = [np.flatnonzero(labels < 5)]
    removed = []
    for c in range(5, 10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        keep.append(idx[:cap])
        removed.append(idx[cap:])
    keep_idx = np.sort(np.concatenate(keep))
    train = Split(digits.train.images[keep_idx], labels[keep_idx])
    out = rng.permutation(np.concatenate(removed))
    return (
        Prepared(train, digits.test, make_summary(train, digits.test, digits.class_names, "lt")),
        Split(digits.train.images[out], labels[out]),
    )


PLANTED = dict(seeds=3, steps=60, batch_size=32, losses=["weighted"], oversample_control=False,
               second_architecture=False, workers=1)  # fmt: skip


@pytest.fixture(scope="module")
def tail(digits) -> tuple[Prepared, Split]:
    return long_tail(digits, cap=4)


def test_a_planted_harmful_set_hurts_and_the_gate_blocks_it(tail, tmp_path):
    """Synthetic samples that are real images of the rare classes labelled as the next class:
    the verdict is `hurts`, and augment.require_benefit refuses to export."""
    from ganpipe.stages.augment import check_benefit

    real, removed = tail
    rare = np.isin(removed.labels, range(5, 10))
    # all 709 mislabelled images and 6 seeds: the harm per seed is bimodal (about -1 or -11 points
    # with 150 images), and with 150 images and 3 seeds another machine's CI saw -15, -1.3, -1.5:
    # an interval across zero. With these, every seed is below -3 points (measured -3.5 .. -13)
    wrong = Split(removed.images[rare], (removed.labels[rare] + 1) % 10)
    params = UtilityParams(**{**PLANTED, "seeds": 6})
    r = S.run_study(real, wrong, params, tmp_path)
    assert r["verdict"] == "hurts", r["comparisons"]["headline"]["metrics"]["balanced_accuracy"]
    write_json(tmp_path / "utility.json", {"enabled": True, "verdict": r["verdict"],
               "verdict_metric": "balanced_accuracy",
               "headline": stage.headline(r, "balanced_accuracy")})  # fmt: skip
    with pytest.raises(DataError, match="verdict is 'hurts'"):
        check_benefit(tmp_path)
    # augment.mode auto reads the same verdict: it exports the real data alone
    from ganpipe.config import AugmentParams
    from ganpipe.data.prepared import save_prepared
    from ganpipe.io import save_npz
    from ganpipe.stages.augment import augment, auto_choice

    save_prepared(tmp_path / "prepared", real)
    save_npz(tmp_path / "synthetic" / "samples.npz", images=wrong.images, labels=wrong.labels)
    write_json(tmp_path / "synthetic" / "summary.json", {"class_names": real.class_names})
    # no filters: this call has no evaluator (the set is imbalanced, so reject_off_label's auto
    # would be on and need one)
    auto = AugmentParams(mode="auto", memorization_guard=False, reject_off_label=False)
    summary = augment(auto, tmp_path / "prepared", tmp_path / "synthetic", tmp_path / "out",
                      choice=auto_choice(tmp_path))  # fmt: skip
    assert summary["num_synthetic"] == 0 and summary["auto"]["verdict"] == "hurts"


def test_a_teacher_rescues_a_mislabelled_set(tail, tmp_path):
    """The planted harmful set (rare-class images labelled as the next class) with soft targets
    wholly from the teacher (mix 1): the teacher, trained on real images, reads them as their true
    class, so the taught treatment beats the hard one on validation and no longer hurts."""
    real, removed = tail
    rare = np.isin(removed.labels, range(5, 10))
    wrong = Split(removed.images[rare][:150], (removed.labels[rare][:150] + 1) % 10)
    params = UtilityParams(**PLANTED, teacher_mixes=[0.0, 1.0])
    r = S.run_study(real, wrong, params, tmp_path)
    val = {
        arm: r["validation"][arm]["balanced_accuracy"]["mean"] for arm in r["treatment_candidates"]
    }
    # measured here: 0.88 taught vs 0.81 hard (3 seeds); only the order is asserted
    assert val["synthetic_weighted-teacher1"] > val["synthetic_weighted"], val
    assert r["treatment"] == "synthetic_weighted-teacher1" and r["choice"]["teacher_mix"] == 1.0
    assert r["verdict"] != "hurts", r["comparisons"]["headline"]["metrics"]["balanced_accuracy"]


def test_a_planted_helpful_set_helps_and_is_priced_near_its_true_count(tail, tmp_path):
    """Held-out real images passed off as synthetic, 3x as many per rare class as the class has
    (so the rare classes hold 4x their real images): the verdict is `helps`, and the worth curve
    (the same real-only arm with 2x, 4x, 6x the rare images, from other held-out images) prices
    them near 4x."""
    real, removed = tail
    take = np.concatenate([np.flatnonzero(removed.labels == c)[-12:] for c in range(5, 10)])
    rest = np.setdiff1d(np.arange(len(removed)), take)
    planted = Split(removed.images[take], removed.labels[take])
    held = Split(removed.images[rest], removed.labels[rest])
    # 5 seeds: the effect is about +0.2 per seed (+0.215, +0.254, +0.205 alone), but in one suite
    # run on a loaded machine the third came out at +0.02, which left 0 inside a 3-seed interval
    params = UtilityParams(**(PLANTED | {"seeds": 5}), worth_multiples=[2.0, 4.0, 6.0])
    r = S.run_study(real, planted, params, tmp_path, held)
    d = r["comparisons"]["headline"]["metrics"]["balanced_accuracy"]
    assert r["verdict"] == "helps", d
    w = r["worth"]
    # 4x is the truth; 3 seeds on 36 test images per class measure the curve coarsely, so the
    # estimate is held to within one curve step and its interval must cover the truth
    assert 2.0 <= w["worth"] <= 6.0 and w["low"] <= 4.0 <= w["high"], w
