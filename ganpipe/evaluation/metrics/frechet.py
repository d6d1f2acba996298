"""Fréchet distance between two feature sets, each summarised as a Gaussian (FID's formula).

FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2). With Inception pool3 features this is
FID; over our domain classifier's features it is a "Fréchet classifier distance" (TF-GAN's name).

tr sqrt(S1 S2) is computed without `scipy.linalg.sqrtm`: S1 S2 is similar to the symmetric PSD
matrix sqrt(S1) S2 sqrt(S1), so tr sqrt(S1 S2) = sum_i sqrt(lambda_i(sqrt(S1) S2 sqrt(S1))), two
symmetric eigendecompositions. That is faster, needs no complex arithmetic, and stays defined when
a covariance is singular (fewer samples than feature dimensions).
"""

from __future__ import annotations

import warnings

import numpy as np


class SingularCovarianceWarning(UserWarning):
    """A covariance estimate is rank-deficient (fewer samples than feature dimensions)."""


STATS_BLOCK = 4096  # rows per float64 block: memory stays D x D plus one block, whatever N is


def feature_stats(features: np.ndarray, block: int = STATS_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance in float64 of an N x D feature array, in row blocks.

    Fewer than 2 samples: ValueError. N <= D: a SingularCovarianceWarning (the covariance has rank
    at most N-1; the distance is still defined but noisy and biased upwards).
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features must be N x D, got shape {x.shape}")
    n, d = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {n}")
    if n <= d:
        warnings.warn(
            f"{n} samples for {d} feature dimensions: the covariance is singular; "
            "the Fréchet distance is defined but noisy and biased",
            SingularCovarianceWarning,
            stacklevel=3,
        )
    mu = np.zeros(d, dtype=np.float64)
    for start in range(0, n, block):
        mu += x[start : start + block].sum(axis=0, dtype=np.float64)
    mu /= n
    sigma = np.zeros((d, d), dtype=np.float64)
    for start in range(0, n, block):
        c = x[start : start + block].astype(np.float64) - mu
        sigma += c.T @ c  # a.T @ a: NumPy's symmetric rank-k (syrk) path
    sigma /= n - 1
    return mu, sigma


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(S1 S2) for symmetric PSD S1, S2.

    With S1 = V diag(w) V^T (eigh; tiny negative w clipped to 0), sqrt(S1) = V diag(r) V^T with
    r = sqrt(w), and sqrt(S1) S2 sqrt(S1) is orthogonally similar to diag(r) (V^T S2 V) diag(r):
    same eigenvalues, one matrix product fewer. tr sqrt(S1 S2) is the sum of their square roots.
    """
    w, v = np.linalg.eigh(sigma1)
    r = np.sqrt(np.clip(w, 0.0, None))
    m = v.T @ sigma2 @ v
    m = (m + m.T) / 2.0 * r[:, None] * r[None, :]  # exact symmetry for eigvalsh
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(m), 0.0, None)).sum())


def frechet_distance_from_stats(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); >= 0 (rounding is clipped)."""
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"inconsistent statistics: mu1 {mu1.shape}, sigma1 {s1.shape}, "
            f"mu2 {mu2.shape}, sigma2 {s2.shape}"
        )
    s1 = (s1 + s1.T) / 2.0
    s2 = (s2 + s2.T) / 2.0
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2)
    return max(float(fd), 0.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between feature sets `a` (N x D) and `b` (M x D), statistics in float64."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be N x D with the same D, got {a.shape} and {b.shape}")
    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    return frechet_distance_from_stats(mu1, s1, mu2, s2)
