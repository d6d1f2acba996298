"""The Prefect flow: the same stages as `dvc repro` and `ganpipe run`, as retried Prefect tasks.

Run it with `python flows/pipeline.py` (an ephemeral Prefect server starts for the run) or against a
server with PREFECT_API_URL set; `flows/deploy.py` deploys it on a cron schedule to the `ganpipe`
process work pool that `ganpipe serve` runs a worker for.

A run: pull the data when its root is in a DVC repository with a remote (`update_data`), the six
stages, then champion promotion (`promote`, with tracking on: see ganpipe/ops/promotion.py), and a
markdown artifact `ganpipe-report` with the metrics beside the champion's and the decision.
Stages whose inputs did not change are skipped by DVC's own record (ganpipe/ops/dvc.py) when
the run's root is the DVC repository and its params are that repository's params.yaml; the tasks
never use Prefect's cache, so there is one caching mechanism. What the stages cache themselves (the
domain classifier per data hash, reference statistics, training checkpoints) they reuse too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from ganpipe.config import Params, load_params
from ganpipe.errors import GanpipeError
from ganpipe.io import read_json
from ganpipe.pipeline import STAGES, Paths, run_stage
from ganpipe.ops.dvc import dvc_stage_repo, is_up_to_date, record
from ganpipe.ops.tracking import MlflowTracker, Tracker, start_tracker


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
def stage(
    name: str, params: Params, paths: Paths, tracker: Tracker, dvc_repo: Path | None = None
) -> dict[str, Any]:
    """Run one stage, or skip it when DVC vouches that its inputs and outputs did not change."""
    logger = get_run_logger()
    if dvc_repo is not None and is_up_to_date(dvc_repo, name):
        logger.info("stage %s: up to date in %s (dvc status); skipped", name, dvc_repo)
        tracker.set_tags({f"stage.{name}": "skipped: up to date (dvc status)"})
        if name == "evaluate":  # the outputs are unchanged, and so are their metrics
            metrics = read_json(paths.metrics / "eval.json")
            tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
            return metrics
        return {"skipped": True}
    logger.info("stage %s", name)
    result = run_stage(name, params, paths, tracker, progress=False)
    if dvc_repo is not None:
        record(dvc_repo, name)
    return result


def _cell(v: Any) -> str:
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def report_markdown(
    metrics: dict[str, Any],
    paths: Paths,
    run_id: str | None,
    promotion: dict[str, Any] | None = None,
    run_url: str | None = None,
) -> str:
    """The run's report: metrics (beside the champion's when promotion compared them), the
    promotion decision, and where the outputs are."""
    champ = (promotion or {}).get("champion_metrics") or {}
    if champ:
        label = f"champion v{promotion['champion_version']} ({promotion['basis']})"
        head = f"| metric | this run | {label} |\n|---|---|---|\n"
        rows = "\n".join(
            f"| {k} | {_cell(v)} | {_cell(champ.get(k))} |" for k, v in sorted(metrics.items())
        )
    else:
        head = "| metric | value |\n|---|---|\n"
        rows = "\n".join(f"| {k} | {_cell(v)} |" for k, v in sorted(metrics.items()))
    text = f"# ganpipe run\n\n{head}{rows}\n"
    if promotion:
        text += (
            f"\n## Champion: {promotion['decision']}\n"
            f"- model: `{promotion['model_name']}` version {promotion['version']}"
            f" ({promotion['metric']}, {promotion['mode']} is better)\n"
            f"- reason: {promotion['reason']}\n"
        )
    run = f"[{run_id}]({run_url})" if run_id and run_url else f"`{run_id or 'tracking off'}`"
    return text + (
        "\n## Outputs\n"
        f"- generator: `{paths.models / 'generator.keras'}` (sample grid `{paths.models / 'samples' / 'final.png'}`)\n"
        f"- synthetic data: `{paths.synthetic}/` (samples.npz, images/, manifest.csv, grid `{paths.synthetic / 'grid.png'}`)\n"
        f"- augmented data: `{paths.augmented / 'train.npz'}`\n"
        f"- metrics: `{paths.metrics / 'eval.json'}`, `{paths.metrics / 'per_class.csv'}`\n"
        f"- MLflow run: {run}\n"
    )


def _dvc_repo(root: Path) -> Path | None:
    for d in (root, *root.parents):
        if (d / ".dvc").is_dir():
            return d
    return None


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def update_data(root: str) -> str:
    """`dvc pull` when `root` is inside a DVC repository that has a remote; else nothing."""
    logger = get_run_logger()
    repo = _dvc_repo(Path(root).resolve())
    if repo is None:
        logger.info("data: %s is not in a DVC repository; nothing to pull", root)
        return "no DVC repository"
    dvc = str(Path(sys.executable).parent / "dvc")
    remotes = subprocess.run(
        [dvc, "remote", "list"], cwd=repo, capture_output=True, text=True, timeout=60
    )
    if remotes.returncode != 0 or not remotes.stdout.strip():
        logger.info("data: no DVC remote configured in %s; nothing to pull", repo)
        return "no DVC remote"
    pulled = subprocess.run([dvc, "pull"], cwd=repo, capture_output=True, text=True)
    if pulled.returncode != 0:  # e.g. the repo's lock held by another DVC command: retried
        raise RuntimeError(f"dvc pull in {repo} failed: {pulled.stderr.strip()[-2000:]}")
    logger.info("data: dvc pull: %s", pulled.stdout.strip()[-500:])
    return "pulled"


def run_url(tracker: MlflowTracker) -> str | None:
    """The MLflow UI's page of the run, when the tracking URI is a server's."""
    if not tracker.uri.startswith(("http://", "https://")):
        return None
    exp = tracker.client.get_run(tracker.run_id).info.experiment_id
    return f"{tracker.uri.rstrip('/')}/#/experiments/{exp}/runs/{tracker.run_id}"


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_is_transient, cache_policy=NO_CACHE)
def promote(params: Params, paths: Paths, tracker: MlflowTracker) -> dict[str, Any]:
    """Move the `champion` alias to this run's generator if it beats the champion."""
    from ganpipe.ops.promotion import (
        IDENTITY_TAG,
        evaluation_identity,
        promote_if_better,
        reevaluate_champion,
    )

    identity = evaluation_identity(paths.evaluator, params.evaluate.model_dump())
    if identity:
        tracker.set_tags({IDENTITY_TAG: identity})

    def reevaluate(model_uri: str) -> dict[str, Any]:
        get_run_logger().info("re-evaluating the champion %s on the current data", model_uri)
        return reevaluate_champion(tracker.uri, model_uri, params, paths.prepared, paths.evaluator)

    decision = promote_if_better(
        tracker.client,
        tracker.run_id,
        params.tracking.champion_metric,
        params.tracking.champion_mode,
        reevaluate,
    )
    get_run_logger().info("champion: %s: %s", decision.decision, decision.reason)
    return decision.as_dict()


@flow(name="ganpipe-pipeline", log_prints=True)
def pipeline(
    params_file: str | None = None,
    overrides: list[str] | None = None,
    root: str = ".",
    update: bool = True,
    promote_champion: bool = True,
) -> dict[str, Any]:
    """[dvc pull] → prepare → train → generate → classifier → augment → evaluate, under one MLflow
    run, then champion promotion (tracking and model registration on)."""
    params = load_params(params_file, overrides or [])
    paths = Paths.under(root)
    dvc_repo = dvc_stage_repo(root, params_file, overrides or [])
    if update:
        update_data(root)
    tracker = start_tracker(params, run_name="prefect-pipeline")
    results: dict[str, Any] = {"run_id": tracker.run_id}
    url = None
    try:
        for name in STAGES:
            results[name] = stage.with_options(name=name)(name, params, paths, tracker, dvc_repo)
        if isinstance(tracker, MlflowTracker):
            url = run_url(tracker)
            if promote_champion and params.tracking.register_model:
                results["promotion"] = promote(params, paths, tracker)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    create_markdown_artifact(
        report_markdown(results["evaluate"], paths, tracker.run_id, results.get("promotion"), url),
        key="ganpipe-report",
        description="ganpipe metrics and outputs",
    )
    return results


if __name__ == "__main__":
    args = sys.argv[1:]
    pipeline(params_file=args[0] if args else None, overrides=args[1:])
    print(f"outputs under {Path('.').resolve()}")
