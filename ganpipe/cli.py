"""The `ganpipe` command: one subcommand per stage of the registry (ganpipe/registry.py) and `run`
for all of them, thin callers of `run_stage`/`run_stages`; `serve` (ganpipe/serve.py) and
`check-metrics` (ganpipe/orchestration/check_metrics.py).

Every stage command takes `--params FILE` and repeated `--set section.key=value`. Errors the user
can fix print one message and exit 2; nothing else is printed in their place.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganpipe.errors import GanpipeError
from ganpipe.lock import workspace_lock
from ganpipe.pipeline import Paths, run_file, run_stage, run_stages
from ganpipe.registry import STAGES, stage

if TYPE_CHECKING:
    from ganpipe.config import Params

RUN_HELP = "run every stage in order under one MLflow run"


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
    for name, spec in STAGES.items():
        sub.add_parser(name, parents=[common], help=spec.help, description=spec.help)
    sub.add_parser("run", parents=[common], help=RUN_HELP, description=RUN_HELP)
    from ganpipe.serve import add_arguments

    serve_help = "run a Prefect server, an MLflow server and a worker for scheduled runs"
    add_arguments(sub.add_parser("serve", help=serve_help, description=serve_help))
    check_help = (
        "compare the workspace's metrics with a git revision's, with a tolerance per metric for "
        "the spread between machines; exit 1 when one is beyond it"
    )
    check = sub.add_parser("check-metrics", help=check_help, description=check_help)
    check.add_argument("--rev", default="HEAD", help="the git revision to compare with (HEAD)")
    check.add_argument("--root", default=".", help="a folder inside the DVC repository (.)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from ganpipe.serve import main as serve

        return serve(args)
    if args.command == "check-metrics":
        return check_metrics(args.root, args.rev)
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
    run; the later tracked stages (ganpipe.registry: `tracked`) rejoin it through the run file
    beside the model."""
    from ganpipe.mlflow_adapter.tracking import tracked_run
    from ganpipe.tracker import NULL_TRACKER

    if not stage(name).tracked:
        run = nullcontext(NULL_TRACKER)
    else:
        resume = None if name == "train" else run_file(paths)
        run = tracked_run(params, resume_from=resume)
    with run as tracker:
        return run_stage(name, params, paths, tracker, progress)


def run_all(params: Params, paths: Paths, progress: bool = True) -> dict[str, Any]:
    """Every stage in order, one MLflow run for all of them."""
    from ganpipe.mlflow_adapter.tracking import tracked_run

    def announce(name: str) -> None:
        print(f"== {name}", file=sys.stderr, flush=True)

    with tracked_run(params) as tracker:
        results = run_stages(STAGES, params, paths, tracker, progress, on_stage=announce)
        results["run_id"] = tracker.run_id
        tracker.log_metrics({f"seconds_{k}": v for k, v in results["seconds"].items()})
    return results


def check_metrics(root: str, rev: str) -> int:
    """`ganpipe check-metrics`: 0 when every metric is within the spread between machines."""
    from ganpipe.orchestration.check_metrics import check, report

    try:
        changes = check(root, rev)
    except GanpipeError as e:
        print(f"ganpipe check-metrics: error: {e}", file=sys.stderr)
        return 2
    print(report(changes, rev))
    return 0 if all(c.within for c in changes) else 1


def summary_lines(results: dict[str, Any]) -> list[str]:
    """What a finished run means, in a few lines, before the full table: the verdict (or why it
    was not measured), the distance in multiples of the real data's floor, the on-label rate and
    the near-copies."""
    metrics = results.get("evaluate") or {}
    utility = results.get("utility") or {}
    if utility.get("enabled"):
        flat = utility.get("headline") or {}
        metric = utility.get("verdict_metric")
        delta, seen = flat.get(f"delta_{metric}"), flat.get(f"delta_{metric}_detectable")
        change = f": {delta:+.2%} {metric}" if delta is not None else ""
        if seen is not None:
            change += f"; this run could detect effects of {seen:.2%} or more"
        lines = [f"Does it help?  {utility.get('verdict')}{change} (metrics/utility.json)"]
        second = flat.get(f"second_delta_{metric}")
        if second is not None:
            lines.append(
                f"               second architecture: {second:+.2%} (95% interval "
                f"{flat[f'second_delta_{metric}_low']:+.2%} .. "
                f"{flat[f'second_delta_{metric}_high']:+.2%})"
            )
        if "worth_in_real_images" in flat:
            worth = flat["worth_in_real_images"]
            # the curve starts at 1x (the real images alone): a treatment below it reads as 1x,
            # which is a bound ("no more than the real images"), not a measured worth
            bound = " or less: below the real-only baseline" if worth <= 1.0 else ""
            lines.append(
                f"               worth {worth:.2f}x{bound} the rare classes' real images (95% "
                f"interval {flat['worth_in_real_images_low']:.2f} .. "
                f"{flat['worth_in_real_images_high']:.2f}x)"
            )
    else:
        lines = [
            "Does it help?  not measured: the utility stage is off (--set utility.enabled=true "
            "trains downstream classifiers: minutes; with --set augment.mode=auto the study also "
            "chooses how many synthetic images to export)"
        ]
    augment = results.get("augment") or {}
    if augment:
        chosen = augment.get("auto")
        how = f"augment.mode {augment.get('mode')}, not validated"
        if chosen:
            mix, start = chosen.get("teacher_mix", 0.0), chosen.get("synthetic_start", 0.0)
            fill, stop = chosen.get("real_fill", 0.0), chosen.get("synthetic_stop", 1.0)
            how = (
                f"the utility study chose {chosen['share']:g} of the pool at loss weight "
                f"{chosen['synthetic_weight']:g}"
                + (f", {mix:g} of each synthetic target from the teacher" if mix else "")
                + (f", joining after {start:g} of the training" if start else "")
                + (f", leaving after {stop:g} of it" if stop < 1 else "")
                + (f", real images weighted for {fill:g} of the gap to the pool" if fill else "")
                + " (augment.mode auto)"
            )
        lines.append(
            f"Exported       {augment.get('num_real')} real + {augment.get('num_synthetic')} "
            f"synthetic images: {how}"
        )
    fd_key = "fid" if "fid" in metrics else "classifier_fd"
    fd, floor = metrics.get(fd_key), metrics.get(f"{fd_key}_floor")
    if fd is not None and floor:
        lines.append(
            f"Distance       {fd_key} {fd:.3g} = {fd / floor:.1f}x the real data's own floor "
            f"{floor:.3g} (1x: as close as two real samples; lower is better)"
        )
    if "conditional_accuracy" in metrics:
        lines.append(
            f"On-label       {metrics['conditional_accuracy']:.1%} of the samples are classified "
            "as the class they were generated for"
        )
    if "near_copy_fraction" in metrics:
        dropped = ((results.get("augment") or {}).get("filters") or {}).get("filters", {})
        guard = dropped.get("memorization", {}).get("dropped")
        export = f"; augment dropped {guard} from the export" if guard is not None else ""
        lines.append(
            f"Near-copies    {metrics['near_copy_fraction']:.2%} of the samples are near-copies "
            f"of training images{export}"
        )
    return lines


def print_report(results: dict, paths: Paths) -> None:
    metrics = results.get("evaluate", {})
    print("\nResult:")
    for line in summary_lines(results):
        print(f"  {line}")
    print("\nAll metrics (metrics/eval.json):")
    for k, v in sorted(metrics.items()):
        print(f"  {k:28s} {v:.4f}" if isinstance(v, float) else f"  {k:28s} {v}")
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
