"""Sample-quality metrics over one shared feature pass, and a registry of them by name.

The pure functions (`frechet_distance`, `kid`, `classifier_score`, ...) take NumPy arrays (TF-GAN's
eval style). The registry (StyleGAN2-ADA's metric_main style) names metrics that read a
`MetricInputs` -- the features and probabilities of the synthetic, real-train and real-test sets,
each extracted once -- and return a flat dict of floats. A new metric (precision/recall,
density/coverage) plugs in with `@register_metric("name")` and appears in eval.json.

The Fréchet distance's key follows the extractor (`MetricInputs.fd_key`): `fid` over Inception
features, `classifier_fd` otherwise; its floor is `<fd_key>_floor`. When the real sets' statistics
come from the reference cache (`ganpipe.evaluation.metrics.reference`) they are passed in and not recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ganpipe.evaluation.metrics.classifier_metrics import (
    classifier_score,
    conditional_accuracy,
    per_class_table,
)
from ganpipe.evaluation.metrics.features import FeatureSet, extract, feature_set
from ganpipe.evaluation.metrics.frechet import (
    SingularCovarianceWarning,
    feature_stats,
    frechet_distance,
    frechet_distance_from_stats,
    trace_sqrt_product,
)
from ganpipe.evaluation.metrics.kid import kid, mmd2_unbiased
from ganpipe.evaluation.metrics.prdc import density_coverage, precision_recall

# Bytes for one block of the k-NN distance matrix (precision/recall, density/coverage): the row
# count shrinks as the other set grows, so memory stays flat however many samples are scored.
DISTANCE_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class MetricInputs:
    """Everything a registered metric may read; each set went through the classifier once."""

    synthetic: FeatureSet  # generated samples with their conditioning labels
    real: FeatureSet  # real training images: the reference distribution
    real_test: FeatureSet  # held-out real images: the floor a perfect generator would reach
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    seed: int = 0
    fd_key: str = "classifier_fd"  # "fid" for Inception features
    # Precomputed float64 (mean, covariance) of real / real_test (the reference cache); None: compute
    real_stats: tuple[np.ndarray, np.ndarray] | None = None
    real_test_stats: tuple[np.ndarray, np.ndarray] | None = None

    def stats(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, covariance) of set `name` ("synthetic", "real", "real_test")."""
        given = {"real": self.real_stats, "real_test": self.real_test_stats}.get(name)
        return given if given is not None else feature_stats(getattr(self, name).features)


Metric = Callable[[MetricInputs], dict[str, float]]
METRICS: dict[str, Metric] = {}


def register_metric(name: str) -> Callable[[Metric], Metric]:
    """Decorator: add a metric to METRICS under `name` (names are unique)."""

    def add(fn: Metric) -> Metric:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = fn
        return fn

    return add


def compute_metrics(inputs: MetricInputs, names: Iterable[str] | None = None) -> dict[str, float]:
    """Run the named metrics (default: all registered, in registration order); merge their dicts."""
    names = list(METRICS) if names is None else list(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {', '.join(METRICS)}")
    results: dict[str, float] = {}
    for name in names:
        results.update(METRICS[name](inputs))
    return results


@register_metric("frechet")
def _frechet(m: MetricInputs) -> dict[str, float]:
    return {m.fd_key: frechet_distance_from_stats(*m.stats("synthetic"), *m.stats("real"))}


@register_metric("frechet_floor")
def _frechet_floor(m: MetricInputs) -> dict[str, float]:
    floor = frechet_distance_from_stats(*m.stats("real_test"), *m.stats("real"))
    return {f"{m.fd_key}_floor": floor}


@register_metric("kid")
def _kid(m: MetricInputs) -> dict[str, float]:
    mean, std = kid(m.synthetic.features, m.real.features, m.kid_subsets, m.kid_subset_size, m.seed)
    return {"kid_mean": mean, "kid_std": std}


@register_metric("conditional_accuracy")
def _conditional_accuracy(m: MetricInputs) -> dict[str, float]:
    return {
        "conditional_accuracy": conditional_accuracy(m.synthetic.predictions, m.synthetic.labels)
    }


@register_metric("classifier_score")
def _classifier_score(m: MetricInputs) -> dict[str, float]:
    return {"classifier_score": classifier_score(m.synthetic.probs)}


def _block_rows(*sets: FeatureSet) -> int:
    widest = max(len(s) for s in sets)
    return int(min(2048, max(16, DISTANCE_BLOCK_BYTES // (8 * max(widest, 1)))))


@register_metric("precision_recall")
def _precision_recall(m: MetricInputs) -> dict[str, float]:
    rows = _block_rows(m.real, m.synthetic)
    precision, recall = precision_recall(m.real.features, m.synthetic.features, 3, rows)
    return {"precision": precision, "recall": recall}


@register_metric("density_coverage")
def _density_coverage(m: MetricInputs) -> dict[str, float]:
    rows = _block_rows(m.real, m.synthetic)
    density, coverage = density_coverage(m.real.features, m.synthetic.features, 5, rows)
    return {"density": density, "coverage": coverage}


@register_metric("evaluator_test_accuracy")
def _evaluator_test_accuracy(m: MetricInputs) -> dict[str, float]:
    return {
        "evaluator_test_accuracy": conditional_accuracy(m.real_test.predictions, m.real_test.labels)
    }


__all__ = [
    "METRICS",
    "FeatureSet",
    "Metric",
    "MetricInputs",
    "SingularCovarianceWarning",
    "classifier_score",
    "compute_metrics",
    "conditional_accuracy",
    "density_coverage",
    "extract",
    "feature_set",
    "feature_stats",
    "frechet_distance",
    "frechet_distance_from_stats",
    "kid",
    "mmd2_unbiased",
    "per_class_table",
    "precision_recall",
    "register_metric",
    "trace_sqrt_product",
]
