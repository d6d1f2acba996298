"""The Prefect flow: the same stages as `dvc repro` and `ganpipe run`, as retried Prefect tasks.

Run it with `python flows/pipeline.py` (an ephemeral Prefect server starts for the run) or against a
server with PREFECT_API_URL set; `flows/deploy.py` deploys it on a cron schedule to the `ganpipe`
process work pool that `ganpipe serve` runs a worker for.

A run, holding its workspace's lock (ganpipe/lock.py): `dvc pull` from the user's DVC remote when
one is configured and reachable (a missing one is a warning), the seven stages (skipped when DVC
vouches they are up to date: ganpipe/orchestration/dvc.py; never Prefect's cache), champion promotion
(ganpipe/orchestration/promotion.py), and the markdown artifact `ganpipe-report` (ganpipe/orchestration/report.py).
Wiring only: the logic is in those.
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
from ganpipe.io import read_json
from ganpipe.lock import workspace_lock
from ganpipe.mlflow_adapter.tracking import MlflowTracker, Tracker, tracked_run
from ganpipe.orchestration import dvc
from ganpipe.orchestration.promotion import promote_run
from ganpipe.orchestration.report import pipeline_report
from ganpipe.orchestration.run_links import RunLinks, log_report_files, run_links, workspace_links
from ganpipe.pipeline import STAGES, Paths, run_stage, run_stages


def _is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O hiccups and the like; never bad params or bad data, which would fail again."""
    try:
        state.result()
    except Exception as e:
        return not isinstance(e, GanpipeError)
    return False


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_is_transient, cache_policy=NO_CACHE)
def stage(
    name: str, params: Params, paths: Paths, tracker: Tracker, dvc_repo: Path | None = None
) -> dict[str, Any]:
    """Run one stage, or skip it when DVC vouches that its inputs and outputs did not change."""
    logger = get_run_logger()
    skipped = dvc.skipped_result(dvc_repo, name, paths, tracker) if dvc_repo else None
    if skipped is not None:
        logger.info("stage %s: up to date in %s (dvc status); skipped", name, dvc_repo)
        return skipped
    logger.info("stage %s", name)
    result = run_stage(name, params, paths, tracker, progress=False)
    if dvc_repo is not None:
        dvc.record(dvc_repo, name)
    return result


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_is_transient, cache_policy=NO_CACHE)
def update_data(root: str) -> str:
    """`dvc pull` when `root` is inside a DVC repository whose default remote is configured and
    reachable; else nothing (a missing remote is a warning, not a failure: ganpipe/orchestration/dvc.py)."""
    return dvc.pull(root, get_run_logger())


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_is_transient, cache_policy=NO_CACHE)
def promote(params: Params, paths: Paths, tracker: MlflowTracker) -> dict[str, Any]:
    """Move the `champion` alias to this run's generator if it beats the champion."""
    return promote_run(tracker, params, paths, get_run_logger()).as_dict()


@flow(name="ganpipe-pipeline", log_prints=True)
def pipeline(
    params_file: str | None = None,
    overrides: list[str] | None = None,
    root: str = ".",
    update: bool = True,
    promote_champion: bool = True,
) -> dict[str, Any]:
    """[dvc pull] → prepare → train → generate → classifier → utility → augment → evaluate, under one MLflow
    run, then champion promotion (tracking and model registration on)."""
    params = load_params(params_file, overrides or [])
    paths = Paths.under(root)
    dvc_repo = dvc.dvc_stage_repo(root, params_file, overrides or [])
    # One run per workspace: a second flow, `ganpipe run` or `dvc repro` here stops at once, naming
    # this one (ganpipe/lock.py); released however the run ends, cancellation included.
    with workspace_lock(paths, command=f"Prefect flow run {_flow_run_name()}", dvc=True):
        return _run(params, paths, root, dvc_repo, update, promote_champion)


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    return f"{flow_run.name} ({flow_run.id})"


def _unless_skipped(result: dict[str, Any], written: Path) -> dict[str, Any] | None:
    """A stage's result for the report; for a stage DVC skipped, what it wrote last time (its
    outputs are unchanged), or None when that file is gone."""
    if not result.get("skipped"):
        return result
    return read_json(written) if written.exists() else None


def _links(tracker: Tracker, paths: Paths) -> RunLinks:
    """The report's links to the run's artifacts; a store that does not answer now costs the
    report its links (a warning), not the finished run."""
    if not isinstance(tracker, MlflowTracker):
        return workspace_links(paths)
    try:
        return run_links(tracker, paths)
    except Exception as e:
        get_run_logger().warning("the report has no MLflow links: %s: %s", type(e).__name__, e)
        return workspace_links(paths, tracker.run_id)


def _run(
    params: Params,
    paths: Paths,
    root: str,
    dvc_repo: Path | None,
    update: bool,
    promote_champion: bool,
) -> dict[str, Any]:
    if update:
        update_data(root)
    with tracked_run(params) as tracker:

        def task_run(name: str, *args: Any) -> dict[str, Any]:
            return stage.with_options(name=name)(name, params, paths, tracker, dvc_repo)

        results = run_stages(STAGES, params, paths, tracker, runner=task_run)
        results["run_id"] = tracker.run_id
        if isinstance(tracker, MlflowTracker):
            log_report_files(tracker, paths)  # the run's own copies, even of skipped stages
        if promote_champion and params.tracking.register_model and tracker.run_id is not None:
            results["promotion"] = promote(params, paths, tracker)
        links = _links(tracker, paths)
    create_markdown_artifact(
        pipeline_report(
            results["evaluate"],
            paths,
            links,
            results.get("promotion"),
            utility=_unless_skipped(results["utility"], paths.metrics / "utility.json"),
            augment=_unless_skipped(results["augment"], paths.augmented / "summary.json"),
        ),  # fmt: skip
        key="ganpipe-report",
        description="ganpipe run: does it help, the champion, the sample grid, metrics, links",
    )
    return results


if __name__ == "__main__":
    args = sys.argv[1:]
    pipeline(params_file=args[0] if args else None, overrides=args[1:])
    print(f"outputs under {Path('.').resolve()}")
