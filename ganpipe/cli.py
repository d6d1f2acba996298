"""`ganpipe prepare|train|generate|classifier|utility|augment|evaluate|run`: thin callers of `run_stage`.

Every command takes `--params FILE` and repeated `--set section.key=value`. Errors the user can fix
print one message and exit 2; nothing else is printed in their place.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganpipe.errors import GanpipeError
from ganpipe.lock import workspace_lock
from ganpipe.pipeline import STAGES, Paths, run_file, run_stage

if TYPE_CHECKING:
    from ganpipe.config import Params

# Stages that log into the pipeline's MLflow run; `train` opens it, the later ones rejoin it.
TRACKED = {"train", "generate", "utility", "augment", "evaluate"}

HELP = {
    "prepare": "load and validate the raw data; write data/prepared/{train,test}.npz + summary.json",
    "train": "train the class-conditional GAN; write models/ (resumes from checkpoints/)",
    "generate": "sample labelled synthetic images into data/synthetic/",
    "utility": "does adding the samples help a downstream classifier? write metrics/utility.json",
    "augment": "merge real and filtered synthetic training data into data/augmented/",
    "classifier": "train (or reuse) the domain classifier the evaluation uses, in evaluator/",
    "evaluate": "score the synthetic samples; write metrics/eval.json and metrics/per_class.csv",
    "run": "run every stage in order under one MLflow run",
}


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default=None, help="params file (default: ./params.yaml)")
    common.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one param; repeatable",
    )  # fmt: skip
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    for f in Paths.__dataclass_fields__.values():
        common.add_argument(
            f"--{f.name}-dir", dest=f"path_{f.name}", type=Path, default=f.default,
            help=f"(default: {f.default})",
        )  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="ganpipe",
        description="Grow a small labelled image dataset with a class-conditional GAN: one command "
        "per pipeline stage, `run` for all of them in order, `serve` for the scheduling servers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in (*STAGES, "run"):
        sub.add_parser(name, parents=[common], help=HELP[name], description=HELP[name])
    from ganpipe.ops.serve import add_arguments

    serve_help = "run a Prefect server, an MLflow server and a worker for scheduled runs"
    add_arguments(sub.add_parser("serve", help=serve_help, description=serve_help))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from ganpipe.ops.serve import main as serve

        return serve(args)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    paths = Paths(**{k: getattr(args, f"path_{k}") for k in Paths.__dataclass_fields__})
    # SIGTERM (a scheduler's timeout, `kill`) unwinds like Ctrl-C: the MLflow run is marked KILLED,
    # atomic writes drop their temp files, the workspace lock is released; checkpoints stay.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        from ganpipe.config import load_params

        params = load_params(args.params, args.overrides)
        # `run` also holds DVC's lock in a DVC repository, so `dvc repro` cannot start beside it;
        # a stage command may be run by `dvc repro`, which holds that lock itself.
        with workspace_lock(paths, dvc=args.command == "run"):
            if args.command == "run":
                result = run_all(params, paths, progress=not args.quiet)
                print_report(result, paths)
            else:
                result = run_one(args.command, params, paths, progress=not args.quiet)
                print(json.dumps(result, indent=2, default=str))
    except GanpipeError as e:
        print(f"ganpipe {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        name = signal.Signals(_signal_received or signal.SIGINT).name
        print(
            f"ganpipe {args.command}: interrupted ({name}); finished outputs and checkpoints are "
            "kept, and a rerun resumes training from the last checkpoint",
            file=sys.stderr,
        )
        return 128 + (_signal_received or signal.SIGINT)
    return 0


_signal_received: int | None = None


def _interrupt(signum: int, frame: object) -> None:
    global _signal_received
    _signal_received = signum
    raise KeyboardInterrupt


def run_one(name: str, params: Params, paths: Paths, progress: bool = True) -> dict[str, Any]:
    """One stage as its own process (how `dvc repro` runs it). `train` opens the pipeline's MLflow
    run; generate and evaluate rejoin it through the run file beside the model."""
    from ganpipe.ops.tracking import NULL_TRACKER, tracked_run

    if name not in TRACKED:
        run = nullcontext(NULL_TRACKER)
    else:
        resume = None if name == "train" else run_file(paths)
        run = tracked_run(params, resume_from=resume)
    with run as tracker:
        return run_stage(name, params, paths, tracker, progress)


def run_all(params: Params, paths: Paths, progress: bool = True) -> dict[str, Any]:
    """Every stage in order, one MLflow run for all of them."""
    from ganpipe.ops.tracking import tracked_run

    with tracked_run(params) as tracker:
        results: dict[str, Any] = {"run_id": tracker.run_id, "seconds": {}}
        for name in STAGES:
            t0 = time.perf_counter()
            print(f"== {name}", file=sys.stderr, flush=True)
            results[name] = run_stage(name, params, paths, tracker, progress)
            results["seconds"][name] = round(time.perf_counter() - t0, 1)
        tracker.log_metrics({f"seconds_{k}": v for k, v in results["seconds"].items()})
    return results


def print_report(results: dict, paths: Paths) -> None:
    metrics = results.get("evaluate", {})
    print("\nMetrics (metrics/eval.json):")
    for k, v in sorted(metrics.items()):
        print(f"  {k:28s} {v:.4f}" if isinstance(v, float) else f"  {k:28s} {v}")
    utility = results.get("utility") or {}
    if utility.get("enabled"):
        print(f"\nDoes it help? (metrics/utility.json): {utility.get('verdict')}")
    print("\nOutputs:")
    print(f"  prepared data    {paths.prepared}/")
    print(f"  generator        {paths.models}/generator.keras (samples in {paths.models}/samples/)")
    print(f"  synthetic data   {paths.synthetic}/ (samples.npz, images/, manifest.csv)")
    print(f"  augmented data   {paths.augmented}/train.npz")
    print(f"  metrics          {paths.metrics}/eval.json, per_class.csv, utility.json, *.png")
    if results.get("run_id"):
        print(
            f"  MLflow run       {results['run_id']} (mlflow ui --backend-store-uri sqlite:///mlflow.db)"
        )
    print("Stage seconds: " + ", ".join(f"{k} {v}" for k, v in results["seconds"].items()))


if __name__ == "__main__":
    sys.exit(main())
