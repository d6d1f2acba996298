"""k-NN manifold metrics: improved precision & recall, and density & coverage.

Precision/recall follow Kynkäänniemi et al. (2019) and StyleGAN2-ADA's metrics/precision_recall.py:
each set's manifold is the union of balls around its samples, the radius being the distance to the
k-th nearest neighbour in the same set (itself excluded); a probe is inside when it lies within
(<=) at least one ball. Density/coverage follow Naeem et al. (2020) and clovaai's `prdc` package,
which use the real balls only and a strict (<) comparison.

All four are higher-is-better. Precision, recall and coverage lie in [0, 1] with 1.0 ideal; density
is about 1.0 when the sets come from the same distribution and can exceed 1 when fakes concentrate
where many real balls overlap.

Distances are never held as a full N x M matrix: squared Euclidean distances are computed in row
blocks of `batch_size` (||a||^2 + ||b||^2 - 2 a.b in float64, clipped at 0) into one reused buffer,
and only per-sample reductions (k-th NN radii, hit flags, counts) are kept. Peak memory is about
batch_size x max(N, M) x 8 bytes plus the inputs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def _validate(
    real: np.ndarray, fake: np.ndarray, k: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2:
        raise ValueError(
            f"feature sets must be 2-D (N x D) arrays, got shapes {real.shape} and {fake.shape}"
        )
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"feature dimension mismatch: real has D={real.shape[1]}, fake has D={fake.shape[1]}"
        )
    if real.shape[1] < 1:
        raise ValueError("feature dimension D must be >= 1")
    for name, x in (("real", real), ("fake", fake)):
        if len(x) < k + 1:
            raise ValueError(
                f"{name} set has {len(x)} samples; need at least k + 1 = {k + 1} for k={k} "
                "nearest neighbours (excluding the sample itself)"
            )
        if not np.isfinite(x).all():
            raise ValueError(f"{name} features contain NaN or inf")
    return real, fake


def _sq_dist_blocks(
    a: np.ndarray, b: np.ndarray, batch_size: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (start, stop, D) with D[i, j] = ||a[start + i] - b[j]||^2, clipped at 0.

    One matmul per block gives the whole expansion ||a||^2 + ||b||^2 - 2 a.b: a is augmented with
    [||a||^2, 1] and b with [1, ||b||^2] (and scaled by -2). D is a view of one reused buffer: the
    next block overwrites it, and callers may modify it in place (e.g. partition it).
    """
    a_aug = np.empty((len(a), a.shape[1] + 2), dtype=np.float64)
    a_aug[:, :-2] = a
    a_aug[:, -2] = np.einsum("ij,ij->i", a, a)
    a_aug[:, -1] = 1.0
    b_aug = np.empty((len(b), b.shape[1] + 2), dtype=np.float64)
    np.multiply(b, -2.0, out=b_aug[:, :-2])
    b_aug[:, -2] = 1.0
    b_aug[:, -1] = np.einsum("ij,ij->i", b, b)
    rows = min(batch_size, len(a))
    buf = np.empty((rows, len(b)), dtype=np.float64)
    bt = b_aug.T
    for start in range(0, len(a), rows):
        stop = min(start + rows, len(a))
        d2 = buf[: stop - start]
        np.matmul(a_aug[start:stop], bt, out=d2)
        np.maximum(d2, 0.0, out=d2)
        yield start, stop, d2


def _kth_nn_sq_radii(x: np.ndarray, k: int, batch_size: int) -> np.ndarray:
    """Squared distance from each row of x to its k-th nearest other row of x."""
    radii = np.empty(len(x), dtype=np.float64)
    for start, stop, d2 in _sq_dist_blocks(x, x, batch_size):
        idx = np.arange(stop - start)
        d2[idx, start + idx] = 0.0  # exact self-distance, so the self-match is the 0-th smallest
        d2.partition(k, axis=1)  # in place: column k is the (k+1)-th smallest, i.e. k-th NN
        radii[start:stop] = d2[:, k]
    return radii


def inside_manifold(
    real: np.ndarray, fake: np.ndarray, k: int = 3, batch_size: int = 2048
) -> np.ndarray:
    """Bool per fake sample: inside the real k-NN manifold (within some real sample's distance to
    its k-th nearest real neighbour). Its mean is the precision; the augment stage's fidelity
    filter keeps the True ones."""
    real, fake = _validate(real, fake, k, batch_size)
    r_real = _kth_nn_sq_radii(real, k, batch_size)
    inside = np.zeros(len(fake), dtype=bool)
    for start, stop, d2 in _sq_dist_blocks(real, fake, batch_size):
        inside |= (d2 <= r_real[start:stop, None]).any(axis=0)
    return inside


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = 3, batch_size: int = 2048
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of `fake` against `real`.

    precision: fraction of fake samples inside the real k-NN manifold (fidelity).
    recall: fraction of real samples inside the fake k-NN manifold (diversity).
    Both in [0, 1], higher is better, 1.0 ideal. `real` and `fake` are N x D and M x D feature
    arrays with N, M >= k + 1; `batch_size` rows of distances are computed at a time.
    """
    real, fake = _validate(real, fake, k, batch_size)
    r_real = _kth_nn_sq_radii(real, k, batch_size)
    r_fake = _kth_nn_sq_radii(fake, k, batch_size)
    fake_in_real = np.zeros(len(fake), dtype=bool)
    real_in_fake = np.zeros(len(real), dtype=bool)
    for start, stop, d2 in _sq_dist_blocks(real, fake, batch_size):
        # rows: real samples of this block; columns: all fake samples
        fake_in_real |= (d2 <= r_real[start:stop, None]).any(axis=0)
        real_in_fake[start:stop] = (d2 <= r_fake[None, :]).any(axis=1)
    return float(fake_in_real.mean()), float(real_in_fake.mean())


def density_coverage(
    real: np.ndarray, fake: np.ndarray, k: int = 5, batch_size: int = 2048
) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020) of `fake` against `real`.

    density: (1 / (k M)) sum_j sum_i 1[fake_j in B(real_i, r_i)], with r_i the distance from real_i
    to its k-th nearest real neighbour; higher is better, about 1.0 for matching distributions, and
    it can exceed 1 when fakes cluster in dense real regions.
    coverage: fraction of real samples whose ball contains at least one fake sample; in [0, 1],
    higher is better, 1.0 ideal. Inputs are N x D and M x D with N, M >= k + 1.
    """
    real, fake = _validate(real, fake, k, batch_size)
    r_real = _kth_nn_sq_radii(real, k, batch_size)
    hits = 0
    covered = np.zeros(len(real), dtype=bool)
    for start, stop, d2 in _sq_dist_blocks(real, fake, batch_size):
        inside = d2 < r_real[start:stop, None]
        hits += int(np.count_nonzero(inside))
        covered[start:stop] = inside.any(axis=1)
    density = hits / (k * len(fake))
    return float(density), float(covered.mean())
