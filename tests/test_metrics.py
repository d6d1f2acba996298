"""Metric functions against closed forms and straightforward references (NumPy only, fast)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg

from ganpipe.evaluation.metrics import (
    METRICS,
    FeatureSet,
    MetricInputs,
    SingularCovarianceWarning,
    classifier_score,
    compute_metrics,
    conditional_accuracy,
    frechet_distance,
    frechet_distance_from_stats,
    kid,
    per_class_table,
)


def sqrtm_reference(a: np.ndarray, b: np.ndarray) -> float:
    """The usual FID code: scipy.linalg.sqrtm of the covariance product."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


# ---- Fréchet distance ---------------------------------------------------------------------------


def test_frechet_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_shifted_mean_is_squared_norm():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 8))
    m = rng.normal(size=8)
    assert frechet_distance(x, x + m) == pytest.approx(m @ m, rel=1e-8)


def test_frechet_closed_form_diagonal_gaussians():
    rng = np.random.default_rng(2)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.2, 3.0, size=d), rng.uniform(0.2, 3.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    got = frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-10)
    # and from samples, within sampling error
    a = mu1 + rng.normal(size=(20000, d)) * np.sqrt(v1)
    b = mu2 + rng.normal(size=(20000, d)) * np.sqrt(v2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.05)


def test_frechet_matches_sqrtm_reference():
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(32, 32))
    a = rng.normal(size=(600, 32)) @ mix
    b = rng.normal(size=(700, 32)) @ mix * 1.3 + 0.5
    assert frechet_distance(a, b) == pytest.approx(sqrtm_reference(a, b), rel=1e-6)


def test_frechet_matches_sqrtm_reference_on_real_features():
    # Real images as features: sklearn's digits, whose pixel covariance is rank-deficient (border
    # pixels are always 0), the case where sqrtm's route is fragile.
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    a, b = x[y < 5], x[y >= 5]
    half = x[::2]
    for p, q in ((a, b), (half, x[1::2])):
        assert frechet_distance(p, q) == pytest.approx(sqrtm_reference(p, q), rel=1e-6)


def test_frechet_float32_inputs_use_float64_statistics():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 20)), rng.normal(1.0, 2.0, size=(300, 20))
    ref = frechet_distance(a, b)
    assert frechet_distance(a.astype(np.float32), b.astype(np.float32)) == pytest.approx(
        ref, rel=1e-5
    )


def test_frechet_singular_covariance_works_and_warns():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(10, 64)), rng.normal(0.5, 1.0, size=(10, 64))
    with pytest.warns(SingularCovarianceWarning):
        fd = frechet_distance(a, b)
    assert np.isfinite(fd) and fd > 0
    with pytest.warns(SingularCovarianceWarning):
        assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_rejects_too_few_samples_and_bad_shapes():
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="inconsistent"):
        frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


# ---- KID ------------------------------------------------------------------------------------------


def mmd2_double_loop(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape

    def k(u, v):
        return (float(np.dot(u, v)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_double_loop_reference():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(7, 3)), rng.normal(0.3, 1.2, size=(7, 3))
    # subset_size == len: every subset is a permutation of the whole set, so each estimate is
    # the full-sample unbiased MMD^2
    mean, std = kid(x, y, subsets=4, subset_size=7)
    assert mean == pytest.approx(mmd2_double_loop(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-10)


def test_kid_same_distribution_near_zero():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(1000, 16)), rng.normal(size=(1000, 16))
    mean, std = kid(a, b, subsets=20, subset_size=200)
    assert abs(mean) < max(3 * std, 1e-3)


def test_kid_shifted_is_positive_and_larger():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    same, _ = kid(a, b, subsets=10, subset_size=200)
    shifted, std = kid(a, b + 1.0, subsets=10, subset_size=200)
    assert shifted > 0 and shifted > same + 5 * std


def test_kid_seeded_is_deterministic():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(300, 8)), rng.normal(0.2, 1.0, size=(300, 8))
    assert kid(a, b, subsets=5, subset_size=50, seed=3) == kid(
        a, b, subsets=5, subset_size=50, seed=3
    )
    assert kid(a, b, subsets=5, subset_size=50, seed=3) != kid(
        a, b, subsets=5, subset_size=50, seed=4
    )


def test_kid_reduces_subset_size_with_warning():
    rng = np.random.default_rng(10)
    a, b = rng.normal(size=(30, 4)), rng.normal(size=(50, 4))
    with pytest.warns(UserWarning, match="using 30"):
        mean, _ = kid(a, b, subsets=3, subset_size=1000)
    assert np.isfinite(mean)
    with pytest.raises(ValueError):
        kid(a[:1], b)


# ---- classifier metrics ---------------------------------------------------------------------------


def test_classifier_score_bounds():
    k = 5
    uniform_onehot = np.eye(k)[np.arange(100) % k]
    assert classifier_score(uniform_onehot) == pytest.approx(k)
    all_same = np.tile(np.eye(k)[2], (50, 1))
    assert classifier_score(all_same) == pytest.approx(1.0)
    soft = np.full((40, k), 1.0 / k)  # unsure about everything: no information either
    assert classifier_score(soft) == pytest.approx(1.0)


def test_conditional_accuracy():
    assert conditional_accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75
    with pytest.raises(ValueError):
        conditional_accuracy(np.array([0, 1]), np.array([0]))


def test_per_class_table():
    rng = np.random.default_rng(11)
    d = 4
    syn_labels = np.array([0] * 20 + [1] * 1)  # class 1: one sample, class 2: none
    syn = rng.normal(size=(21, d))
    pred = syn_labels.copy()
    pred[:5] = 1
    real_labels = np.repeat([0, 1, 2], 30)
    real = rng.normal(size=(90, d))
    rows = per_class_table(syn, syn_labels, pred, real, real_labels, ["a", "b", "c"])
    assert [r["class"] for r in rows] == [0, 1, 2]
    assert [r["class_name"] for r in rows] == ["a", "b", "c"]
    assert [r["n_synthetic"] for r in rows] == [20, 1, 0]
    assert rows[0]["conditional_accuracy"] == 0.75
    assert rows[1]["conditional_accuracy"] == 1.0
    assert np.isnan(rows[2]["conditional_accuracy"])
    assert np.isfinite(rows[0]["classifier_fd"])
    assert np.isnan(rows[1]["classifier_fd"]) and np.isnan(rows[2]["classifier_fd"])
    assert 0.0 <= rows[0]["recall"] <= 1.0 and 0.0 <= rows[0]["coverage"] <= 1.0
    assert np.isnan(rows[1]["recall"]) and np.isnan(rows[2]["coverage"])  # too few samples


def test_per_class_variety_sees_a_class_collapsed_to_one_mode():
    """Class 0's samples are its real images (full variety), class 1's all sit near one of its
    real images (on-label, no variety): per-class recall and coverage tell them apart."""
    rng = np.random.default_rng(13)
    real = rng.normal(size=(80, 4))
    real_labels = np.repeat([0, 1], 40)
    syn = np.concatenate([real[:40], real[40] + 0.01 * rng.normal(size=(40, 4))])
    rows = per_class_table(syn, real_labels, real_labels, real, real_labels, ["a", "b"])
    assert rows[0]["recall"] == 1.0 and rows[0]["coverage"] == 1.0
    assert rows[1]["recall"] < 0.3 and rows[1]["coverage"] < 0.3
    assert rows[1]["conditional_accuracy"] == 1.0  # on-label all the same


def test_per_class_table_warns_once_for_small_classes():
    rng = np.random.default_rng(12)
    labels = np.repeat([0, 1, 2], 5)
    f = rng.normal(size=(15, 8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        per_class_table(f, labels, labels, f, labels, ["a", "b", "c"])
    singular = [w for w in caught if issubclass(w.category, SingularCovarianceWarning)]
    assert len(singular) == 1 and "a, b, c" in str(singular[0].message)


# ---- registry -------------------------------------------------------------------------------------


def _fs(rng: np.random.Generator, n: int, shift: float = 0.0, k: int = 3) -> FeatureSet:
    labels = np.arange(n) % k
    probs = np.eye(k)[labels] * 0.9 + 0.1 / k
    return FeatureSet(rng.normal(shift, 1.0, size=(n, 6)).astype(np.float32), probs, labels)


def test_registry_computes_headline_metrics():
    rng = np.random.default_rng(13)
    inputs = MetricInputs(
        synthetic=_fs(rng, 120, 0.5), real=_fs(rng, 150), real_test=_fs(rng, 90),
        kid_subsets=5, kid_subset_size=50,
    )  # fmt: skip
    out = compute_metrics(inputs)
    for key in (
        "classifier_fd",
        "classifier_fd_floor",
        "kid_mean",
        "kid_std",
        "conditional_accuracy",
        "classifier_score",
        "evaluator_test_accuracy",
    ):
        assert np.isfinite(out[key]), key
    assert out["conditional_accuracy"] == 1.0
    assert out["classifier_fd"] > out["classifier_fd_floor"]
    assert set(compute_metrics(inputs, ["kid"])) == {"kid_mean", "kid_std"}
    with pytest.raises(ValueError, match="unknown metrics"):
        compute_metrics(inputs, ["nope"])


def test_registry_plugs_in_new_metric(monkeypatch):
    monkeypatch.setattr("ganpipe.evaluation.metrics.METRICS", dict(METRICS))
    import ganpipe.evaluation.metrics as m

    @m.register_metric("n_real")
    def _n_real(inputs: MetricInputs) -> dict[str, float]:
        return {"n_real": float(len(inputs.real))}

    rng = np.random.default_rng(14)
    inputs = MetricInputs(
        _fs(rng, 30), _fs(rng, 40), _fs(rng, 20), kid_subsets=2, kid_subset_size=10
    )
    assert m.compute_metrics(inputs, ["n_real"]) == {"n_real": 40.0}
    with pytest.raises(ValueError, match="already registered"):
        m.register_metric("n_real")(_n_real)
