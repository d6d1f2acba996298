"""One scenario's utility study: which arms train, in what order, and what the results mean.

Phase 1, for each of `utility.seeds` seeds (one seeded train/validation split of the real training
images and one seeded initialisation, shared by every arm of the seed), every arm trains the
downstream CNN for the same fixed budget of steps (`utility.steps`; auto: the best epoch of one
early-stopped calibration training of the class-weighted real-only arm), always through classic
augmentation (random shifts and rotations: what every practitioner already does):

  real_<loss>         the real training part                               (a baseline)
  oversampled_<loss>  + the real images repeated to the synthetic counts   (a baseline: control)
  synthetic_<loss>    + the synthetic samples                              (a treatment)

for each loss in `utility.losses` (class-weighted cross-entropy, balanced softmax); the treatments
also for each share of the synthetic pool (`utility.synthetic_shares`) and loss weight of a
synthetic image (`utility.synthetic_weights`), named synthetic_<loss>-share<s>-weight<w>, and for
each part of a synthetic target taken from a teacher (`utility.teacher_mixes`, -teacher<m>) and
each part of the steps trained before the synthetic images join (`utility.synthetic_starts`,
-from<s>: deferral) and after which they leave (`utility.synthetic_stops`, -until<e>: the rest
fine-tunes on the real images), and each part of the gap between the share and the whole pool
filled with copies of the real images as in the control (`utility.real_fills`, -fill<f>: at fill
1 every class has the control's counts, a share of them synthetic, so the pair isolates replacing
copies with samples). The teacher of a seed is the strongest baseline (chosen on validation) of
that seed: the treatments with soft targets train after the others, from the softmax the
baselines saved. The strongest baseline and the strongest treatment are chosen on the VALIDATION
split (real images only); the test split is predicted after training and used for nothing but
the scores, so choosing among more treatments does not make the verdict optimistic
(tests/test_utility.py simulates it).

Phase 2, with the chosen pair: the second architecture (a small ResNet, or the user's model) trains
both on every seed (a second opinion); and where the scenario has real images its caps removed
(held-out), the chosen baseline trains with the rare classes enlarged to each of
`utility.worth_multiples` x their real count: the curve that prices the synthetic samples in real
images.

The headline: the chosen treatment vs the chosen baseline, paired by seed, per metric, with its 95%
interval and the smallest effect the run could detect. The verdict: `helps` only if both
architectures' intervals lie above 0, `hurts` if either lies below.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.config import UtilityParams
from ganpipe.data.prepared import Prepared, Split
from ganpipe.errors import DataError
from ganpipe.evaluation.downstream import (
    METRICS,
    choose,
    combine_verdicts,
    held_out_counts,
    mean_std,
    paired_interval,
    seed_value,
    split_of_seed,
    worth_in_real_images,
)
from ganpipe.evaluation.downstream_fit import Job, Settings, arrays_file, fit_job, teacher_file
from ganpipe.evaluation.workers import cores, run_jobs

log = logging.getLogger(__name__)

ARRAYS_FILE = "arrays.npz"
# Fewer validation images of a class than this, and one image moves that class's recall, and so
# the balanced accuracy the arms are chosen by, by a tenth of a class or more. Measured on the
# long-tail preset (2 validation images per rare class): validation balanced accuracy spread
# ± 0.03 across seeds, ten times the treatments' differences on test (docs/results.md).
THIN_VALIDATION = 10


def thin_validation(labels: np.ndarray, fraction: float, split_seed: int, treatments: int) -> str:
    """A warning, or "" when none is due: the choice among `treatments` is made on a validation
    split (seed 0's, as every seed's is stratified alike) with fewer than THIN_VALIDATION images of
    some class."""
    counts = np.bincount(np.asarray(labels)[split_of_seed(labels, fraction, split_seed, 0)[1]])
    thin = [int(c) for c in np.flatnonzero(counts < THIN_VALIDATION)]
    if treatments < 2 or not thin:
        return ""
    return (
        f"the validation split holds only {int(counts[thin].min())} image(s) of class(es) "
        f"{', '.join(map(str, thin))}, so choosing among {treatments} treatments on it is close "
        "to chance; list fewer treatments (a measured recipe) or raise utility.validation_fraction"
    )


def treatment_name(
    loss: str,
    share: float,
    weight: float,
    teacher_mix: float = 0.0,
    start: float = 0.0,
    fill: float = 0.0,
    stop: float = 1.0,
) -> str:
    """synthetic_<loss>, with -share<s>-weight<w> unless both are 1, -teacher<m> unless m is 0,
    -from<s> unless the synthetic images join from the first step, -until<e> unless they stay to
    the last and -fill<f> unless no real copies fill the gap (characters MLflow keys allow)."""

    def plain(x: float) -> str:  # never 1e-05: '-' separates the options
        return np.format_float_positional(x, trim="-")

    tail = "" if share == weight == 1.0 else f"-share{plain(share)}-weight{plain(weight)}"
    if teacher_mix:
        tail += f"-teacher{plain(teacher_mix)}"
    if start:
        tail += f"-from{plain(start)}"
    if stop < 1.0:
        tail += f"-until{plain(stop)}"
    if fill:
        tail += f"-fill{plain(fill)}"
    return f"synthetic_{loss}{tail}"


def arm_names(params: UtilityParams) -> tuple[list[str], list[str]]:
    """(baseline candidates, treatment candidates) of phase 1."""
    baselines = [f"real_{loss}" for loss in params.losses]
    if params.oversample_control:
        baselines += [f"oversampled_{loss}" for loss in params.losses]
    treatments = [
        treatment_name(loss, share, weight, mix, start, fill, stop)
        for fill in params.real_fills
        for stop in params.synthetic_stops
        for start in params.synthetic_starts
        for mix in params.teacher_mixes
        for loss in params.losses
        for share in params.synthetic_shares
        for weight in params.synthetic_weights
        # a window must hold some steps; at share 1 there is no gap to fill
        if start < stop and (not fill or share < 1.0)
    ]
    return baselines, treatments


OPTIONS = {"share": "share", "weight": "synthetic_weight", "teacher": "teacher_mix",
           "from": "synthetic_start", "until": "synthetic_stop",
           "fill": "real_fill"}  # fmt: skip
# what augment.mode auto exports of the chosen treatment
CHOICE = ("loss", "share", "synthetic_weight", "teacher_mix", "synthetic_start", "synthetic_stop",
          "real_fill")  # fmt: skip


def spec_of(arm: str) -> dict[str, Any]:
    """The Job fields (loss, extra, share, synthetic_weight, teacher_mix, synthetic_start,
    synthetic_stop, real_fill) of a phase-1 arm name."""
    name, _, options = arm.partition("-")
    kind, loss = name.split("_", 1)
    extra = {"real": "none", "oversampled": "oversample", "synthetic": "synthetic"}[kind]
    spec: dict[str, Any] = {"loss": loss, "extra": extra, "share": 1.0, "synthetic_weight": 1.0,
                            "teacher_mix": 0.0, "synthetic_start": 0.0,
                            "synthetic_stop": 1.0, "real_fill": 0.0}  # fmt: skip
    for option in filter(None, options.split("-")):
        prefix = next(p for p in OPTIONS if option.startswith(p))
        spec[OPTIONS[prefix]] = float(option.removeprefix(prefix))
    return spec


def second_architecture(params: UtilityParams) -> str | None:
    if not params.second_architecture:
        return None
    return "user" if params.model_path else "resnet"


def planned_trainings(params: UtilityParams, with_worth: bool) -> int:
    """How many trainings the study runs (its progress bar's total), calibration included."""
    baselines, treatments = arm_names(params)
    n = params.seeds * (len(baselines) + len(treatments))
    n += params.seeds * 2 * (second_architecture(params) is not None)
    n += params.seeds * len(params.worth_multiples) * with_worth
    return n + (params.steps == "auto")


def settings_of(params: UtilityParams, workers: int, teacher_temperature: float = 2.0) -> Settings:
    return Settings(
        batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        validation_fraction=params.validation_fraction,
        split_seed=params.seed,
        classic_shift=params.classic_shift,
        classic_rotation=params.classic_rotation,
        max_epochs=params.max_epochs,
        patience=params.patience,
        model_path=params.model_path,
        # the cores shared out between the worker processes (1 worker: TensorFlow's default)
        threads=max(1, cores() // workers) if workers > 1 else 0,
        save_teacher=any(params.teacher_mixes),
        teacher_temperature=teacher_temperature,
    )


def workers_of(params: UtilityParams) -> int:
    return cores() if params.workers == "auto" else int(params.workers)


def run_study(
    real: Prepared,
    synthetic: Split,
    params: UtilityParams,
    workdir: str | Path,
    held_out: Split | None = None,
    on_trained: Callable[[Job, dict[str, Any]], None] | None = None,
    name: str = "",
    teacher_temperature: float = 2.0,
) -> dict[str, Any]:
    """The study on `real` (its train split for training and validation, its test split for the
    scores), `synthetic` (added to training only) and `held_out` (real training images of the
    rare classes that the scenario's caps removed, for the worth curve; None: no curve). Writes
    its arrays under `workdir` for the workers. Returns the JSON-ready result."""
    if len(synthetic) == 0:
        raise DataError(
            f"utility{f' ({name})' if name else ''}: no synthetic samples to add (the augment "
            "stage's settings exported none: check augment.mode and its filters)"
        )
    t0 = time.perf_counter()
    k = real.num_classes
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = arrays_file(workdir / ARRAYS_FILE, real.train, real.test, synthetic, held_out, k)
    shutil.rmtree(teacher_file(path, "", 0).parent, ignore_errors=True)  # an earlier run's
    workers = workers_of(params)
    settings = settings_of(params, workers, teacher_temperature)
    done: list[dict[str, Any]] = []

    def record(job: Job, result: dict[str, Any]) -> None:
        done.append(result)
        log.info(
            "utility %s: %s seed %d (%s): %d steps, %.1fs, validation %s %.4f, test %.4f",
            name, job.arm, job.seed, job.architecture, result["steps"], result["seconds"],
            params.verdict_metric, result["val"][params.verdict_metric],
            result["test"][params.verdict_metric],
        )  # fmt: skip
        if on_trained is not None:
            on_trained(job, result)

    def run(jobs: list[Job]) -> list[dict[str, Any]]:
        return run_jobs(fit_job, jobs, (path, settings), workers, params.dask_address, record)

    # the budget: fixed for every arm and seed, so no arm stops on a few noisy validation images
    calibration = None
    if params.steps == "auto":
        job = Job("calibration", 0, seed_value(params, 0), loss="weighted", calibrate=True)
        calibration = run_jobs(fit_job, [job], (path, settings), 1, None, record)[0]
        steps = int(calibration["steps"])
    else:
        steps = int(params.steps)

    baselines, treatments = arm_names(params)
    seeds = [(i, seed_value(params, i)) for i in range(params.seeds)]
    warning = thin_validation(
        real.train.labels, params.validation_fraction, params.seed, len(treatments)
    )
    if warning:
        log.warning("utility%s: %s", f" {name}" if name else "", warning)

    def jobs_of(arm: str, spec: dict[str, Any], arch: str = "cnn", held=()) -> list[Job]:
        # soft targets are taught by the chosen baseline: their jobs are made after it is chosen
        teacher = baseline if spec["teacher_mix"] else ""
        return [
            Job(
                arm,
                i,
                s,
                held_out_counts=tuple(held),
                architecture=arch,
                steps=steps,
                teacher=teacher,
                **spec,
            )  # fmt: skip
            for i, s in seeds
        ]

    # phase 1: the baselines and the treatments with hard labels; then, taught by the chosen
    # baseline, the treatments with soft targets
    soft = [arm for arm in treatments if spec_of(arm)["teacher_mix"]]
    hard = [arm for arm in baselines + treatments if arm not in soft]
    results = by_arm(run([j for arm in hard for j in jobs_of(arm, spec_of(arm))]))
    metric = params.verdict_metric
    validation = {arm: summary(rs, "val") for arm, rs in results.items()}
    baseline = choose(validation, baselines, metric)
    if soft:
        results.update(by_arm(run([j for arm in soft for j in jobs_of(arm, spec_of(arm))])))
    validation = {arm: summary(rs, "val") for arm, rs in results.items()}
    test = {arm: summary(rs, "test") for arm, rs in results.items()}
    treatment = choose(validation, treatments, metric)

    # phase 2: the chosen pair on the second architecture; the chosen baseline on the curve
    arch2 = second_architecture(params)
    phase2: list[Job] = []
    if arch2:
        for arm in (baseline, treatment):
            phase2 += jobs_of(f"{arch2}:{arm}", spec_of(arm), arch=arch2)
    curve_arms: list[tuple[float, str]] = []
    held_by_multiple: dict[float, tuple[int, ...]] = {}
    real_counts = np.bincount(real.train.labels, minlength=k)
    rare = np.zeros(k, dtype=bool)
    if held_out is not None and len(held_out) and params.worth_multiples:
        available = np.bincount(held_out.labels, minlength=k)
        rare = available > 0
        for m in params.worth_multiples:
            held = held_by_multiple[m] = held_out_counts(real_counts, available, rare, m)
            arm = f"worth_{m:g}x:{baseline}"
            curve_arms.append((m, arm))
            phase2 += jobs_of(arm, spec_of(baseline), held=held)
    if phase2:
        more = by_arm(run(phase2))
        results.update(more)
        for arm, rs in more.items():
            validation[arm] = summary(rs, "val")
            test[arm] = summary(rs, "test")

    headline = compare(results, baseline, treatment)
    verdicts = {"cnn": headline["metrics"][metric]["verdict"]}
    comparisons = {"headline": headline}
    if arch2:
        second = compare(results, f"{arch2}:{baseline}", f"{arch2}:{treatment}")
        comparisons["second_architecture"] = second
        verdicts[arch2] = second["metrics"][metric]["verdict"]
    worth = None
    if curve_arms:
        curve = np.stack(
            [per_seed(results[baseline], "test", metric)]
            + [per_seed(results[arm], "test", metric) for _, arm in curve_arms],
            axis=1,
        )
        multiples = [1.0] + [float(m) for m, _ in curve_arms]
        worth = worth_in_real_images(multiples, curve, per_seed(results[treatment], "test", metric))
        worth["metric"] = metric
        worth["rare_classes"] = [int(c) for c in np.flatnonzero(rare)]
        worth["rare_real_images"] = int(real_counts[rare].sum())
        worth["held_out_added"] = {f"{m:g}": int(sum(h)) for m, h in held_by_multiple.items()}
    return {
        "arms": test,
        "validation": validation,
        "baseline_candidates": baselines,
        "treatment_candidates": treatments,
        "baseline": baseline,
        "treatment": treatment,
        # what augment.mode auto exports when the verdict is helps
        "choice": {k: spec_of(treatment)[k] for k in CHOICE},
        # soft targets' teacher: the chosen baseline of each seed, its softmax at this temperature
        "teacher": {"arm": baseline, "temperature": teacher_temperature} if soft else None,
        "selection": {"on": "validation", "metric": metric, "warning": warning},
        "comparisons": comparisons,
        "headline_comparison": "headline",
        "verdicts": verdicts,
        "verdict": combine_verdicts(list(verdicts.values())),
        "worth": worth,
        "steps": steps,
        "calibration": calibration,
        "second_architecture": arch2,
        "num_real": len(real.train),
        "num_validation": len(
            split_of_seed(real.train.labels, params.validation_fraction, params.seed, 0)[1]
        ),
        "num_synthetic": len(synthetic),
        "num_held_out": 0 if held_out is None else len(held_out),
        "num_test": len(real.test),
        "workers": workers if not params.dask_address else f"dask {params.dask_address}",
        "trainings": [
            {k_: r[k_] for k_ in ("arm", "seed", "architecture", "steps", "num_extra", "seconds")}
            for r in done
        ],
        "seconds": round(time.perf_counter() - t0, 1),
    }


def by_arm(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Results grouped by arm, each list in seed order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(results, key=lambda r: r["seed_index"]):
        out.setdefault(r["arm"], []).append(r)
    return out


def per_seed(results: list[dict[str, Any]], split: str, metric: str) -> np.ndarray:
    return np.array([r[split][metric] for r in results], dtype=np.float64)


def summary(results: list[dict[str, Any]], split: str) -> dict[str, Any]:
    return {m: mean_std(per_seed(results, split, m).tolist()) for m in METRICS}


def compare(results: dict[str, list[dict[str, Any]]], baseline: str, treatment: str) -> dict:
    """treatment vs baseline on the test split, paired by seed, per metric."""
    return {
        "baseline": baseline,
        "treatment": treatment,
        "metrics": {
            m: paired_interval(
                per_seed(results[baseline], "test", m), per_seed(results[treatment], "test", m)
            )
            for m in METRICS
        },
    }
