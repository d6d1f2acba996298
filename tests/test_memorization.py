"""The memorization guard and DCR (ganpipe.evaluation.metrics.memorization) on the embedded 5,000 MNIST digits.

Features are a fixed random projection of the pixels: the rule does not care where features come
from, and no Keras is needed here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ganpipe.evaluation.metrics.memorization import (
    fit_guard,
    matched_subsample,
    memorization_report,
    nearest,
    pixel_nearest,
    shifts,
)
from ganpipe.evaluation.plots import nearest_copies_figure

QUANTILE = 0.02
NAMES = [str(i) for i in range(10)]


class Sets:
    """mnist_5k, shuffled with a seed and cut into train (3000), holdout (1000), other (1000)."""

    def __init__(self) -> None:
        from ganpipe.data.sources import load_mnist_5k

        src = load_mnist_5k()
        images = src.images.astype(np.uint8)[..., None]
        labels = src.labels.astype(np.int64)
        idx = np.random.default_rng(0).permutation(len(labels))
        self.train = images[idx[:3000]], labels[idx[:3000]]
        self.holdout = images[idx[3000:4000]], labels[idx[3000:4000]]
        self.other = images[idx[4000:]], labels[idx[4000:]]
        self.projection = np.random.default_rng(1).normal(size=(28 * 28, 32)).astype(np.float32)

    def features(self, images: np.ndarray) -> np.ndarray:
        return (images.reshape(len(images), -1).astype(np.float32) / 255.0) @ self.projection


@pytest.fixture(scope="module")
def sets() -> Sets:
    return Sets()


@pytest.fixture(scope="module")
def guard(sets):
    images, _ = sets.train
    return fit_guard(images, sets.features(images), QUANTILE, seed=0, max_queries=1000)


def shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Moved dy rows down and dx columns right: what falls off the frame is lost, 0 comes in."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = images.shape[1:3]
    return padded[:, 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]


def blank_border(images: np.ndarray) -> np.ndarray:
    """Images whose outermost pixels are all 0: a one-pixel shift loses nothing of them."""
    inner = np.zeros(images.shape[1:3], dtype=bool)
    inner[1:-1, 1:-1] = True
    return images[(images[:, ~inner] == 0).all(axis=(1, 2))]


# ---- nearest neighbours ---------------------------------------------------------------------------


def test_nearest_matches_brute_force_and_excludes_by_index():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 7)).astype(np.float32)
    queries = rng.normal(size=(50, 7))
    dist, idx = nearest(queries, ref)
    full = np.linalg.norm(queries[:, None, :] - ref[None, :, :], axis=2)
    np.testing.assert_array_equal(idx, full.argmin(axis=1))
    np.testing.assert_allclose(dist, full.min(axis=1), rtol=1e-6)

    # leave-one-out: a query excluded from itself finds its nearest other row, but an exact
    # duplicate at another index is still distance 0 (excluded by index, not by value)
    ref[10] = ref[3]
    dist, idx = nearest(ref[:20], ref, exclude=np.arange(20))
    assert (idx != np.arange(20)).all()
    assert dist[3] == 0.0 and idx[3] == 10 and dist[10] == 0.0 and idx[10] == 3
    assert (dist[[i for i in range(20) if i not in (3, 10)]] > 0).all()


def test_nearest_blocks_give_the_same_answer(monkeypatch):
    from ganpipe.evaluation.metrics import memorization

    rng = np.random.default_rng(2)
    ref, queries = rng.normal(size=(70, 5)), rng.normal(size=(33, 5))
    exclude = rng.integers(-1, 70, size=33)
    whole = nearest(queries, ref, exclude)
    monkeypatch.setattr(memorization, "QUERY_BLOCK", 4)
    monkeypatch.setattr(memorization, "REFERENCE_BLOCK", 9)
    blocked = nearest(queries, ref, exclude)
    np.testing.assert_array_equal(whole[1], blocked[1])
    np.testing.assert_allclose(whole[0], blocked[0])
    assert (blocked[1] != exclude).all()


def test_pixel_nearest_undoes_one_pixel_shifts(sets):
    ref = blank_border(sets.train[0])[:500]  # most MNIST digits; a few touch the frame
    assert len(ref) == 500 and len(shifts(1)) == 9
    for dy, dx in shifts(1):
        dist, idx = pixel_nearest(shifted(ref[:40], dy, dx), ref, shift=1)
        np.testing.assert_array_equal(idx, np.arange(40))
        assert (dist == 0.0).all(), (dy, dx)
    # without the shift search a moved copy is far away
    dist, _ = pixel_nearest(shifted(ref[:40], 1, 0), ref, shift=0)
    assert np.median(dist) > 2.0


# ---- the guard ------------------------------------------------------------------------------------


def test_guard_flags_exact_shifted_and_noisy_copies(sets, guard):
    images, _ = sets.train
    rng = np.random.default_rng(3)
    pick = rng.choice(len(images), 200, replace=False)
    copies = images[pick]
    # sigma 0.02 in [0, 1] units = 5.1 grey levels; shifted copies lose what falls off the frame
    noise = rng.normal(0.0, 0.02 * 255, copies.shape)
    noisy = np.clip(np.rint(copies + noise), 0, 255).astype(np.uint8)
    planted = {
        "exact": copies,
        "noisy": noisy,
        **{
            f"shift {dy},{dx}": shifted(copies, dy, dx)
            for dy, dx in shifts(1)
            if (dy, dx) != (0, 0)
        },
    }
    for what, syn in planted.items():
        near = guard.near_copies(syn, sets.features(syn))
        assert near.mask.all(), f"{what}: {near.fraction:.1%} flagged"
        assert near.by_pixels.all(), what
        np.testing.assert_array_equal(near.pixel_index, pick, err_msg=what)
    exact = guard.near_copies(copies, sets.features(copies))
    # Pixels are integers: an exact copy is at distance 0 exactly. Features come out of a network
    # through BLAS, whose kernels may sum a row in another order when it sits in another batch:
    # the same image's features then differ in float32 rounding (3-8e-6 measured on one machine
    # of ours, 0 on another). 1e-3 of the flagging threshold is far above that rounding and far
    # below the distance of any image that is not a copy.
    assert (exact.pixel_distance == 0).all()
    assert (exact.feature_distance <= 1e-3 * guard.feature_threshold).all()


def test_guard_false_positive_rate_on_held_out_images(sets, guard):
    images, _ = sets.holdout
    near = guard.near_copies(images, sets.features(images))
    m, q = len(images), guard.quantile
    # By exchangeability a held-out image is flagged with probability about <= q (q/2 per space,
    # union bound). The observed rate over m images is a binomial proportion: allow three standard
    # errors of sampling slack (and the thresholds are themselves estimated from 1000 queries).
    assert near.fraction <= q + 3 * math.sqrt(q * (1 - q) / m), near.fraction
    assert 0.0 < guard.pixel_threshold < np.median(near.pixel_distance)
    assert 0.0 < guard.feature_threshold < np.median(near.feature_distance)
    assert guard.summary()["num_queries"] == 1000 and guard.summary()["num_train"] == 3000


def test_guard_is_seeded_and_catches_copies_at_threshold_zero():
    # half the training set is duplicated: the leave-one-out quantile is 0, and `<=` still
    # catches exact copies (and only them, in pixels)
    rng = np.random.default_rng(4)
    base = rng.integers(0, 256, size=(100, 6, 6, 1), dtype=np.uint8)
    train = np.concatenate([base, base[:50]])
    guard = fit_guard(train, None, 0.02, seed=7)
    assert guard.pixel_threshold == 0.0 and guard.feature_threshold is None
    assert guard == fit_guard(train, None, 0.02, seed=7)
    near = guard.near_copies(np.concatenate([base[60:70], 255 - base[:10]]))
    assert near.mask.tolist() == [True] * 10 + [False] * 10
    assert near.feature_distance is None


def test_guard_rejects_bad_input(sets):
    images, _ = sets.train
    with pytest.raises(ValueError, match="quantile"):
        fit_guard(images[:10], None, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        fit_guard(images[:1], None, 0.02)
    with pytest.raises(ValueError, match="feature rows"):
        fit_guard(images[:10], np.zeros((9, 3)), 0.02)
    guard = fit_guard(images[:10], np.zeros((10, 3)), 0.02)
    with pytest.raises(ValueError, match="features"):
        guard.near_copies(images[:2])


# ---- DCR ------------------------------------------------------------------------------------------


def report(sets, guard, syn_images, syn_labels):
    return memorization_report(
        syn_images,
        sets.features(syn_images),
        syn_labels,
        train_images=sets.train[0],
        train_features=sets.features(sets.train[0]),
        train_labels=sets.train[1],
        holdout_images=sets.holdout[0],
        holdout_features=sets.features(sets.holdout[0]),
        holdout_labels=sets.holdout[1],
        guard=guard,
        class_names=NAMES,
        seed=0,
    )


def test_dcr_of_a_copier_and_of_fresh_real_images(sets, guard):
    # the DCR train reference is a per-class match of the holdout's 1000; copy only from it, so
    # every copy's source is in the reference (a copier of the whole training set is diluted:
    # see the module docstring)
    ti, _ = matched_subsample(sets.train[1], sets.holdout[1], np.random.default_rng(0))
    assert (
        len(ti) == 1000
        or len(ti) == np.minimum(np.bincount(sets.train[1]), np.bincount(sets.holdout[1])).sum()
    )
    pick = ti[::2]
    copier = report(sets, guard, sets.train[0][pick], sets.train[1][pick])
    assert copier["near_copy_fraction"] == 1.0
    assert copier["closer_to_train_fraction"] > 0.98
    assert copier["pixel_closer_to_train_fraction"] > 0.98
    assert copier["dcr_ratio"] < 0.1 and copier["pixel_dcr_ratio"] < 0.1
    assert copier["dcr_train_median"] == 0.0

    fresh = report(sets, guard, *sets.other)  # real images in neither reference set
    assert fresh["near_copy_fraction"] < 0.05
    for prefix in ("", "pixel_"):
        assert 0.44 < fresh[f"{prefix}closer_to_train_fraction"] < 0.56, prefix
        assert 0.9 < fresh[f"{prefix}dcr_ratio"] < 1.1, prefix
    assert fresh["num_dcr_reference"] == len(ti)
    assert set(fresh["per_class"]) == set(NAMES)
    five = fresh["per_class"]["5"]
    assert five["n"] == int((sets.other[1] == 5).sum())
    assert 0.0 <= five["closer_to_train_fraction"] <= 1.0
    assert fresh["guard"]["quantile"] == QUANTILE


def test_report_handles_an_empty_class(sets, guard):
    images, labels = sets.other
    keep = labels != 3
    out = report(sets, guard, images[keep][:100], labels[keep][:100])
    three = out["per_class"]["3"]
    assert three["n"] == 0 and three["near_copy_fraction"] is None and three["dcr_ratio"] is None


def test_matched_subsample_equal_class_counts():
    a = np.repeat([0, 1, 2], [50, 5, 20])
    b = np.repeat([0, 1, 2, 3], [10, 10, 10, 4])
    ia, ib = matched_subsample(a, b, np.random.default_rng(0))
    assert np.bincount(a[ia]).tolist() == [10, 5, 10]
    assert np.bincount(b[ib], minlength=4).tolist() == [10, 5, 10, 0]
    assert len(np.unique(ia)) == len(ia)


def test_nearest_copies_figure(sets, guard, tmp_path):
    images, _ = sets.train
    syn = np.concatenate([images[:3], sets.other[0][:30]])
    near = guard.near_copies(syn, sets.features(syn))
    path = tmp_path / "nearest_copies.png"
    nearest_copies_figure(path, syn, images, near, n=12)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["nearest_copies.png"]  # no temp file left


def test_class_restricted_pixel_search(sets):
    """With labels, each image's nearest pixel neighbour is the nearest of its own class (indices
    into the whole reference), leave-one-out still excludes by index, and a guard fit with labels
    flags planted copies and about as few held-out images as the unrestricted one promises."""
    images, labels = sets.train
    q_images, q_labels = sets.holdout
    dist, idx = pixel_nearest(q_images[:60], images, 1, None, q_labels[:60], labels)
    assert (labels[idx] == q_labels[:60]).all()
    for c in np.unique(q_labels[:60]):
        sel = np.flatnonzero(q_labels[:60] == c)
        ref = np.flatnonzero(labels == c)
        d, i = pixel_nearest(q_images[:60][sel], images[ref], 1)
        np.testing.assert_allclose(dist[sel], d)
        np.testing.assert_array_equal(idx[sel], ref[i])
    loo = np.arange(20)
    d, i = pixel_nearest(images[:20], images, 1, loo, labels[:20], labels)
    assert (i != loo).all() and (d > 0).any()

    guard = fit_guard(images, sets.features(images), QUANTILE, 0, 1000, train_labels=labels)
    with pytest.raises(ValueError, match="pass the samples' labels"):
        guard.near_copies(images[:5], sets.features(images[:5]))
    copies = shifted(images[:50], 1, 0)
    assert guard.near_copies(copies, sets.features(copies), labels[:50]).mask.all()
    near = guard.near_copies(q_images, sets.features(q_images), q_labels)
    m = len(q_images)
    assert near.fraction <= QUANTILE + 3 * math.sqrt(QUANTILE * (1 - QUANTILE) / m)
