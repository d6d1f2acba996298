"""Per-class quotas, stratified draws and the imbalance rule, shared by generate, evaluate, the
evaluator and the utility stage."""

from __future__ import annotations

import numpy as np

# Classes whose largest count is more than this many times the smallest (of the classes present)
# are imbalanced: the evaluator and the utility stage's classifiers then weight their loss.
IMBALANCE_RATIO = 1.5


def is_imbalanced(counts: np.ndarray) -> bool:
    """Per-class counts whose largest exceeds IMBALANCE_RATIO x the smallest nonzero one."""
    present = np.asarray(counts)[np.asarray(counts) > 0]
    return bool(present.max() > IMBALANCE_RATIO * present.min())


# A long tail: the largest class at least this many times the smallest (an empty class counts as
# 0). Training then turns the long-tail recipe on (train.class_balance/diffaugment: auto) and
# augment.mode auto fills the small classes; the measurements behind the value are in
# ganpipe/gan/training/imbalance.py.
LONG_TAIL_RATIO = 4.0


def class_ratio(counts: np.ndarray) -> float:
    """The largest per-class count over the smallest (inf when a class has none)."""
    counts = np.asarray(counts)
    lo = int(counts.min())
    return int(counts.max()) / lo if lo else float("inf")


def is_long_tailed(counts: np.ndarray) -> bool:
    return class_ratio(counts) >= LONG_TAIL_RATIO


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """int64 quotas proportional to `weights` that add up to exactly `total`: floor(share x total),
    the remainder going one each to the largest fractional parts (ties to the lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * total
    quota = np.floor(exact).astype(np.int64)
    left = total - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:left]] += 1
    return quota


def stratified_subsample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `n` samples (all if fewer) keeping each class's share of `labels`.

    Quotas by `largest_remainder`; within a class the samples are drawn uniformly without
    replacement.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = largest_remainder(counts, n)
    picked = [
        rng.choice(np.flatnonzero(labels == c), q, replace=False)
        for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked))
