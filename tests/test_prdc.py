"""Precision/recall and density/coverage against limiting cases and a full-matrix reference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from ganpipe.evaluation.metrics.prdc import density_coverage, precision_recall


def reference_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Straightforward version of both papers' code: full Euclidean distance matrices."""
    rr, ff, rf = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    r_real = np.sort(rr, axis=1)[:, k]  # column 0 is the sample itself
    r_fake = np.sort(ff, axis=1)[:, k]
    return {
        # StyleGAN2-ADA: probe inside when dist <= kth radius of some manifold sample
        "precision": float((rf <= r_real[:, None]).any(axis=0).mean()),
        "recall": float((rf.T <= r_fake[:, None]).any(axis=0).mean()),
        # clovaai prdc: strict comparison against the real radii
        "density": float((rf < r_real[:, None]).sum(axis=0).mean() / k),
        "coverage": float((rf.min(axis=1) < r_real).mean()),
    }


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def test_identical_sets_are_perfect(rng):
    x = rng.normal(size=(300, 16))
    p, r = precision_recall(x, x.copy(), k=3, batch_size=64)
    d, c = density_coverage(x, x.copy(), k=5, batch_size=64)
    assert (p, r, c) == (1.0, 1.0, 1.0)
    assert d == pytest.approx(1.0, abs=0.02)


def test_disjoint_far_apart_sets_score_zero(rng):
    real = rng.normal(size=(200, 8))
    fake = rng.normal(size=(150, 8)) + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0)
    assert density_coverage(real, fake) == (0.0, 0.0)


def test_mode_collapse_high_precision_low_recall(rng):
    # thresholds hold with margin over 30 seeds, not only this one
    real = rng.normal(size=(1000, 4))
    fake = 0.2 * rng.normal(size=(1000, 4))  # tight cluster at the centre of the real data
    p, r = precision_recall(real, fake)
    d, c = density_coverage(real, fake)
    assert p > 0.85
    assert r < 0.1
    assert d > 0.5  # each fake still sits in about k real balls: density stays near 1
    assert c < 0.25


def test_too_wide_fake_low_precision_high_recall(rng):
    real = rng.normal(size=(1000, 4))
    fake = 8.0 * rng.normal(size=(1000, 4))
    p, r = precision_recall(real, fake)
    d, c = density_coverage(real, fake)
    assert p < 0.1
    assert r > 0.85
    assert d < 0.1
    assert c < 0.2  # unlike recall, coverage is not fooled by a few huge fake balls


@pytest.mark.parametrize("batch_size", [1, 37, 64, 200, 5000])
def test_matches_full_matrix_reference(rng, batch_size):
    real = rng.normal(size=(200, 16))
    fake = 1.2 * rng.normal(size=(170, 16)) + 0.3  # overlapping but different: non-trivial values
    for k in (1, 3, 5):
        ref = reference_prdc(real, fake, k)
        assert 0.0 < ref["precision"] < 1.0 and 0.0 < ref["recall"] < 1.0
        assert 0.0 < ref["coverage"] < 1.0
        p, r = precision_recall(real, fake, k=k, batch_size=batch_size)
        d, c = density_coverage(real, fake, k=k, batch_size=batch_size)
        assert p == pytest.approx(ref["precision"], abs=1e-12)
        assert r == pytest.approx(ref["recall"], abs=1e-12)
        assert d == pytest.approx(ref["density"], abs=1e-12)
        assert c == pytest.approx(ref["coverage"], abs=1e-12)


def test_float32_and_large_offset_inputs_match_reference(rng):
    # a common offset makes ||a||^2 + ||b||^2 - 2ab cancel heavily; float64 keeps it exact enough
    real = (rng.normal(size=(150, 32)) + 50.0).astype(np.float32)
    fake = (rng.normal(size=(120, 32)) * 1.3 + 50.2).astype(np.float32)
    ref = reference_prdc(real.astype(np.float64), fake.astype(np.float64), 3)
    assert precision_recall(real, fake, k=3, batch_size=50) == pytest.approx(
        (ref["precision"], ref["recall"]), abs=1e-12
    )
    assert density_coverage(real, fake, k=3, batch_size=50) == pytest.approx(
        (ref["density"], ref["coverage"]), abs=1e-12
    )


def test_ties_and_duplicates_match_reference(rng):
    # integer grid points: many exact ties with the radii and duplicate samples (distance 0)
    real = rng.integers(0, 3, size=(300, 4)).astype(np.float64)
    fake = rng.integers(0, 4, size=(250, 4)).astype(np.float64)
    for k in (3, 5):
        ref = reference_prdc(real, fake, k)
        got = (
            *precision_recall(real, fake, k=k, batch_size=70),
            *density_coverage(real, fake, k=k, batch_size=70),
        )
        assert got == pytest.approx(tuple(ref.values()), abs=1e-12)


def test_returns_python_floats(rng):
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(25, 3))
    assert all(type(v) is float for v in (*precision_recall(x, y), *density_coverage(x, y)))


@pytest.mark.parametrize("fn", [precision_recall, density_coverage])
def test_too_few_samples_raises(rng, fn):
    ok = rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match="real set has 3 samples; need at least k \\+ 1 = 4"):
        fn(ok[:3], ok, k=3)
    with pytest.raises(ValueError, match="fake set has 3 samples"):
        fn(ok, ok[:3], k=3)
    fn(ok[:4], ok[:4], k=3)  # exactly k + 1 is enough


@pytest.mark.parametrize("fn", [precision_recall, density_coverage])
def test_bad_shapes_and_arguments_raise(rng, fn):
    a = rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match="dimension mismatch: real has D=4, fake has D=5"):
        fn(a, rng.normal(size=(10, 5)))
    with pytest.raises(ValueError, match="2-D"):
        fn(a[:, 0], a)
    with pytest.raises(ValueError, match="2-D"):
        fn(a, a[None])
    with pytest.raises(ValueError, match="k must be"):
        fn(a, a, k=0)
    with pytest.raises(ValueError, match="batch_size must be"):
        fn(a, a, batch_size=0)
    bad = a.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        fn(a, bad)
