"""Price a finished utility study's treatment in real images without re-running the study: train
its chosen baseline with the rare classes enlarged to each multiple x their real count (held-out
real images, the same seeds, steps and settings as the study) and read the treatment's per-seed
scores off that curve (`worth_in_real_images`, as the stage does with `utility.worth_multiples`).

The curve's arms use real images only, so they do not depend on the generator: this is the study's
own worth curve, trained after the fact, for a run that had `utility.worth_multiples: []`.

    python benchmarks/worth_of_study.py /work/lt --params presets/mnist-longtail.yaml \
      --set data.path=mnist.npz --multiples 1.5 --workers 2

/work/lt is the run's directory (its metrics/utility.json and utility/<scenario>/arrays.npz); the
params must be the run's (the study's seeds, validation fraction and settings come from them).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ganpipe.config import load_params
from ganpipe.evaluation.downstream import held_out_counts, seed_value, worth_in_real_images
from ganpipe.evaluation.downstream_fit import Job, fit_job
from ganpipe.evaluation.downstream_study import (
    ARRAYS_FILE,
    by_arm,
    per_seed,
    settings_of,
    spec_of,
)
from ganpipe.evaluation.workers import run_jobs


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--params", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--scenario", default="as_given")
    ap.add_argument("--multiples", type=float, nargs="+", default=[1.5])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    up = load_params(args.params, args.overrides).utility
    study = json.loads((args.run_dir / "metrics/utility.json").read_text())
    sc = study["scenarios"][args.scenario]
    baseline, treatment, metric = sc["baseline"], sc["treatment"], study["verdict_metric"]
    path = str(args.run_dir / "utility" / args.scenario / ARRAYS_FILE)
    with np.load(path, allow_pickle=False) as f:
        k = int(f["num_classes"])
        real_counts = np.bincount(f["train_labels"], minlength=k)
        available = np.bincount(f["held_out_labels"], minlength=k)
    if not available.any():
        raise SystemExit(f"{path}: no held-out real images (the scenario removed none)")
    rare = available > 0
    jobs, arms = [], []
    for m in args.multiples:
        arm = f"worth_{m:g}x:{baseline}"
        held = held_out_counts(real_counts, available, rare, m)
        arms.append(arm)
        jobs += [
            Job(
                arm,
                i,
                seed_value(up, i),
                held_out_counts=held,
                steps=int(sc["steps"]),
                **spec_of(baseline),
            )  # fmt: skip
            for i in range(len(sc["arms"][baseline][metric]["per_seed"]))
        ]
    t0 = time.perf_counter()

    def record(job: Job, result: dict) -> None:
        print(f"{job.arm} seed {job.seed}: test {metric} {result['test'][metric]:.4f}", flush=True)

    done = run_jobs(
        fit_job, jobs, (path, settings_of(up, args.workers)), args.workers, None, record
    )
    results = by_arm(done)  # in seed order, as the study's per-seed lists
    curve = np.stack(
        [np.asarray(sc["arms"][baseline][metric]["per_seed"])]
        + [per_seed(results[arm], "test", metric) for arm in arms],
        axis=1,
    )
    worth = worth_in_real_images(
        [1.0, *args.multiples], curve, np.asarray(sc["arms"][treatment][metric]["per_seed"])
    )
    for arm, column in zip(arms, curve[:, 1:].T, strict=True):
        print(f"{arm}: {column.mean():.4f} ± {column.std(ddof=1):.4f}")
    print(f"{treatment} worth in real images ({metric}): {json.dumps(worth)}")
    print(f"{len(jobs)} trainings on {args.workers} workers in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
