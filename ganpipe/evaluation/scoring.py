"""The sets the evaluate stage scores, and its memorization check over them.

`real_references`: the real train and test subsamples (seeded and stratified, at most
evaluate.max_samples each) through one extractor, their features and statistics from the reference
cache (`ganpipe.evaluation.metrics.reference`); `synthetic_subsample`: the synthetic samples'
subsample, from a stream of its own. `score_memorization`: near-copies and DCR of the synthetic
samples (`ganpipe.evaluation.metrics.memorization`), always in the domain classifier's features.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ganpipe.config import EvaluateParams
from ganpipe.data.prepared import Prepared, Split
from ganpipe.data.sampling import stratified_subsample
from ganpipe.evaluation.metrics.extractors import Extractor, build_extractor
from ganpipe.evaluation.metrics.features import FeatureSet
from ganpipe.evaluation.metrics.memorization import (
    NearCopies,
    fit_guard,
    memorization_report,
)
from ganpipe.evaluation.metrics.reference import Reference, real_reference

if TYPE_CHECKING:
    from ganpipe.evaluation.domain_classifier import Evaluator

log = logging.getLogger(__name__)

# The seeded streams of the subsamples (`_rng`): real train, real test, synthetic.
SPLIT_STREAMS = {"train": 0, "test": 1}
SYNTHETIC_STREAM = 2


def _rng(seed: int, stream: int) -> np.random.Generator:
    """Independent seeded streams per set, so caching one set never shifts another's sample."""
    return np.random.default_rng([seed, stream])


def _subsample(split: Split, n: int, rng: np.random.Generator, what: str) -> np.ndarray:
    idx = stratified_subsample(split.labels, n, rng)
    if len(idx) < len(split):
        log.info(
            "evaluate: %s: %d of %d samples (evaluate.max_samples)", what, len(idx), len(split)
        )
    return idx


@dataclass(frozen=True)
class RealReferences:
    """The real train and test subsamples every evaluation compares against, by split name: their
    references in `extractor`'s features (cached in `ref_dir`) and their indices into `prepared`'s
    splits."""

    prepared: Prepared
    extractor: Extractor
    ref_dir: Path
    refs: dict[str, Reference]
    indices: dict[str, np.ndarray]

    def features_through(self, extractor: Extractor, name: str, idx: np.ndarray) -> np.ndarray:
        """`extractor`'s features of split `name`'s images `idx`: this object's own when they
        are the same set through the same extractor, else from the reference cache."""
        if extractor is self.extractor and np.array_equal(self.indices[name], idx):
            return self.refs[name].features.features
        split = getattr(self.prepared, name)
        ref = real_reference(
            self.ref_dir,
            self.prepared.content_hash,
            name,
            split.images,
            split.labels,
            idx,
            extractor,
        )
        return ref.features.features


def real_references(
    params: EvaluateParams, prepared: Prepared, extractor: Extractor, ref_dir: Path
) -> RealReferences:
    """The real train and test subsamples' references (features, statistics; cached in
    `ref_dir`) and their indices, by split name: what every evaluation compares against."""
    refs, indices = {}, {}
    for name, stream in SPLIT_STREAMS.items():
        split = getattr(prepared, name)
        idx = _subsample(split, params.max_samples, _rng(params.seed, stream), f"real {name}")
        indices[name] = idx
        refs[name] = real_reference(
            ref_dir, prepared.content_hash, name, split.images, split.labels, idx, extractor
        )
    return RealReferences(prepared, extractor, ref_dir, refs, indices)


def synthetic_subsample(params: EvaluateParams, synthetic: Split) -> Split:
    """At most evaluate.max_samples of `synthetic`, stratified and seeded; itself when all fit."""
    idx = _subsample(
        synthetic, params.max_samples, _rng(params.seed, SYNTHETIC_STREAM), "synthetic"
    )
    if len(idx) < len(synthetic):
        return Split(synthetic.images[idx], synthetic.labels[idx])
    return synthetic


def score_memorization(
    real: RealReferences,
    synthetic: Split,
    syn: FeatureSet,
    evaluator: Evaluator,
    seed: int,
    quantile: float,
) -> tuple[dict[str, Any], NearCopies]:
    """Near-copies and DCR of `synthetic` (with `syn`, its features through `real.extractor`) in
    the domain classifier's features and in pixels: memorization.json's report, and the guard's
    verdict per sample (for the nearest-copies figure).

    The guard (fit with `quantile`, augment.memorization_quantile) sees the whole train split: a
    copy of an image outside evaluate.max_samples' subsample is still a copy. Its classifier
    features go through the reference cache (once per dataset); the held-out set is the real test
    subsample. The sets the other metrics already ran through the classifier are reused, not
    recomputed."""
    is_classifier = real.extractor.name == "classifier"
    # the domain classifier alone: the guard must not depend on evaluate.extractor
    clf = (
        real.extractor
        if is_classifier
        else build_extractor(None, evaluator.extractor, evaluator.meta)
    )

    train, test = real.prepared.train, real.prepared.test
    train_features = real.features_through(clf, "train", np.arange(len(train)))
    test_idx = real.indices["test"]
    holdout = Split(test.images[test_idx], test.labels[test_idx])
    holdout_features = real.features_through(clf, "test", test_idx)
    syn_features = syn.features if is_classifier else evaluator.features(synthetic.images)[0]

    guard = fit_guard(train.images, train_features, quantile, seed=seed, train_labels=train.labels)
    near = guard.near_copies(synthetic.images, syn_features, synthetic.labels)
    report = memorization_report(
        synthetic.images,
        syn_features,
        synthetic.labels,
        train_images=train.images,
        train_features=train_features,
        train_labels=train.labels,
        holdout_images=holdout.images,
        holdout_features=holdout_features,
        holdout_labels=holdout.labels,
        guard=guard,
        class_names=real.prepared.class_names,
        seed=seed,
        near=near,
    )
    return report, near
