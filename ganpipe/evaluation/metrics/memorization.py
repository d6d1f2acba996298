"""Memorization: near-copies of training images, and distances to closest records (DCR).

A generator that memorizes hands back its training images, perhaps moved by a pixel or with a
little noise. Such a sample adds nothing a real image does not, and it leaks the training set.

The near-copy rule (`fit_guard`, `Guard.near_copies`). A synthetic sample is a near-copy of a
training image when it is closer to its nearest training image than real data itself is:

* Two spaces. Pixels: the L2 distance between images as floats in [0, 1], minimised over every
  integer shift of the sample by up to `shift` (default 1) pixel in each direction (9 shifts; the
  pixels shifted in are background, 0), so a copy moved by one pixel is still at distance ~0.
  Given labels (the augment and evaluate stages pass them), a sample is compared in pixels with
  the training images of its own class only: 1/k of the work for k classes, which is what makes
  the 9-shift search affordable on full MNIST. Features: the plain L2 distance between the
  evaluator's (domain classifier's) feature vectors, against every training image (so a copy
  drawn under another label is still caught).
* A threshold per space: the (quantile / 2)-quantile of real training images' distance to their
  nearest *other* training image (leave-one-out: the query is excluded by its index, so an exact
  duplicate elsewhere in the training set legitimately counts as distance 0), measured for a
  seeded subsample of at most `max_queries` (2000) training images against all of them.
* A sample is a near-copy when its distance is at most (`<=`, so exact copies are caught even
  when a threshold is 0) the threshold in pixels OR in features.

Why this threshold: a held-out real image, drawn from the same distribution as the training
images, is exchangeable with a training image looking for its nearest other training image. So it
falls at or below the (quantile/2)-quantile of those leave-one-out distances with probability
about quantile/2 per space, and is flagged with probability at most about `quantile` (union bound
over the two spaces). `quantile` is `augment.memorization_quantile` (default 0.02): the share of
genuinely new real images the guard would wrongly call copies.

DCR (`memorization_report`). For each synthetic sample: its distance to the nearest training image
and to the nearest held-out image (same spaces as above), the training set subsampled (seeded, per
class) to the held-out set's size and class counts, so that both reference sets are alike. For a
generator that does not memorize, train and held-out images are equally far: the median ratio
`dcr_ratio` (train / held-out) is about 1 and `closer_to_train_fraction` (ties count half) is about
0.5. A copier is much closer to the training images: ratio well below 1, fraction well above 0.5.
Because the training set is subsampled to the held-out size, copies of training images left out
of the subsample look like fresh samples: a generator that copies from a training set k times
larger than the held-out set scores about 0.5 + 0.5 / k. `near_copy_fraction` (against the whole
training set) is the direct count.

Distances are chunked matrix products (||a||^2 + ||b||^2 - 2ab in float32, clipped at 0), then
recomputed exactly in float64 for the chosen pair, so an exact copy is at distance 0, not at
float32 rounding noise. Pure NumPy. (The figure of the nearest copies is
`ganpipe.evaluation.plots.nearest_copies_figure`; the evaluate stage's run of the guard and report
over its sets, `ganpipe.evaluation.scoring.score_memorization`.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Rows per block of the distance computation: one QUERY_BLOCK x REFERENCE_BLOCK float32 block is
# 64 MiB; besides it the reference is held as float32 (60,000 MNIST images: 188 MB) and the
# queries under one shift (10,000 MNIST images: 31 MB). Wide reference blocks measured fastest.
QUERY_BLOCK = 1024
REFERENCE_BLOCK = 16384
DEFAULT_MAX_QUERIES = 2000

__all__ = [
    "Guard",
    "NearCopies",
    "fit_guard",
    "memorization_report",
    "nearest",
    "pixel_nearest",
    "shifts",
]


# ---- nearest neighbours ---------------------------------------------------------------------------


def _flat32(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _nearest_sq(
    q: np.ndarray, r: np.ndarray, rn: np.ndarray, exclude: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate (float32) squared distance and index of each row of `q`'s nearest row of `r`
    (`rn`: r's squared norms); `exclude[i]` (>= 0) is a row of `r` that query i may not pick."""
    n, m = len(q), len(r)
    best = np.full(n, np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    for qs in range(0, n, QUERY_BLOCK):
        qe = min(qs + QUERY_BLOCK, n)
        rows = np.arange(qe - qs)
        # ||q||^2 is the same for every candidate of a query: left out of the search (it cannot
        # change the argmin), added at the end. -2 is folded into the (small) query block, exactly.
        qb = q[qs:qe] * np.float32(-2.0)
        for rs in range(0, m, REFERENCE_BLOCK):
            re = min(rs + REFERENCE_BLOCK, m)
            d2 = qb @ r[rs:re].T
            d2 += rn[None, rs:re]  # in place: no second block-sized temporary
            if exclude is not None:
                ex = exclude[qs:qe]
                hit = (ex >= rs) & (ex < re)
                d2[rows[hit], ex[hit] - rs] = np.inf
            j = d2.argmin(axis=1)
            v = d2[rows, j]
            better = v < best[qs:qe]
            best[qs:qe][better] = v[better]
            arg[qs:qe][better] = j[better] + rs
    best += _sq_norms(q)
    np.maximum(best, 0.0, out=best)
    return best, arg


def _exact(q: np.ndarray, r: np.ndarray, arg: np.ndarray) -> np.ndarray:
    """float64 L2 distance of each q row to r[arg] (inf where arg is -1: no candidate)."""
    out = np.full(len(q), np.inf)
    ok = arg >= 0
    for s in range(0, len(q), QUERY_BLOCK):
        sl = slice(s, s + QUERY_BLOCK)
        m = ok[sl]
        diff = q[sl][m].astype(np.float64) - r[arg[sl][m]].astype(np.float64)
        out[sl][m] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def nearest(
    queries: np.ndarray, reference: np.ndarray, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index) of each query's nearest reference row, by L2 over the flattened rows.

    `exclude`: per query, the index of a reference row it may not pick (leave-one-out), or -1.
    Distances are float64 and exact for the pair found (an identical row gives 0.0); the search
    itself is float32, so among near-ties it may pick a neighbour a rounding error farther.
    """
    q, r = _flat32(queries), _flat32(reference)
    _check(q, r, exclude)
    ex = None if exclude is None else np.asarray(exclude, dtype=np.int64)
    _, arg = _nearest_sq(q, r, _sq_norms(r), ex)
    return _exact(q, r, arg), arg


def _check(q: np.ndarray, r: np.ndarray, exclude: np.ndarray | None) -> None:
    if len(r) == 0:
        raise ValueError("no reference rows to search")
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} values per row, the reference {r.shape[1]}")
    if exclude is not None and np.shape(exclude) != (len(q),):
        raise ValueError(f"exclude needs one index per query ({len(q)}), got {np.shape(exclude)}")


def shifts(shift: int = 1) -> list[tuple[int, int]]:
    """The (dy, dx) translations `pixel_nearest` tries: all of -shift..shift in each direction."""
    return [(dy, dx) for dy in range(-shift, shift + 1) for dx in range(-shift, shift + 1)]


def _shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`images` (N x H x W x C) moved dy rows down and dx columns right, background (0) shifted
    in."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = images[
        :, max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _as_nhwc(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"expected N x H x W (x C) images, got shape {x.shape}")
    return x


def pixel_nearest(
    images: np.ndarray,
    reference: np.ndarray,
    shift: int = 1,
    exclude: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    reference_labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index): each image's nearest `reference` image in pixels.

    The distance is L2 over pixels scaled to [0, 1] (uint8 / 255), minimised over the image's
    shifts by up to `shift` pixels in each direction (`shifts`; 0 shifted in), so a training image
    moved by a pixel is still at distance ~0. `exclude` as in `nearest` (it excludes the row under
    every shift). With `labels` and `reference_labels`, each image searches only the reference
    images of its own class (inf and index -1 where there is none): k times less work for k
    classes, which is what makes the 9-shift search affordable on full MNIST.
    """
    if labels is not None:
        return _pixel_nearest_by_class(images, reference, shift, exclude, labels, reference_labels)
    x, ref = _as_nhwc(images), _as_nhwc(reference)
    if x.shape[1:] != ref.shape[1:]:
        raise ValueError(f"images {x.shape[1:]} and reference {ref.shape[1:]} differ in shape")
    r = _flat32(ref)
    _check(_flat32(x[:1]), r, None)
    if exclude is not None and np.shape(exclude) != (len(x),):
        raise ValueError(f"exclude needs one index per image ({len(x)}), got {np.shape(exclude)}")
    rn = _sq_norms(r)
    ex = None if exclude is None else np.asarray(exclude, dtype=np.int64)
    best = np.full(len(x), np.inf, dtype=np.float32)
    arg = np.full(len(x), -1, dtype=np.int64)
    which = np.zeros(len(x), dtype=np.int64)
    moves = shifts(shift)
    for k, (dy, dx) in enumerate(moves):
        d2, a = _nearest_sq(_flat32(_shifted(x, dy, dx)), r, rn, ex)
        better = d2 < best
        best[better], arg[better], which[better] = d2[better], a[better], k
    # exact distances for the pair and shift found, each query under its winning shift
    dist = np.full(len(x), np.inf)
    for k, (dy, dx) in enumerate(moves):
        sel = np.flatnonzero(which == k)
        if len(sel):
            dist[sel] = _exact(_flat32(_shifted(x[sel], dy, dx)), r, arg[sel])
    return dist / 255.0, arg


def _pixel_nearest_by_class(
    images: np.ndarray,
    reference: np.ndarray,
    shift: int,
    exclude: np.ndarray | None,
    labels: np.ndarray,
    reference_labels: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """`pixel_nearest` within each class; indices (and `exclude`) are into the whole reference."""
    if reference_labels is None or len(reference_labels) != len(reference):
        raise ValueError("a class-restricted search needs one reference label per reference image")
    labels, ref_labels = np.asarray(labels), np.asarray(reference_labels)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    dist = np.full(len(images), np.inf)
    arg = np.full(len(images), -1, dtype=np.int64)
    for c in np.unique(labels):
        qi, ri = np.flatnonzero(labels == c), np.flatnonzero(ref_labels == c)
        if len(ri) == 0 or (exclude is not None and len(ri) == 1 and (exclude[qi] == ri[0]).all()):
            continue  # no same-class image to compare with: infinitely far
        ex = None
        if exclude is not None:  # global index -> position among this class's reference rows
            pos = np.clip(np.searchsorted(ri, exclude[qi]), 0, len(ri) - 1)
            ex = np.where(ri[pos] == exclude[qi], pos, -1)
        d, a = pixel_nearest(images[qi], reference[ri], shift, ex)
        dist[qi], arg[qi] = d, np.where(a >= 0, ri[np.maximum(a, 0)], -1)
    return dist, arg


# ---- the guard ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NearCopies:
    """What `Guard.near_copies` found, per sample: the verdict, and each space's distance to the
    nearest training image and that image's index in the guard's training set."""

    mask: np.ndarray  # bool: a near-copy (in pixels or in features)
    pixel_distance: np.ndarray
    pixel_index: np.ndarray
    by_pixels: np.ndarray  # bool: pixel_distance <= the pixel threshold
    feature_distance: np.ndarray | None = None
    feature_index: np.ndarray | None = None
    by_features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.mask)

    @property
    def fraction(self) -> float:
        return float(self.mask.mean()) if len(self.mask) else 0.0


@dataclass(frozen=True)
class Guard:
    """The fitted near-copy rule (module docstring) with the training set it guards."""

    quantile: float
    pixel_threshold: float
    feature_threshold: float | None  # None: a pixel-only guard (no features given)
    shift: int
    num_queries: int
    train_images: np.ndarray = field(repr=False, compare=False)
    train_features: np.ndarray | None = field(default=None, repr=False, compare=False)
    # With labels, the pixel search compares a sample with training images of its own class only
    # (the feature search stays global and catches a copy drawn under another label).
    train_labels: np.ndarray | None = field(default=None, repr=False, compare=False)

    def near_copies(
        self,
        images: np.ndarray,
        features: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> NearCopies:
        """Which of uint8 `images` (with their evaluator `features`, required when the guard has
        a feature threshold, and their `labels`, required when it was fit with labels) are
        near-copies of a training image."""
        if self.train_labels is not None and labels is None:
            raise ValueError("this guard searches pixels per class: pass the samples' labels")
        by_class = {} if self.train_labels is None else {"labels": labels}
        pd, pi = pixel_nearest(
            images, self.train_images, self.shift, reference_labels=self.train_labels, **by_class
        )
        by_pixels = pd <= self.pixel_threshold
        if self.train_features is None or self.feature_threshold is None:
            return NearCopies(by_pixels, pd, pi, by_pixels)
        if features is None:
            raise ValueError("this guard also judges features: pass the samples' features")
        fd, fi = nearest(features, self.train_features)
        by_features = fd <= self.feature_threshold
        return NearCopies(by_pixels | by_features, pd, pi, by_pixels, fd, fi, by_features)

    def summary(self) -> dict[str, Any]:
        """The rule's numbers, for JSON."""
        return {
            "quantile": self.quantile,
            "pixel_threshold": self.pixel_threshold,
            "feature_threshold": self.feature_threshold,
            "shift": self.shift,
            "num_queries": self.num_queries,
            "num_train": len(self.train_images),
        }


def fit_guard(
    train_images: np.ndarray,
    train_features: np.ndarray | None,
    quantile: float,
    seed: int = 0,
    max_queries: int = DEFAULT_MAX_QUERIES,
    shift: int = 1,
    train_labels: np.ndarray | None = None,
) -> Guard:
    """The near-copy guard for uint8 `train_images` (and their evaluator `train_features`; None
    for pixels only): per space, the `quantile`/2 quantile of leave-one-out nearest-neighbour
    distances of at most `max_queries` seeded training images. With `train_labels` the pixel
    distances (leave-one-out ones included) are to images of the same class only."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    n = len(train_images)
    if n < 2:
        raise ValueError(f"the guard needs at least 2 training images, got {n}")
    if train_features is not None and len(train_features) != n:
        raise ValueError(f"{n} training images but {len(train_features)} feature rows")
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(n, min(n, max_queries), replace=False))
    # "lower": an order statistic, never interpolated upwards; with m queries the k-th smallest
    # leave-one-out distance is exceeded by a new exchangeable image with probability ~k/(m+1).
    level = quantile / 2

    def threshold(d: np.ndarray) -> float:
        return float(np.quantile(d, level, method="lower"))

    by_class = {}
    if train_labels is not None:
        train_labels = np.asarray(train_labels)
        if len(train_labels) != n:
            raise ValueError(f"{n} training images but {len(train_labels)} labels")
        by_class = {"labels": train_labels[q], "reference_labels": train_labels}
    pixel_d, _ = pixel_nearest(train_images[q], train_images, shift, exclude=q, **by_class)
    feature_t = None
    if train_features is not None:
        feature_d, _ = nearest(np.asarray(train_features)[q], train_features, exclude=q)
        feature_t = threshold(feature_d)
    return Guard(
        quantile=quantile,
        pixel_threshold=threshold(pixel_d),
        feature_threshold=feature_t,
        shift=shift,
        num_queries=len(q),
        train_images=np.asarray(train_images),
        train_features=None if train_features is None else np.asarray(train_features),
        train_labels=train_labels,
    )


# ---- the report -----------------------------------------------------------------------------------


def matched_subsample(
    labels: np.ndarray, target_labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices into `labels` and into `target_labels` with the same count per class:
    min(count in labels, count in target) of each, drawn uniformly without replacement."""
    labels, target_labels = np.asarray(labels), np.asarray(target_labels)
    mine, theirs = [], []
    for c in np.union1d(labels, target_labels):
        a, b = np.flatnonzero(labels == c), np.flatnonzero(target_labels == c)
        k = min(len(a), len(b))
        mine.append(a if k == len(a) else rng.choice(a, k, replace=False))
        theirs.append(b if k == len(b) else rng.choice(b, k, replace=False))
    empty = np.zeros(0, dtype=np.int64)
    return (
        np.sort(np.concatenate([empty, *mine]).astype(np.int64)),
        np.sort(np.concatenate([empty, *theirs]).astype(np.int64)),
    )


def _dcr_stats(to_train: np.ndarray, to_holdout: np.ndarray, prefix: str) -> dict[str, Any]:
    if len(to_train) == 0:
        return {f"{prefix}{k}": None for k in _DCR_KEYS}
    mt, mh = float(np.median(to_train)), float(np.median(to_holdout))
    # 0/0: both medians 0 (copies of images in both sets) say nothing either way
    ratio = 1.0 if mt == mh == 0.0 else mt / max(mh, 1e-12)
    closer = np.mean(to_train < to_holdout) + 0.5 * np.mean(to_train == to_holdout)
    values = (mt, mh, ratio, float(closer))
    return {f"{prefix}{k}": v for k, v in zip(_DCR_KEYS, values, strict=True)}


_DCR_KEYS = ("dcr_train_median", "dcr_holdout_median", "dcr_ratio", "closer_to_train_fraction")
# The flat numbers `memorization_report` puts at its top level (and evaluate in eval.json).
HEADLINE_KEYS = (
    "near_copy_fraction",
    *_DCR_KEYS,
    *(f"pixel_{k}" for k in _DCR_KEYS),
)


def memorization_report(
    syn_images: np.ndarray,
    syn_features: np.ndarray,
    syn_labels: np.ndarray,
    *,
    train_images: np.ndarray,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    holdout_images: np.ndarray,
    holdout_features: np.ndarray,
    holdout_labels: np.ndarray,
    guard: Guard,
    class_names: list[str],
    seed: int = 0,
    near: NearCopies | None = None,
) -> dict[str, Any]:
    """Near-copy fraction and DCR of synthetic samples, overall and per class (module docstring).

    The train and held-out reference sets for DCR are matched per class (`matched_subsample`), so
    both have the same size and class counts. `near`: the guard's verdict on the samples when the
    caller already has it. Returns a JSON-ready dict: HEADLINE_KEYS (features space unprefixed,
    pixel space prefixed `pixel_`), the near-copy fractions per space, the guard's numbers, and
    `per_class` (by class name) with the same keys; a class without samples has None values.
    """
    syn_labels = np.asarray(syn_labels, dtype=np.int64)
    if near is None:
        near = guard.near_copies(syn_images, syn_features, syn_labels)
    if len(near) != len(syn_labels):
        raise ValueError(f"near covers {len(near)} samples, there are {len(syn_labels)}")
    ti, hi = matched_subsample(train_labels, holdout_labels, np.random.default_rng(seed))
    if len(ti) == 0:
        raise ValueError("the training and held-out sets share no class: no DCR reference")

    def pixel_dcr(images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Each sample's pixel distance to its nearest same-class image of images[idx]."""
        ref, ref_labels = np.asarray(images)[idx], np.asarray(labels)[idx]
        return pixel_nearest(syn_images, ref, guard.shift, None, syn_labels, ref_labels)[0]

    dcr = {
        "": (
            nearest(syn_features, np.asarray(train_features)[ti])[0],
            nearest(syn_features, np.asarray(holdout_features)[hi])[0],
        ),
        "pixel_": (
            pixel_dcr(train_images, train_labels, ti),
            pixel_dcr(holdout_images, holdout_labels, hi),
        ),
    }

    def numbers(sel: np.ndarray) -> dict[str, Any]:
        n = int(sel.sum())
        out: dict[str, Any] = {"n": n}
        fractions = {
            "near_copy_fraction": near.mask,
            "pixel_near_copy_fraction": near.by_pixels,
            "feature_near_copy_fraction": near.by_features,
        }
        for key, mask in fractions.items():
            out[key] = float(mask[sel].mean()) if n and mask is not None else None
        for prefix, (to_train, to_holdout) in dcr.items():
            out.update(_dcr_stats(to_train[sel], to_holdout[sel], prefix))
        return out

    report = numbers(np.ones(len(syn_labels), dtype=bool))
    report["guard"] = guard.summary()
    report["num_dcr_reference"] = len(ti)
    report["per_class"] = {name: numbers(syn_labels == c) for c, name in enumerate(class_names)}
    return report
