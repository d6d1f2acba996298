"""The augment stage's filters over generated samples, applied in this order:

1. off_label     (augment.reject_off_label, min_confidence) the evaluator must assign the sample
                 its label, with at least min_confidence probability: off-label samples are label
                 noise (auto: on for imbalanced training data, `resolve_auto`);
2. memorization  (augment.memorization_guard) near-copies of a training image are dropped (the rule
                 is in `ganpipe.evaluation.metrics.memorization`): a user must not get their training set back;
3. fidelity      (augment.fidelity_filter) keep only samples inside some real training image's
                 k-NN ball in evaluator features (the precision criterion of Kynkaanniemi et al.
                 2019): the generator's outliers go.

Each filter sees only what the ones before it kept, so its `dropped` counts are its own. The
report lists, per filter and class, how many samples it kept and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ganpipe.config import AugmentParams
from ganpipe.data.prepared import Split
from ganpipe.data.sampling import LONG_TAIL_RATIO, class_ratio

if TYPE_CHECKING:
    from ganpipe.evaluation.domain_classifier import Evaluator

FILTERS = ("off_label", "memorization", "fidelity")


@dataclass(frozen=True)
class FilterResult:
    keep: np.ndarray  # bool, one per synthetic sample
    report: dict[str, Any]  # what summary.json, MLflow and the Prefect report show

    def dropped_by_class(self) -> np.ndarray:
        """Per class: samples any filter dropped (for the shortage message)."""
        stages = self.report["filters"].values()
        return np.sum([list(s["dropped_by_class"].values()) for s in stages], axis=0, dtype=int)


def resolve_auto(params: AugmentParams, train_counts: np.ndarray) -> tuple[AugmentParams, str]:
    """`params` with reject_off_label's auto resolved for the real training counts per class: on
    when they are imbalanced (LONG_TAIL_RATIO, as train.class_balance's auto), where the GAN draws
    its rare classes off-label most (ADA's worst rare class 61-79% on-label in three of four
    seeds on MNIST's long tail); and a line saying so ("" when auto turned nothing on)."""
    if params.reject_off_label != "auto":
        return params, ""
    ratio = class_ratio(np.asarray(train_counts))
    on = ratio >= LONG_TAIL_RATIO
    why = (
        f"imbalanced training data ({ratio:.3g}x, auto's threshold {LONG_TAIL_RATIO:g}x): the "
        "off-label filter is on (augment.reject_off_label: auto; set false to turn off)"
        if on
        else ""
    )
    return params.model_copy(update={"reject_off_label": on}), why


def active_filters(params: AugmentParams) -> list[str]:
    """The filters `params` switches on, in the order they run (reject_off_label resolved:
    `resolve_auto`)."""
    if params.reject_off_label == "auto":
        raise ValueError("augment.reject_off_label auto: resolve it for the data first")
    on = {
        "off_label": params.reject_off_label,
        "memorization": params.memorization_guard,
        "fidelity": params.fidelity_filter,
    }
    return [name for name in FILTERS if on[name]]


def apply_filters(
    params: AugmentParams,
    synthetic: Split,
    train: Split,
    class_names: list[str],
    evaluator: Evaluator | None,
) -> FilterResult:
    """Run the filters `params` switches on over `synthetic`; `train` is the real training split
    the memorization guard and the fidelity filter measure against. Every filter needs the
    evaluator's features (ValueError without one)."""
    names = active_filters(params)
    keep = np.ones(len(synthetic), dtype=bool)
    report: dict[str, Any] = {"filters": {}}
    if not names:
        return FilterResult(keep, report)
    if evaluator is None:
        raise ValueError(f"augment's {', '.join(names)} filter needs the evaluator")
    syn_features, syn_probs = evaluator.features(synthetic.images)
    train_features = None
    if "memorization" in names or "fidelity" in names:
        train_features, _ = evaluator.features(train.images)

    for name in names:
        if name == "off_label":
            from ganpipe.evaluation.domain_classifier import accept_mask

            passed = accept_mask(syn_probs, synthetic.labels, params.min_confidence)
            detail: dict[str, Any] = {"min_confidence": params.min_confidence}
        elif name == "memorization":
            from ganpipe.evaluation.metrics.memorization import fit_guard

            guard = fit_guard(
                train.images, train_features, params.memorization_quantile, params.seed,
                train_labels=train.labels,
            )  # fmt: skip
            near = guard.near_copies(synthetic.images, syn_features, synthetic.labels)
            passed = ~near.mask
            detail = guard.summary()
        else:
            from ganpipe.evaluation.metrics.prdc import inside_manifold

            passed = inside_manifold(train_features, syn_features, params.fidelity_k)
            detail = {"k": params.fidelity_k}
        before = keep.copy()
        keep &= passed
        dropped = before & ~keep
        report["filters"][name] = {
            **detail,
            "kept_by_class": _by_class(synthetic.labels[keep], class_names),
            "dropped_by_class": _by_class(synthetic.labels[dropped], class_names),
            "dropped": int(dropped.sum()),
        }
    report["kept"] = int(keep.sum())
    report["kept_by_class"] = _by_class(synthetic.labels[keep], class_names)
    report["keep_rate"] = float(keep.mean()) if len(keep) else 1.0
    return FilterResult(keep, report)


def _by_class(labels: np.ndarray, class_names: list[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(class_names))[: len(class_names)]
    return dict(zip(class_names, counts.tolist(), strict=True))
