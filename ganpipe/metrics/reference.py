"""Reference statistics: the real sets' features, mean and covariance, extracted once per dataset.

Every generator of a dataset is compared with the same real images, so their features (and their
float64 mean and covariance, for the Fréchet distance) are cached on disk in
`<ref_dir>/<extractor>-<split>-<key>.npz` (StyleGAN2-ADA's dataset-statistics cache; the evaluate
stage uses `.ganpipe_cache/reference/` beside the classifier's `evaluator/` directory).
The key is a hash of everything the arrays depend on: the prepared data's content hash, the split,
the exact subsample drawn from it (its size and indices, which follow `evaluate.seed`), the
extractor's identity (the domain classifier's cache key and training stamp; the Inception weights
file's hash; the user model's file hash and layer; the preprocessing) and REFERENCE_VERSION. A
change in any of them is a different file; a damaged or mismatching file is recomputed. Files are
written atomically, so concurrent evaluations at worst both compute the same entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.io import arrays_sha256, atomic_path
from ganpipe.metrics.features import FeatureSet
from ganpipe.metrics.frechet import feature_stats

log = logging.getLogger(__name__)

# Bump when what a reference file holds, or how it is computed, changes.
REFERENCE_VERSION = 1
# Rows per block for the covariance: bounds the float64 working copy (block x D x 8 bytes).


def stratified_subsample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `n` samples (all if fewer) keeping each class's share of `labels`.

    Quotas are floor(n * share), the remainder going to the largest fractional parts; within a
    class the samples are drawn uniformly without replacement.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / counts.sum()
    quota = np.floor(exact).astype(int)
    short = n - quota.sum()
    quota[np.argsort(-(exact - quota), kind="stable")[:short]] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), q, replace=False)
        for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked))


@dataclass(frozen=True)
class Reference:
    """One real set as the metrics see it, with its Gaussian statistics."""

    features: FeatureSet
    mu: np.ndarray  # float64, D
    sigma: np.ndarray  # float64, D x D
    path: Path
    from_cache: bool

    @property
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        return self.mu, self.sigma


def reference_key(parts: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of `parts`."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _load(path: Path, parts_json: str) -> Reference | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != parts_json:
                log.warning("%s: written for another key; recomputing", path)
                return None
            fs = FeatureSet(f["features"], f["probs"], f["labels"])
            return Reference(fs, f["mu"], f["sigma"], path, from_cache=True)
    except Exception as e:  # damaged or partial: a cache miss, not a failure
        log.warning("%s: unreadable (%s); recomputing", path, e)
        return None


def load_or_compute(
    ref_dir: str | os.PathLike[str],
    parts: dict[str, Any],
    compute: Callable[[], FeatureSet],
    name: str = "reference",
) -> Reference:
    """The cached Reference for key `parts` in `ref_dir`, or `compute()`'s features with their
    statistics, saved there atomically first."""
    parts_json = json.dumps(parts, sort_keys=True)
    path = Path(ref_dir) / f"{name}-{reference_key(parts)[:32]}.npz"
    if path.exists():
        cached = _load(path, parts_json)
        if cached is not None:
            log.info("reference statistics from %s", path)
            return cached
    fs = compute()
    mu, sigma = feature_stats(fs.features)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(
            tmp,
            features=fs.features,
            probs=fs.probs,
            labels=fs.labels,
            mu=mu,
            sigma=sigma,
            key=np.array(parts_json),
        )
    log.info("reference statistics written to %s", path)
    return Reference(fs, mu, sigma, path, from_cache=False)


def real_reference(
    ref_dir: str | os.PathLike[str],
    content_hash: str,
    split_name: str,
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    extractor: Any,
) -> Reference:
    """The reference for `images[indices]` of split `split_name` of the prepared data
    `content_hash`, through `extractor` (`ganpipe.metrics.extractors.Extractor`). The images are
    only indexed (copied) and run through the networks on a cache miss."""
    indices = np.asarray(indices, dtype=np.int64)
    parts = {
        "version": REFERENCE_VERSION,
        "content_hash": content_hash,
        "split": split_name,
        "num_samples": len(indices),
        "indices_sha256": arrays_sha256(indices),
        "extractor": extractor.identity,
    }
    all_taken = len(indices) == len(labels)

    def compute() -> FeatureSet:
        if all_taken:  # stratified_subsample returns arange when it takes everything
            return extractor.feature_set(images, labels)
        return extractor.feature_set(images[indices], labels[indices])

    return load_or_compute(ref_dir, parts, compute, f"{extractor.name}-{split_name}")
