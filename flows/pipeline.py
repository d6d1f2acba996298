"""The Prefect flow: the same stages as `dvc repro` and `ganpipe run`, as retried Prefect tasks.

Run it with `python flows/pipeline.py` (an ephemeral Prefect server starts for the run) or against a
server with PREFECT_API_URL set. Caching is DVC's job, so the tasks never cache.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from ganpipe.config import Params, load_params
from ganpipe.errors import GanpipeError
from ganpipe.pipeline import STAGES, Paths, run_stage
from ganpipe.tracking import Tracker, start_tracker


def _is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O hiccups and the like; never bad params or bad data, which would fail again."""
    try:
        state.result()
    except GanpipeError:
        return False
    except Exception:
        return True
    return False


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_is_transient, cache_policy=NO_CACHE)
def stage(name: str, params: Params, paths: Paths, tracker: Tracker) -> dict[str, Any]:
    get_run_logger().info("stage %s", name)
    return run_stage(name, params, paths, tracker, progress=False)


def report_markdown(metrics: dict[str, Any], paths: Paths, run_id: str | None) -> str:
    rows = "\n".join(
        f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
        for k, v in sorted(metrics.items())
    )
    return (
        "# ganpipe run\n\n| metric | value |\n|---|---|\n"
        f"{rows}\n\n## Outputs\n"
        f"- generator: `{paths.models / 'generator.keras'}` (sample grid `{paths.models / 'samples' / 'final.png'}`)\n"
        f"- synthetic data: `{paths.synthetic}/` (samples.npz, images/, manifest.csv)\n"
        f"- augmented data: `{paths.augmented / 'train.npz'}`\n"
        f"- metrics: `{paths.metrics / 'eval.json'}`, `{paths.metrics / 'per_class.csv'}`\n"
        f"- MLflow run: `{run_id or 'tracking off'}`\n"
    )


@flow(name="ganpipe-pipeline", log_prints=True)
def pipeline(
    params_file: str | None = None, overrides: list[str] | None = None, root: str = "."
) -> dict[str, Any]:
    """prepare → train → generate → augment → classifier → evaluate, under one MLflow run."""
    params = load_params(params_file, overrides or [])
    paths = Paths.under(root)
    tracker = start_tracker(params, run_name="prefect-pipeline")
    results: dict[str, Any] = {"run_id": tracker.run_id}
    try:
        for name in STAGES:
            results[name] = stage.with_options(name=name)(name, params, paths, tracker)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    create_markdown_artifact(
        report_markdown(results["evaluate"], paths, tracker.run_id),
        key="ganpipe-report",
        description="ganpipe metrics and outputs",
    )
    return results


if __name__ == "__main__":
    args = sys.argv[1:]
    pipeline(params_file=args[0] if args else None, overrides=args[1:])
    print(f"outputs under {Path('.').resolve()}")
