"""Kernel (Inception / classifier) distance: unbiased MMD^2 with a cubic polynomial kernel.

k(x, y) = (x . y / d + 1)^3, averaged over seeded random subsets as in Binkowski et al. (2018) and
StyleGAN2-ADA's metrics/kernel_inception_distance.py. Unlike the Fréchet distance it is unbiased,
so small sample sizes compare fairly; the estimate can be slightly negative when the sets match.
"""

from __future__ import annotations

import warnings

import numpy as np


def _kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between two equally sized samples under the cubic polynomial kernel."""
    m = x.shape[0]
    kxx, kyy, kxy = _kernel(x, x), _kernel(y, y), _kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.sum() / (m * m))


def kid(
    a: np.ndarray,
    b: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over `subsets` random subsets of `subset_size` per set.

    Each subset draws without replacement from `a` and from `b` (np.random.default_rng(seed)); std
    is the spread of the per-subset estimates (torch-fidelity's kid_std), not a standard error.
    `subset_size` is reduced to min(len(a), len(b)) with a warning when there are fewer samples.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be N x D with the same D, got {a.shape} and {b.shape}")
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    m = min(len(a), len(b))
    if m < 2:
        raise ValueError(f"need at least 2 samples in each set, got {len(a)} and {len(b)}")
    if subset_size > m:
        warnings.warn(
            f"kid: subset_size {subset_size} > available samples ({len(a)}, {len(b)}); using {m}",
            stacklevel=2,
        )
    else:
        m = subset_size
    if m < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    rng = np.random.default_rng(seed)
    estimates = np.empty(subsets, dtype=np.float64)
    for i in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        estimates[i] = mmd2_unbiased(x, y)
    return float(estimates.mean()), float(estimates.std())
