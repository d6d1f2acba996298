"""Downstream utility: CAS, real-data accuracy and augmentation uplift, on sklearn's 8x8 digits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ganpipe import utility
from ganpipe.config import EvaluateParams
from ganpipe.data.prepared import Prepared, Split
from ganpipe.errors import DataError
from ganpipe.utility import (
    TrainResult,
    batch_indices,
    budget_steps,
    downstream_utility,
    fraction_tag,
    train_and_test,
)
from tests.helpers import digits_prepared


@pytest.fixture(scope="module")
def digits() -> Prepared:
    return digits_prepared()


def noisy_copy(split: Split, n: int, seed: int = 1) -> Split:
    """Stand-in synthetic samples: real training digits with pixel noise, labels kept."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(split), n, replace=n > len(split))
    noise = rng.normal(0, 12, size=split.images[idx].shape)
    return Split(np.clip(split.images[idx] + noise, 0, 255).astype(np.uint8), split.labels[idx])


def test_fraction_tags_and_budget():
    assert [fraction_tag(f) for f in (0.01, 0.1, 0.005, 0.125, 1.0)] == [
        "1pct",
        "10pct",
        "0p5pct",
        "12p5pct",
        "100pct",
    ]
    assert budget_steps(1000, 3, 128) == 3 * 8
    assert budget_steps(1, 2, 128) == 2


def test_batch_indices_cover_each_pass_and_repeat_small_sets():
    rng = np.random.default_rng(0)
    batches = list(batch_indices(10, 5, 4, rng))
    assert len(batches) == 5 and all(len(b) == 4 for b in batches)
    flat = np.concatenate(batches)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    small = list(batch_indices(3, 2, 8, np.random.default_rng(1)))  # set smaller than a batch
    assert [len(b) for b in small] == [8, 8] and set(np.concatenate(small)) == {0, 1, 2}
    with pytest.raises(ValueError, match="empty"):
        next(batch_indices(0, 1, 4, rng))


def test_train_and_test_runs_exactly_the_budget(digits):
    result = train_and_test(digits.train, digits.test, (8, 8, 1), 10, 7, 32, seed=0)
    assert result.steps == 7 and 0.0 <= result.test_accuracy <= 1.0
    # a tiny training set still gets the full budget (its batches repeat samples)
    tiny = Split(digits.train.images[:5], digits.train.labels[:5])
    assert train_and_test(tiny, digits.test, (8, 8, 1), 10, 3, 32, seed=0).steps == 3


def test_downstream_utility_keys_ranges_and_same_budget(digits):
    params = EvaluateParams(
        classifier_batch_size=64,
        utility=True,
        utility_epochs=2,
        uplift_fractions=(0.05, 0.2),
        uplift_seeds=2,
    )
    synthetic = noisy_copy(digits.train, 600)
    result = downstream_utility(digits, synthetic, params)
    m = result.metrics
    assert 0.5 < m["real_accuracy"] <= 1.0  # 40 steps are enough to learn 8x8 digits somewhat
    assert 0.3 < m["cas_accuracy"] <= 1.0  # near-copies of real digits carry the classes
    n_train = len(digits.train)
    for frac, tag in ((0.05, "uplift_5pct"), (0.2, "uplift_20pct")):
        for arm in ("real", "aug"):
            assert 0.0 <= m[f"{tag}_{arm}_mean"] <= 1.0
            assert 0.0 <= m[f"{tag}_{arm}_std"] <= 0.5
        assert m[f"{tag}_delta"] == pytest.approx(m[f"{tag}_aug_mean"] - m[f"{tag}_real_mean"])
        assert m[f"{tag}_num_real"] == round(frac * n_train)
        # same budget: both arms ran the same steps, every seed, as the budget says
        expected = budget_steps(m[f"{tag}_num_real"] + len(synthetic), 2, 64)
        assert result.steps[f"{tag}_real"] == result.steps[f"{tag}_aug"] == [expected, expected]
    assert result.steps["cas"] == result.steps["real"] == [budget_steps(n_train, 2, 64)]
    assert all(math.isfinite(v) for v in m.values())
    assert len(m) == 2 + 2 * 7


def test_downstream_utility_is_seeded(digits):
    params = EvaluateParams(
        classifier_batch_size=64, utility_epochs=1, uplift_fractions=(0.05,), uplift_seeds=1
    )
    synthetic = noisy_copy(digits.train, 200)
    a = downstream_utility(digits, synthetic, params).metrics
    b = downstream_utility(digits, synthetic, params).metrics
    assert a == pytest.approx(b, abs=0.02)  # same seeds; CPU kernels may differ in the last bits
    assert a["uplift_5pct_real_std"] == 0.0  # one seed: no spread


def test_uplift_adds_only_accepted_samples_at_the_ratio(digits, monkeypatch):
    """With an accept mask and uplift_synthetic_ratio, each augmented arm gets round(ratio x the
    subset's count) accepted samples per class, none rejected; both arms keep the same budget."""
    seen: list[tuple[Split, int]] = []

    def spy(train, test, shape, k, steps, batch_size, seed):  # records instead of training
        seen.append((train, steps))
        return TrainResult(0.5, steps)

    monkeypatch.setattr(utility, "train_and_test", spy)
    synthetic = noisy_copy(digits.train, 800)
    accept = np.random.default_rng(3).random(len(synthetic)) < 0.6
    synthetic.images[~accept, 0, 0, 0] = 255  # digits' corner pixel is always 0: marks the rejected
    params = EvaluateParams(
        classifier_batch_size=64,
        utility_epochs=1,
        uplift_fractions=(0.2,),
        uplift_seeds=2,
        uplift_synthetic_ratio=0.5,
    )
    m = downstream_utility(digits, synthetic, params, accept).metrics

    assert m["synthetic_accept_rate"] == pytest.approx(accept.mean())
    assert (digits.train.images[:, 0, 0, 0] == 0).all()
    cas_train = seen[0][0]
    assert len(cas_train) == len(synthetic)  # CAS scores every sample, rejected ones too
    uplift = seen[2:]
    assert len(uplift) == 4  # (real, aug) x 2 seeds
    for (real, real_steps), (aug, aug_steps) in zip(uplift[::2], uplift[1::2], strict=True):
        counts = np.bincount(real.labels, minlength=10)
        added = Split(aug.images[len(real) :], aug.labels[len(real) :])
        assert (
            np.bincount(added.labels, minlength=10).tolist()
            == np.floor(0.5 * counts + 0.5).astype(int).tolist()
        )
        assert (added.images[:, 0, 0, 0] != 255).all()  # no rejected sample added
        assert real_steps == aug_steps == budget_steps(len(aug), 1, 64)
    assert m["uplift_20pct_num_synthetic"] == len(uplift[1][0]) - len(uplift[0][0])

    params = params.model_copy(update={"uplift_synthetic_ratio": 20.0})
    with pytest.raises(DataError, match=r"needs \d+, has \d+.*uplift_synthetic_ratio=20.0"):
        downstream_utility(digits, synthetic, params, accept)
    with pytest.raises(DataError, match="kept no synthetic sample"):
        downstream_utility(digits, synthetic, params, np.zeros(len(synthetic), bool))
