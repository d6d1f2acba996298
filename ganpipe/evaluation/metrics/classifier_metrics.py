"""Metrics read off the domain classifier's predictions: does a sample look like its label?"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ganpipe.evaluation.metrics.frechet import SingularCovarianceWarning, frechet_distance
from ganpipe.evaluation.metrics.prdc import density_coverage, precision_recall

# The k of eval.json's overall recall (3) and coverage (5), so a class's numbers read the same way.
RECALL_K, COVERAGE_K = 3, 5


def conditional_accuracy(pred_labels: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose predicted class equals the class they were generated for."""
    pred = np.asarray(pred_labels).ravel()
    true = np.asarray(labels).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {true.shape[0]} labels")
    if pred.size == 0:
        raise ValueError("conditional_accuracy of an empty set")
    return float(np.mean(pred == true))


def classifier_score(probs: np.ndarray) -> float:
    """exp(E_x[KL(p(y|x) || p(y))]): the Inception Score with our classifier's class probabilities.

    1 when every sample gets the same prediction; num_classes when predictions are confident
    (one-hot) and spread evenly over the classes. Computed in float64 with 0 log 0 = 0.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty N x K array, got shape {p.shape}")
    marginal = p.mean(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(marginal)), 0.0)
    return float(np.exp(terms.sum(axis=1).mean()))


def per_class_table(
    syn_features: np.ndarray,
    syn_labels: np.ndarray,
    syn_pred: np.ndarray,
    real_features: np.ndarray,
    real_labels: np.ndarray,
    class_names: Sequence[str],
) -> list[dict[str, Any]]:
    """One row per class: class, class_name, n_synthetic, n_real, conditional_accuracy,
    classifier_fd, recall and coverage (synthetic of that class vs real of that class: does the
    generator reach the variety of the class's real images, not only the class?).

    Accuracy is NaN for a class without synthetic samples; the distance is NaN unless both sets have
    at least 2 samples of the class, recall and coverage unless both have more than their k. Classes with fewer samples than feature dimensions get one
    summary SingularCovarianceWarning instead of one per class.
    """
    syn_labels = np.asarray(syn_labels)
    syn_pred = np.asarray(syn_pred)
    real_labels = np.asarray(real_labels)
    dims = np.asarray(syn_features).shape[1]
    rows: list[dict[str, Any]] = []
    singular: list[str] = []
    for k, name in enumerate(class_names):
        syn_k = syn_labels == k
        real_k = real_labels == k
        n_syn, n_real = int(syn_k.sum()), int(real_k.sum())
        acc = conditional_accuracy(syn_pred[syn_k], syn_labels[syn_k]) if n_syn else float("nan")
        fd = float("nan")
        if n_syn >= 2 and n_real >= 2:
            if min(n_syn, n_real) <= dims:
                singular.append(str(name))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SingularCovarianceWarning)
                fd = frechet_distance(syn_features[syn_k], real_features[real_k])
        recall = coverage = float("nan")
        if min(n_syn, n_real) > max(RECALL_K, COVERAGE_K):
            real_f, syn_f = real_features[real_k], syn_features[syn_k]
            recall = precision_recall(real_f, syn_f, RECALL_K)[1]
            coverage = density_coverage(real_f, syn_f, COVERAGE_K)[1]
        rows.append(
            {
                "class": k,
                "class_name": str(name),
                "n_synthetic": n_syn,
                "n_real": n_real,
                "conditional_accuracy": acc,
                "classifier_fd": fd,
                "recall": recall,
                "coverage": coverage,
            }
        )
    if singular:
        warnings.warn(
            f"per-class Fréchet distance: classes {', '.join(singular)} have no more samples than "
            f"the {dims} feature dimensions; their distances are noisy and biased upwards",
            SingularCovarianceWarning,
            stacklevel=2,
        )
    return rows
