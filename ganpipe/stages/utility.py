"""Stage `utility`: does adding the synthetic samples help a classifier? (the study:
`ganpipe.evaluation.downstream_study`)

For each scenario in `utility.scenarios` it finds the real data, the synthetic samples the augment
stage would export for that data, the evaluator that augment's filters use, and the real training
images the scenario's caps removed (for the worth-in-real-images curve); then it runs the study's
arms over `utility.seeds` paired seeds and scores them on the real test split.

  as_given        the pipeline's own prepared data, synthetic samples and evaluator.
  label_fraction  a seeded stratified `utility.label_fraction` of the prepared training split.
  long_tail       the prepared training split with `utility.class_caps` applied.

The last two are small-data questions, so their GAN must not have seen the images the scenario
drops (it would leak them into the "synthetic" samples): the subset is written as prepared data
under `<paths.utility>/<scenario>/data/prepared` (test split unchanged), and the pipeline's own
train, generate and classifier stages run on it there. Checkpoints go to the pipeline's
`paths.checkpoints`, keyed by params + data + code, so a rerun reuses a finished GAN.

Writes (atomically) `<paths.metrics>/utility.json` (everything; `headline` is a flat dict for
`dvc metrics show`), `utility.csv` (scenario, arm, metric, mean, std: for `dvc plots`) and
`utility.png` (per scenario: the arms, the headline intervals of both architectures, the worth
curve). The study's arrays for its worker processes go to `<paths.utility>/<scenario>/`.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.config import Params
from ganpipe.data.prepared import Prepared, Split, load_prepared, make_summary, save_prepared
from ganpipe.evaluation.downstream import (
    METRICS,
    UTILITY_JSON,
    class_caps_subset,
    label_fraction_subset,
    read_verdict,
)
from ganpipe.evaluation.plots import plot_utility
from ganpipe.io import atomic_dir, atomic_path, write_json
from ganpipe.paths import Paths
from ganpipe.tracker import NULL_TRACKER, Tracker

log = logging.getLogger(__name__)

UTILITY_CSV = "utility.csv"
UTILITY_PNG = "utility.png"
CSV_COLUMNS = ("scenario", "arm", "metric", "mean", "std")

__all__ = ["read_verdict", "run", "scenario_paths", "utility", "write_subset"]


def run(params: Params, paths: Paths, tracker: Tracker, progress: bool = True) -> dict[str, Any]:
    """The stage: prepared + synthetic + evaluator (+ each subset scenario's own pipeline under
    `paths.utility`) -> `paths.metrics`/utility.{json,csv,png}; logs to `tracker`."""
    result = utility(params, paths, progress)
    if result["enabled"]:
        _track(tracker, result, paths.metrics)
    return result


def utility(params: Params, paths: Paths, progress: bool = True) -> dict[str, Any]:
    """Run every scenario's study and write the outputs; return utility.json's content."""
    up = params.utility
    out = Path(paths.metrics)
    if not up.enabled:
        # the stage stays in the DAG: it still leaves (empty) outputs for DVC to track
        result: dict[str, Any] = {"enabled": False, "verdict": None}
        _write_outputs(out, result)
        return result

    if up.model_path:
        from ganpipe.evaluation.downstream_net import check_fits, load_user_model

        # every scenario keeps the prepared data's image shape and classes: check once, before
        # any scenario trains a GAN
        data = load_prepared(paths.prepared).summary
        template = load_user_model(up.model_path)
        check_fits(template, data["shape"], len(data["class_names"]), "utility.model_path")
    from tqdm import tqdm

    from ganpipe.evaluation.downstream_study import planned_trainings, run_study

    # the curve needs real images the caps removed: a subset scenario's, or the data's caps
    capped = bool(params.data.class_caps) or params.data.max_per_class is not None
    total = sum(
        planned_trainings(up, with_worth=name != "as_given" or capped) for name in up.scenarios
    )
    bar = tqdm(total=total, desc="utility", unit="fit", file=sys.stderr, disable=not progress)
    scenarios: dict[str, Any] = {}
    t0 = time.perf_counter()
    with bar:
        for name in up.scenarios:
            real, synthetic, held_out = scenario_inputs(name, params, paths, progress)

            def tick(job: Any, _result: Any, scenario: str = name) -> None:
                bar.set_postfix_str(f"{scenario} {job.arm} seed {job.seed}")
                bar.update()

            log.info(
                "utility %s: %d real training images (validation taken from them), %d synthetic, "
                "%d held-out real, %d test",
                name, len(real.train), len(synthetic), len(held_out or ()), len(real.test),
            )  # fmt: skip
            workdir = Path(paths.utility) / name
            study = run_study(real, synthetic, up, workdir, held_out, tick, name,
                              params.augment.teacher_temperature)  # fmt: skip
            scenarios[name] = study
            log.info("utility %s: verdict %s on %s", name, study["verdict"], up.verdict_metric)
    first = up.scenarios[0]
    result = {
        "enabled": True,
        "verdict": scenarios[first]["verdict"],
        "verdict_metric": up.verdict_metric,
        "headline_scenario": first,
        "headline": headline(scenarios[first], up.verdict_metric),
        "scenarios": scenarios,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    _write_outputs(out, result)
    return result


# ---- the scenarios' inputs ------------------------------------------------------------------------


def scenario_paths(paths: Paths, scenario: str) -> Paths:
    """The pipeline layout below `<paths.utility>/<scenario>`, but with the pipeline's checkpoint
    directory: GAN checkpoints are keyed by params + data + code, so they are safe to share and a
    rerun reuses them."""
    return dataclasses.replace(
        Paths.under(Path(paths.utility) / scenario), checkpoints=Path(paths.checkpoints)
    )


def subset_indices(scenario: str, params: Params, real: Prepared) -> np.ndarray:
    """The training images a subset scenario keeps (seeded with utility.seed)."""
    rng = np.random.default_rng(params.utility.seed % 2**32)
    labels = real.train.labels
    if scenario == "label_fraction":
        return label_fraction_subset(labels, params.utility.label_fraction, rng)
    if scenario == "long_tail":
        return class_caps_subset(labels, real.class_names, params.utility.class_caps or {}, rng)
    raise ValueError(f"{scenario!r} is not a subset scenario")


def write_subset(
    scenario: str, params: Params, source_dir: str | Path, out_dir: str | Path
) -> dict[str, Any]:
    """Write `scenario`'s subset of the prepared data in `source_dir` to `out_dir` as prepared
    data (train subset, test split unchanged); return its summary."""
    real = load_prepared(source_dir)
    idx = subset_indices(scenario, params, real)
    train = Split(real.train.images[idx], real.train.labels[idx])
    summary = make_summary(train, real.test, real.class_names, source=f"utility:{scenario}")
    summary["parent_content_hash"] = real.content_hash
    with atomic_dir(out_dir) as tmp:
        save_prepared(tmp, Prepared(train, real.test, summary))
    return summary


def scenario_inputs(
    scenario: str, params: Params, paths: Paths, progress: bool = True
) -> tuple[Prepared, Split, Split | None]:
    """The scenario's real data, the synthetic samples augment would export for it (augment run
    with require_benefit off into `<paths.utility>/<scenario>/data/augmented`, with the scenario's
    evaluator for its filters), and the real training images its caps removed (None: none)."""
    from ganpipe.evaluation.domain_classifier import get_evaluator

    # a scenario is a small pipeline of its own: the one loop that runs stages (upward, lazily)
    from ganpipe.pipeline import run_stages
    from ganpipe.registry import SUBSET_STAGES
    from ganpipe.stages.augment import augment

    if scenario == "as_given":
        data_dir, synthetic_dir, evaluator_dir = paths.prepared, paths.synthetic, paths.evaluator
        held_out = removed_by_caps(params, load_prepared(data_dir))
    else:
        sub = scenario_paths(paths, scenario)
        summary = write_subset(scenario, params, paths.prepared, sub.prepared)
        log.info(
            "utility %s: %d of the training images kept (%s); training its own GAN in %s",
            scenario, summary["num_train"], summary["train_counts"], sub.models,
        )  # fmt: skip
        done = run_stages(SUBSET_STAGES, params, sub, NULL_TRACKER, progress)
        log.info("utility %s: stage seconds %s", scenario, done["seconds"])
        data_dir, synthetic_dir, evaluator_dir = sub.prepared, sub.synthetic, sub.evaluator
        held_out = subset_removed(scenario, params, load_prepared(paths.prepared))
    evaluator = get_evaluator(data_dir, params.evaluate, evaluator_dir)
    augment_params = params.augment.model_copy(update={"require_benefit": False})
    work = scenario_paths(paths, scenario).augmented
    augment(augment_params, data_dir, synthetic_dir, work, evaluator)
    with np.load(Path(work) / "train.npz", allow_pickle=False) as f:
        is_syn = f["is_synthetic"].astype(bool)
        synthetic = Split(f["images"][is_syn], f["labels"][is_syn].astype(np.int64))
    return load_prepared(data_dir), synthetic, held_out


def subset_removed(scenario: str, params: Params, real: Prepared) -> Split:
    """The training images a subset scenario dropped, shuffled (seeded): its held-out pool."""
    keep = np.zeros(len(real.train), dtype=bool)
    keep[subset_indices(scenario, params, real)] = True
    idx = np.random.default_rng([params.utility.seed % 2**32, 7]).permutation(np.flatnonzero(~keep))
    return Split(real.train.images[idx], real.train.labels[idx])


def removed_by_caps(params: Params, real: Prepared) -> Split | None:
    """The images the data's caps removed from the prepared training split, shuffled (seeded), or
    None without caps: those of `data.class_caps` when set (a long tail: the capped classes are
    the rare ones), else those of `data.max_per_class` (fewer labels: every class). Prepare is
    rebuilt without that cap (the same seeded steps before it) and the prepared images taken
    away, by content."""
    if params.data.class_caps:
        uncapped = {"class_caps": None}
    elif params.data.max_per_class is not None:
        uncapped = {"max_per_class": None}
    else:
        return None
    from ganpipe.stages.prepare import build_prepared

    full = build_prepared(params.data.model_copy(update=uncapped)).train
    kept: dict[tuple[bytes, int], int] = {}
    for image, label in zip(real.train.images, real.train.labels, strict=True):
        key = (image.tobytes(), int(label))
        kept[key] = kept.get(key, 0) + 1
    removed = []
    for i, (image, label) in enumerate(zip(full.images, full.labels, strict=True)):
        key = (image.tobytes(), int(label))
        if kept.get(key):
            kept[key] -= 1
        else:
            removed.append(i)
    idx = np.random.default_rng([params.utility.seed % 2**32, 7]).permutation(
        np.asarray(removed, dtype=np.int64)
    )
    return Split(full.images[idx], full.labels[idx])


# ---- outputs ----------------------------------------------------------------------------------------


def headline(study: dict[str, Any], verdict_metric: str) -> dict[str, float]:
    """Flat key numbers of one scenario (for `dvc metrics show` and MLflow): the chosen baseline's
    and treatment's mean `verdict_metric`, the headline difference, interval and detectable effect
    per metric, the second architecture's difference and interval, the worth in real images, and
    the counts."""
    flat: dict[str, float] = {
        f"baseline_{verdict_metric}": study["arms"][study["baseline"]][verdict_metric]["mean"],
        f"treatment_{verdict_metric}": study["arms"][study["treatment"]][verdict_metric]["mean"],
    }
    for m, c in study["comparisons"]["headline"]["metrics"].items():
        flat[f"delta_{m}"] = c["mean"]
        flat[f"delta_{m}_low"] = c["low"]
        flat[f"delta_{m}_high"] = c["high"]
        flat[f"delta_{m}_detectable"] = c["detectable"]
    second = study["comparisons"].get("second_architecture")
    if second:
        c = second["metrics"][verdict_metric]
        flat[f"second_delta_{verdict_metric}"] = c["mean"]
        flat[f"second_delta_{verdict_metric}_low"] = c["low"]
        flat[f"second_delta_{verdict_metric}_high"] = c["high"]
    if study.get("worth"):
        for key in ("worth", "low", "high"):
            flat[f"worth_in_real_images{'' if key == 'worth' else '_' + key}"] = study["worth"][key]
    choice = study.get("choice")
    if choice:  # what augment.mode auto exports when the verdict is helps
        flat["chosen_share"] = choice["share"]
        flat["chosen_synthetic_weight"] = choice["synthetic_weight"]
        flat["chosen_teacher_mix"] = choice["teacher_mix"]
        flat["chosen_synthetic_start"] = choice["synthetic_start"]
        flat["chosen_synthetic_stop"] = choice["synthetic_stop"]
        flat["chosen_real_fill"] = choice["real_fill"]
    flat["num_real"] = study["num_real"]
    flat["num_synthetic"] = study["num_synthetic"]
    flat["steps"] = study["steps"]
    return flat


def csv_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows (scenario, arm, metric, mean, std) of every scenario's arms."""
    return [
        {"scenario": s, "arm": arm, "metric": m, "mean": v["mean"], "std": v["std"]}
        for s, study in result.get("scenarios", {}).items()
        for arm, metrics in study["arms"].items()
        for m, v in metrics.items()
    ]


def _write_outputs(out: Path, result: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / UTILITY_CSV, suffix=".csv") as tmp:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(csv_rows(result))
    plot_utility(out / UTILITY_PNG, result)
    write_json(out / UTILITY_JSON, result)  # last: its presence means the others are complete


def _track(tracker: Tracker, result: dict[str, Any], out: Path) -> None:
    """Flat metrics (the first scenario unprefixed, the others with their name), the verdicts as
    tags, utility.json and utility.png as artifacts."""
    metrics: dict[str, float] = {}
    tags = {"utility.verdict": str(result["verdict"])}
    for i, (name, study) in enumerate(result["scenarios"].items()):
        prefix = "utility_" if i == 0 else f"utility_{name}_"
        for arm, scores in study["arms"].items():
            for m in METRICS:
                # MLflow keys allow no ':' (the phase-2 arms' "resnet:real_weighted")
                metrics[f"{prefix}{arm.replace(':', '.')}_{m}_mean"] = scores[m]["mean"]
        for key, value in headline(study, result["verdict_metric"]).items():
            metrics[f"{prefix}{key}"] = value
        tags[f"utility.verdict.{name}"] = study["verdict"]
        tags[f"utility.baseline.{name}"] = study["baseline"]
        tags[f"utility.treatment.{name}"] = study["treatment"]
    tracker.log_metrics(metrics)
    tracker.set_tags(tags)
    tracker.log_artifact(out / UTILITY_JSON, "utility")
    tracker.log_artifact(out / UTILITY_PNG, "utility")
