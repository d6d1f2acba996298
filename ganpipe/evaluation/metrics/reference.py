"""Reference statistics: the real sets' features, mean and covariance, extracted once per dataset.

Every generator of a dataset is compared with the same real images, so their features (and their
float64 mean and covariance, for the Fréchet distance) are cached on disk in
`<ref_dir>/<extractor>-<split>-<key>.npz` (StyleGAN2-ADA's dataset-statistics cache; the evaluate
stage uses `.ganpipe_cache/reference/` beside the classifier's `evaluator/` directory).
The key is a hash of everything the arrays depend on: the prepared data's content hash, the split,
the exact subsample drawn from it (its size and indices, which follow `evaluate.seed`), the
extractor's identity (the domain classifier's cache key and training stamp; the Inception weights
file's hash; the user model's file hash and layer; the preprocessing) and a fingerprint of the
source that computes the arrays (`ganpipe.registry.REFERENCE_CODE`: the metrics package). A change in
any of them is a different file; a damaged or mismatching file is recomputed. Files are
written atomically, so concurrent evaluations at worst both compute the same entry.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.errors import DataError
from ganpipe.evaluation.metrics.features import FeatureSet
from ganpipe.evaluation.metrics.frechet import feature_stats
from ganpipe.io import arrays_sha256, atomic_path, read_npz
from ganpipe.keys import json_sha256, source_fingerprint
from ganpipe.registry import REFERENCE_CODE

log = logging.getLogger(__name__)


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


def _load(path: Path, parts_json: str) -> Reference | None:
    """The cached entry at `path`, or None (with a warning) when it is damaged or another key's:
    the caller then computes it again and rewrites it atomically."""
    try:
        f = read_npz(path, ("key", "features", "probs", "labels", "mu", "sigma"))
    except DataError as e:
        log.warning("%s; rebuilding it", e)
        return None
    if str(f["key"]) != parts_json:
        log.warning("%s: written for another key; rebuilding it", path)
        return None
    fs = FeatureSet(f["features"], f["probs"], f["labels"])
    return Reference(fs, f["mu"], f["sigma"], path, from_cache=True)


def load_or_compute(
    ref_dir: str | os.PathLike[str],
    parts: dict[str, Any],
    compute: Callable[[], FeatureSet],
    name: str = "reference",
) -> Reference:
    """The cached Reference for key `parts` in `ref_dir`, or `compute()`'s features with their
    statistics, saved there atomically first."""
    parts_json = json.dumps(parts, sort_keys=True)
    path = Path(ref_dir) / f"{name}-{json_sha256(parts, 32)}.npz"
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
    `content_hash`, through `extractor` (`ganpipe.evaluation.metrics.extractors.Extractor`). The images are
    only indexed (copied) and run through the networks on a cache miss."""
    indices = np.asarray(indices, dtype=np.int64)
    parts = {
        "code": source_fingerprint(*REFERENCE_CODE),
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
