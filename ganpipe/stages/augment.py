"""Export an augmented dataset: the real training split plus synthetic samples.

`<out_dir>` is a prepared-data directory (`train.npz`, `test.npz`, `summary.json`; see
`ganpipe.data.prepared`), so every loader of prepared data reads it. `train.npz` also holds
`is_synthetic` (bool, N) and is shuffled with augment.seed; `test.npz` is the real test split,
copied unchanged. With nothing synthetic to add (ratio 0) train.npz keeps the real order: a copy.

How many per class: `augment.mode` (`ganpipe.data.synthetic.wanted_counts`: ratio, balance,
counts, or auto: the share of the pool and the synthetic loss weight the utility study chose on
validation, none unless its verdict is `helps`, and with its real fill the real images' weights
that stand for the copies it added). Before the per-class draw the filters
(`ganpipe.evaluation.filters`: off-label, memorization guard, fidelity) drop samples; summary.json records what each kept and dropped per class. Nothing is
written unless every class gets what it asked for. With `augment.require_benefit` the stage first
reads the utility stage's verdict (metrics/utility.json) and refuses to export when it is "hurts".
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ganpipe.config import AugmentParams, Params
from ganpipe.data.prepared import Split, load_prepared, make_summary, read_summary
from ganpipe.data.synthetic import load_synthetic, select_synthetic, wanted_counts
from ganpipe.errors import DataError
from ganpipe.evaluation.filters import active_filters, apply_filters, resolve_auto
from ganpipe.io import atomic_dir, save_npz, write_json
from ganpipe.paths import Paths
from ganpipe.tracker import Tracker

if TYPE_CHECKING:
    from ganpipe.evaluation.domain_classifier import Evaluator


def run(params: Params, paths: Paths, tracker: Tracker, progress: bool = True) -> dict[str, Any]:
    """The stage: prepared + synthetic (+ the evaluator, for the filters) -> augmented."""
    if params.augment.require_benefit:
        check_benefit(paths.metrics)
    choice = auto_choice(paths.metrics) if params.augment.mode == "auto" else None
    if choice:
        print(choice["why"])
    train_counts = read_summary(paths.prepared).get("train_counts")
    if train_counts is None:
        raise DataError(f"{paths.prepared}/summary.json has no train_counts: run `ganpipe prepare`")
    augment_params, why = resolve_auto(params.augment, np.asarray(train_counts))
    if why:
        print(why)
    evaluator = None
    if active_filters(augment_params) or teacher_mix_of(augment_params, choice) > 0:
        from ganpipe.evaluation.domain_classifier import get_evaluator

        evaluator = get_evaluator(paths.prepared, params.evaluate, paths.evaluator)
    summary = augment(
        augment_params, paths.prepared, paths.synthetic, paths.augmented, evaluator, choice
    )
    filters = (summary["filters"] or {}).get("filters", {})
    metrics = {"augment_num_synthetic": float(summary["num_synthetic"])}
    for name, f in filters.items():
        metrics[f"augment_{name}_dropped"] = float(f["dropped"])
        for cls, n in f["dropped_by_class"].items():
            metrics[f"augment_{name}_dropped_{metric_safe(cls)}"] = float(n)
    tracker.log_metrics(metrics)
    tracker.log_artifact(paths.augmented / "summary.json", "augment")
    return summary


def metric_safe(name: str) -> str:
    """A class name as an MLflow metric-key fragment (letters, digits, _ - . / and space)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", name)


def check_benefit(metrics_dir: str | os.PathLike[str]) -> None:
    """augment.require_benefit: DataError with the verdict and its numbers when the utility
    stage found that the synthetic samples hurt (or recorded no verdict)."""
    from ganpipe.evaluation.downstream import read_verdict

    verdict = read_verdict(metrics_dir)
    if verdict is None:
        raise DataError(
            f"augment.require_benefit: {Path(metrics_dir) / 'utility.json'} has no verdict (the "
            "utility stage ran disabled); run `ganpipe utility` with utility.enabled: true"
        )
    if verdict["verdict"] == "hurts":
        m = verdict["verdict_metric"]
        h = verdict["headline"]
        raise DataError(
            f"augment.require_benefit: the utility stage's verdict is 'hurts': adding the "
            f"synthetic samples changes {m} by {h[f'delta_{m}']:+.4f} (95% interval "
            f"{h[f'delta_{m}_low']:+.4f} .. {h[f'delta_{m}_high']:+.4f}; the strongest real-only "
            f"arm {h[f'baseline_{m}']:.4f}, with synthetic {h[f'treatment_{m}']:.4f}); "
            "not exporting the augmented dataset"
        )


def teacher_mix_of(params: AugmentParams, choice: dict[str, Any] | None) -> float:
    """The part of a synthetic target taken from the teacher: the utility study's choice under
    augment.mode auto, else augment.teacher_mix."""
    return float(choice["teacher_mix"]) if choice else params.teacher_mix


def auto_choice(metrics_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """augment.mode auto: {"share", "synthetic_weight", "teacher_mix", "synthetic_start",
    "synthetic_stop", "real_fill", "verdict", "why"} from the utility study's choice on
    validation (metrics/utility.json); share 0 (the real data alone) unless the verdict is
    `helps`. DataError when the study has not recorded a choice."""
    from ganpipe.evaluation.downstream import read_verdict

    path = Path(metrics_dir) / "utility.json"
    verdict = read_verdict(metrics_dir)
    if verdict is None or "chosen_share" not in verdict["headline"]:
        raise DataError(
            f"augment.mode auto: {path} records no choice (the utility stage ran disabled, or "
            "before it chose amounts); run `ganpipe utility` with utility.enabled: true"
        )
    h, m = verdict["headline"], verdict["verdict_metric"]
    share, weight = float(h["chosen_share"]), float(h["chosen_synthetic_weight"])
    mix = float(h.get("chosen_teacher_mix", 0.0))  # absent: a study from before soft targets
    start = float(h.get("chosen_synthetic_start", 0.0))  # absent: a study from before deferral
    fill = float(h.get("chosen_real_fill", 0.0))  # absent: a study from before real fill
    stop = float(h.get("chosen_synthetic_stop", 1.0))  # absent: a study from before fine-tuning
    effect = (
        f"{m} {h[f'delta_{m}']:+.4f}, 95% interval {h[f'delta_{m}_low']:+.4f} .. "
        f"{h[f'delta_{m}_high']:+.4f}"
    )
    if verdict["verdict"] == "helps":
        why = (
            f"augment.mode auto: the utility study chose {share:g} of the synthetic pool at loss "
            f"weight {weight:g}"
            + (f" with {mix:g} of each target from the teacher" if mix else "")
            + (f", joining after {start:g} of the training" if start else "")
            + (f", leaving after {stop:g} of it" if stop < 1 else "")
            + (f", the real images weighted for {fill:g} of the gap to the pool" if fill else "")
            + f" on validation; verdict 'helps' ({effect})"
        )
    else:
        share, start, stop, fill = 0.0, 0.0, 1.0, 0.0
        why = (
            f"augment.mode auto: the utility verdict is '{verdict['verdict']}' ({effect}): "
            "exporting the real data alone"
        )
    return {
        "share": share,
        "synthetic_weight": weight,
        "teacher_mix": mix,
        "synthetic_start": start,
        "synthetic_stop": stop,
        "real_fill": fill,
        "verdict": verdict["verdict"],
        "why": why,
    }


def augment(
    params: AugmentParams,
    data_dir: str | os.PathLike[str],
    synthetic_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    evaluator: Evaluator | None = None,
    choice: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge the real train split with the synthetic samples `params.mode` asks for, per class,
    after the filters; write the result to `out_dir` atomically and return its summary.

    `evaluator` (`ganpipe.evaluation.domain_classifier.get_evaluator`) is required when a filter or
    the teacher (teacher_mix > 0) is on (ValueError); reject_off_label's auto is resolved for the
    real training counts (`ganpipe.evaluation.filters.resolve_auto`).
    Raises DataError if the synthetic samples are missing (when some are wanted), of another shape
    or class set, or too few (after the filters) for some class. With mode auto, `choice`
    (`auto_choice`) sets the share of the pool and the synthetic weight; without it (the utility
    stage asking for the pool it studies) the whole pool is exported.
    """
    data_dir, synthetic_dir, out = Path(data_dir), Path(synthetic_dir), Path(out_dir)
    real = load_prepared(data_dir)
    class_names = real.class_names
    k = len(class_names)
    real_counts = np.bincount(real.train.labels, minlength=k)
    params = resolve_auto(params, real_counts)[0]
    if active_filters(params) and evaluator is None:
        raise ValueError(
            f"augment's {', '.join(active_filters(params))} filter needs the evaluator"
        )
    mix = teacher_mix_of(params, choice)
    if mix > 0 and evaluator is None:
        raise ValueError("augment.teacher_mix > 0: the teacher is the evaluator, which is missing")
    share = None if choice is None else choice["share"]
    wanted = wanted_counts(params, real_counts, class_names, share)
    synthetic_weight = choice["synthetic_weight"] if choice else params.synthetic_weight
    synthetic_start = choice["synthetic_start"] if choice else params.synthetic_start
    synthetic_stop = choice.get("synthetic_stop", 1.0) if choice else params.synthetic_stop

    synthetic_source: dict[str, Any] | None = None
    chosen = np.zeros(0, dtype=np.int64)
    syn = Split(np.zeros((0, *real.train.images.shape[1:]), np.uint8), np.zeros(0, np.int64))
    if wanted.sum() > 0:
        syn, synthetic_source = load_synthetic(synthetic_dir, class_names, real.image_shape)
    rng = np.random.default_rng(params.seed)
    filtered: dict[str, Any] | None = None
    if wanted.sum() > 0:
        result = apply_filters(params, syn, real.train, class_names, evaluator)
        pool = np.flatnonzero(result.keep)
        dropped = None
        if result.report["filters"]:
            filtered, dropped = result.report, result.dropped_by_class()
        chosen = pool[select_synthetic(syn.labels[pool], wanted, rng, class_names, dropped)]

    n_real, n_syn = len(real.train), len(chosen)
    images = np.concatenate([real.train.images, syn.images[chosen]])
    labels = np.concatenate([real.train.labels, syn.labels[chosen]]).astype(np.int64)
    is_synthetic = np.concatenate([np.zeros(n_real, bool), np.ones(n_syn, bool)])
    soft_labels, teacher = targets(params, labels, is_synthetic, images, k, evaluator, mix)
    weights = np.where(is_synthetic, synthetic_weight, 1.0).astype(np.float32)
    real_fill = float(choice.get("real_fill", 0.0)) if choice else 0.0
    real_weights = fill_weights(params, real_counts, class_names, wanted, real_fill)
    weights[~is_synthetic] = real_weights[labels[~is_synthetic]]
    if n_syn:  # nothing added: keep the real order, so ratio 0 is an exact copy
        order = rng.permutation(n_real + n_syn)
        images, labels, is_synthetic = images[order], labels[order], is_synthetic[order]
        soft_labels, weights = soft_labels[order], weights[order]

    summary = make_summary(Split(images, labels), real.test, class_names, source="augmented")
    summary.update(
        {
            "synthetic_ratio": params.synthetic_ratio,
            "seed": params.seed,
            "real_counts": real_counts.tolist(),
            "synthetic_counts": wanted.tolist(),
            "mode": params.mode,
            "reject_off_label": params.reject_off_label,  # auto resolved for the real counts
            "filters": filtered,
            "targets": {
                "synthetic_weight": synthetic_weight,
                "teacher": teacher,
                "synthetic_start": synthetic_start,
                "synthetic_stop": synthetic_stop,
                "real_fill": real_fill,
                "real_weights": {
                    n: float(w) for n, w in zip(class_names, real_weights, strict=True)
                },
            },
            "auto": choice,
            "num_real": n_real,
            "num_synthetic": n_syn,
            "counts_by_class": {
                name: {"real": int(r), "synthetic": int(s)}
                for name, r, s in zip(class_names, real_counts, wanted, strict=True)
            },
            "sources": {
                "real": {
                    "dir": str(data_dir),
                    "content_hash": real.summary.get("content_hash"),
                    "source": real.summary.get("source"),
                },
                "synthetic": synthetic_source,
            },
        }
    )
    with atomic_dir(out) as tmp:
        save_npz(
            tmp / "train.npz",
            images=images,
            labels=labels,
            is_synthetic=is_synthetic,
            soft_labels=soft_labels,
            weights=weights,
            synthetic_start=np.float32(synthetic_start),
            synthetic_stop=np.float32(synthetic_stop),
        )
        shutil.copyfile(data_dir / "test.npz", tmp / "test.npz")
        write_json(tmp / "summary.json", summary)
    return summary


def fill_weights(
    params: AugmentParams,
    real_counts: np.ndarray,
    class_names: list[str],
    wanted: np.ndarray,
    fill: float,
) -> np.ndarray:
    """Per class, the weight of a real image: 1 + the real copies the study's fill added
    (downstream_fit.fill_counts: fill x the gap between the pool and the exported synthetic count)
    / the class's real count. A weight stands for the copies, so a loss summed over the export
    weighs each class as the validated batches did."""
    from ganpipe.evaluation.downstream_fit import fill_counts

    weights = np.ones(len(real_counts), dtype=np.float32)
    if fill <= 0:
        return weights
    copies = fill_counts(wanted_counts(params, real_counts, class_names), wanted, fill)
    present = real_counts > 0
    weights[present] += (copies[present] / real_counts[present]).astype(np.float32)
    return weights


def targets(
    params: AugmentParams,
    labels: np.ndarray,
    is_synthetic: np.ndarray,
    images: np.ndarray,
    num_classes: int,
    evaluator: Evaluator | None,
    mix: float,
) -> tuple[np.ndarray, dict[str, Any] | None]:
    """(soft labels N x K, the teacher's summary or None): one-hot labels, with `mix` of the
    teacher's tempered softmax mixed into the synthetic images' rows."""
    from ganpipe.data.loaders import one_hot
    from ganpipe.evaluation.downstream_fit import soft_targets

    soft = one_hot(labels, num_classes)
    syn = np.flatnonzero(is_synthetic)
    if mix == 0 or len(syn) == 0 or evaluator is None:
        return soft, None
    probs = evaluator.features(images[syn])[1]
    soft[syn] = soft_targets(labels[syn], probs, mix, params.teacher_temperature, num_classes)
    agree = float(np.mean(probs.argmax(axis=1) == labels[syn]))
    on_label = float(np.mean(soft[syn, labels[syn]]))
    return soft, {
        "mix": mix,
        "temperature": params.teacher_temperature,
        # how often the teacher's arg-max is the sample's label, and the mean target weight left
        # on the label: low values flag samples the teacher reads as another class
        "agreement": agree,
        "mean_target_on_label": on_label,
    }
