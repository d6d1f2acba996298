"""Reject synthetic samples the domain classifier does not assign to their label.

A conditional generator sometimes draws a digit that looks like another class (a "4" asked for, a
"9" drawn). Added to a training set with the asked-for label, such a sample is label noise. The
filter keeps a sample only when the domain classifier (the evaluator, trained on the real training
split) predicts its conditioning label, with at least `min_confidence` probability.

Used by the augment stage (`augment.reject_off_label`) and, with the same settings, by the uplift
measurement in the evaluate stage, so the uplift measures the augmented dataset we export.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def accept_mask(probs: np.ndarray, labels: np.ndarray, min_confidence: float = 0.0) -> np.ndarray:
    """Bool mask over samples: the arg-max class is the label and its probability is at least
    `min_confidence`. `probs`: N x K softmax outputs; `labels`: N conditioning labels."""
    probs = np.asarray(probs)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} do not match")
    on_label = probs[np.arange(len(labels)), labels]
    return (probs.argmax(axis=1) == labels) & (on_label >= min_confidence)


def classifier_accept_mask(
    classifier: Any, images: np.ndarray, labels: np.ndarray, min_confidence: float = 0.0
) -> np.ndarray:
    """`accept_mask` of uint8 `images` through a domain classifier (`build_classifier` model)."""
    from ganpipe.metrics.features import extract
    from ganpipe.models.classifier import feature_extractor

    _, probs = extract(feature_extractor(classifier), images)
    return accept_mask(probs, labels, min_confidence)


def rejection_summary(
    labels: np.ndarray, mask: np.ndarray, class_names: list[str], min_confidence: float
) -> dict[str, Any]:
    """What the filter did, for summaries: accept rate, accepted and rejected counts per class."""
    labels = np.asarray(labels, dtype=np.int64)
    k = len(class_names)
    accepted = np.bincount(labels[mask], minlength=k)[:k]
    rejected = np.bincount(labels[~mask], minlength=k)[:k]
    return {
        "min_confidence": min_confidence,
        "accept_rate": float(mask.mean()) if len(mask) else 1.0,
        "accepted_by_class": dict(zip(class_names, accepted.tolist(), strict=True)),
        "rejected_by_class": dict(zip(class_names, rejected.tolist(), strict=True)),
    }
