"""Parameter sweeps: K configurations of the pipeline trained in parallel on a Dask cluster.

    python flows/sweep.py sweeps/example.yaml                      # params.yaml, 2 local workers
    python flows/sweep.py sweeps/example.yaml my.yaml --workers 4
    python flows/sweep.py sweeps/example.yaml --address tcp://scheduler:8786

Each configuration (see `ganpipe/ops/sweep.py` for the sweep file) is one Prefect task that runs train →
generate → evaluate through `run_stage`; Prefect's `DaskTaskRunner` sends it to a Dask worker process.
prepare and classifier run first, once per distinct data/evaluate params (`<root>/<sweep id>/_shared/
<key>/`), so configurations of one dataset are scored by the same domain classifier. Each
configuration writes to `<root>/<sweep id>/<config name>/` (models, checkpoints, synthetic, metrics),
so configurations and concurrent sweeps never share a directory. With tracking on, the sweep is one
MLflow parent run and each configuration a child run (tag `mlflow.parentRunId`); the best
configuration by the sweep's metric is written on the parent (`best_*` tags and metric), registered
as the generator model (if `tracking.register_model`), and shown in a markdown artifact `ganpipe-sweep`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from ganpipe.config import Params, load_params
from ganpipe.pipeline import Paths, run_stage
from ganpipe.ops.sweep import Sweep, SweepConfig, load_sweep
from ganpipe.ops.tracking import NULL_TRACKER, MlflowTracker, resolve_uri, start_tracker

# augment is left out: a sweep compares generators, and augment's output feeds nothing downstream.
# prepare and classifier run once per distinct data/evaluate params, into <root>/<sweep id>/_shared/.
SHARED_STAGES = ("prepare", "classifier")
CONFIG_STAGES = ("train", "generate", "evaluate")
REPORT_KEY = "ganpipe-sweep"
REPORT_METRICS = ("classifier_fd", "kid_mean", "conditional_accuracy", "precision", "recall")


def new_sweep_id() -> str:
    """`20250101-120000-1a2b3c`: sortable, and unique across concurrent sweeps."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def child_params(params: Params) -> Params:
    """A config's params as a worker must see them: the tracking URI resolved here (a worker's working
    directory may differ), and no model registration per config (the sweep registers the best)."""
    tracking = params.tracking.model_copy(
        update={"uri": resolve_uri(params.tracking), "register_model": False}
    )
    out = params.model_copy(update={"tracking": tracking})
    out._origin = params.origin
    return out


def shared_key(params: Params) -> str:
    """Configs with equal data and evaluate params share their prepared data and domain classifier."""
    blob = json.dumps([params.data.model_dump(), params.evaluate.model_dump()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


@task(cache_policy=NO_CACHE)
def prepare_shared(params: Params, paths: Paths) -> dict[str, Any]:
    """prepare and classifier, once per distinct data/evaluate params: every generator of a dataset
    is then judged by the same domain classifier, so the configs' metrics compare."""
    for stage in SHARED_STAGES:
        get_run_logger().info("shared %s: stage %s", paths.prepared.parent.parent.name, stage)
        run_stage(stage, params, paths, progress=False)
    return {"prepared": str(paths.prepared), "evaluator": str(paths.evaluator)}


@task(cache_policy=NO_CACHE)
def train_config(
    name: str, params: Params, paths: Paths, sweep_id: str, parent_run_id: str | None
) -> dict[str, Any]:
    """One configuration, on the shared prepared data, in a Dask worker. The MLflow tracker is made
    here: its client does not cross process boundaries."""
    log = get_run_logger()
    tracker = NULL_TRACKER
    if parent_run_id is not None:
        tracker = start_tracker(params, run_name=name)
        tracker.set_tags(
            {"mlflow.parentRunId": parent_run_id, "sweep.id": sweep_id, "sweep.config": name}
        )
    try:
        for stage in CONFIG_STAGES:
            log.info("%s: stage %s", name, stage)
            metrics = run_stage(stage, params, paths, tracker, progress=False)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    root = str(paths.models.parent)
    return {"name": name, "root": root, "run_id": tracker.run_id, "metrics": metrics}


@flow(name="ganpipe-sweep-configs")
def train_configs(
    shared: dict[str, dict[str, Any]], jobs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Submit the shared stages, then every configuration once its shared stages are done, to this
    flow's task runner (Dask); wait for all. A failed configuration is reported with its error
    rather than stopping the others."""
    ready = {
        key: prepare_shared.with_options(name=f"shared-{key}").submit(**job)
        for key, job in shared.items()
    }
    futures = []
    for job in jobs:
        key = job.pop("shared_key")
        task_ = train_config.with_options(name=f"config-{job['name']}")
        futures.append((job, ready[key], task_.submit(**job, wait_for=[ready[key]])))
    results = []
    for job, upstream, future in futures:
        future.wait()
        state = future.state
        if state.is_completed():
            results.append(future.result())
            continue
        if not upstream.state.is_completed():  # the task never ran: say why
            state = upstream.state
            error = f"prepare/classifier: {state.message}"
        else:
            error = state.message or state.name
        root = str(job["paths"].models.parent)
        results.append({"name": job["name"], "root": root, "error": error})
    return results


def dask_runner(scheduler_address: str | None, n_workers: int) -> Any:
    from prefect_dask import DaskTaskRunner

    if scheduler_address:
        return DaskTaskRunner(address=scheduler_address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True}
    )


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def report_markdown(sweep: Sweep, sweep_id: str, results: list[dict[str, Any]], best: dict) -> str:
    cols = [sweep.metric, *(m for m in REPORT_METRICS if m != sweep.metric)]
    head = "| config | overrides | " + " | ".join(cols) + " | MLflow run | outputs |"
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    overrides = {c.name: c.overrides for c in sweep.configs}
    for r in results:
        name = f"**{r['name']}** (best)" if r is best else r["name"]
        ov = ", ".join(f"`{k}={v}`" for k, v in overrides[r["name"]].items())
        if "error" in r:
            vals = ["failed: " + r["error"].replace("|", "/")[:120]] + [""] * (len(cols) - 1)
        else:
            vals = [_fmt(r["metrics"].get(c, "")) for c in cols]
        lines.append(
            f"| {name} | {ov} | {' | '.join(vals)} | {r.get('run_id') or '-'} | `{r['root']}` |"
        )
    return (
        f"# ganpipe sweep {sweep_id}\n\n"
        f"Best by {sweep.metric} ({sweep.mode}): **{best['name']}** = "
        f"{_fmt(best['metrics'][sweep.metric])}, outputs `{best['root']}`\n\n"
        + "\n".join(lines)
        + "\n"
    )


def _register_best(tracker: MlflowTracker, run_id: str, params: Params) -> str:
    """Register the best configuration's generator (the configs themselves register nothing)."""
    import mlflow

    mlflow.set_tracking_uri(tracker.uri)
    experiment = tracker.client.get_run(run_id).info.experiment_id
    logged = mlflow.search_logged_models(
        experiment_ids=[experiment],
        filter_string=f"source_run_id = '{run_id}' AND name = 'generator'",
        output_format="list",
    )
    uri = f"models:/{logged[0].model_id}" if logged else f"runs:/{run_id}/generator"
    version = mlflow.register_model(uri, params.tracking.model_name)
    return f"{params.tracking.model_name}/{version.version}"


@flow(name="ganpipe-sweep", log_prints=True)
def sweep(
    sweep_file: str,
    params_file: str | None = None,
    root: str = "sweeps-out",
    scheduler_address: str | None = None,
    n_workers: int = 2,
    sweep_id: str | None = None,
) -> dict[str, Any]:
    """Train every configuration of `sweep_file` in parallel and report the best.

    Outputs: `<root>/<sweep_id>/<config>/`; `sweep_id` defaults to a timestamp and a short uuid. With
    `scheduler_address` the tasks run on that Dask cluster (its workers need this project installed,
    and `root` and the MLflow store on storage they share); else on a local cluster of `n_workers`
    processes.
    """
    log = get_run_logger()
    spec = load_sweep(sweep_file)
    # Every config's params are checked before any work starts.
    configs: list[tuple[SweepConfig, Params]] = [
        (c, spec.params(c, params_file)) for c in spec.configs
    ]
    base = load_params(params_file, [f"{k}={json.dumps(v)}" for k, v in spec.fixed.items()])
    sweep_id = sweep_id or new_sweep_id()
    out = Path(root).resolve() / sweep_id
    parent = None
    if base.tracking.enabled:
        parent = start_tracker(base, run_name=f"sweep-{sweep_id}")
        parent.set_tags(
            {"sweep.id": sweep_id, "sweep.file": str(sweep_file), "sweep.root": str(out)}
        )
        parent.log_params(
            {"sweep.metric": spec.metric, "sweep.mode": spec.mode, "sweep.n_configs": len(configs)}
        )
        parent.log_artifact(sweep_file, "sweep")
    log.info("sweep %s: %d configs into %s", sweep_id, len(configs), out)
    shared: dict[str, dict[str, Any]] = {}
    jobs = []
    for c, p in configs:
        key = shared_key(p)
        common = Paths.under(out / "_shared" / key)
        shared.setdefault(key, {"params": child_params(p), "paths": common})
        paths = replace(
            Paths.under(out / c.name), prepared=common.prepared, evaluator=common.evaluator
        )
        jobs.append(
            {
                "name": c.name,
                "params": child_params(p),
                "paths": paths,
                "sweep_id": sweep_id,
                "parent_run_id": parent.run_id if parent else None,
                "shared_key": key,
            }
        )
    try:
        runner = dask_runner(scheduler_address, n_workers)
        results = train_configs.with_options(task_runner=runner)(shared, jobs)
        ok = [r for r in results if "error" not in r]
        for r in results:
            if "error" in r:
                log.warning("config %s failed: %s", r["name"], r["error"])
        if not ok:
            raise RuntimeError(f"sweep {sweep_id}: every config failed: {results[0]['error']}")
        best = spec.best(ok)
    except BaseException:
        if parent:
            parent.finish("FAILED")
        raise
    summary: dict[str, Any] = {
        "sweep_id": sweep_id,
        "root": str(out),
        "metric": spec.metric,
        "mode": spec.mode,
        "best": best,
        "results": results,
        "parent_run_id": parent.run_id if parent else None,
    }
    if parent:
        try:
            value = float(best["metrics"][spec.metric])
            parent.log_metrics({f"best_{spec.metric}": value})
            tags = {
                "best_config": best["name"],
                "best_run_id": best["run_id"],
                "best_root": best["root"],
                "best_overrides": json.dumps(
                    next(c for c, _ in configs if c.name == best["name"]).overrides
                ),
            }
            failed = [r["name"] for r in results if "error" in r]
            if failed:
                tags["failed_configs"] = ", ".join(failed)
            if base.tracking.register_model:
                tags["registered_model"] = _register_best(parent, best["run_id"], base)
            parent.set_tags(tags)
            parent.finish()
        except BaseException:
            parent.finish("FAILED")
            raise
    create_markdown_artifact(
        report_markdown(spec, sweep_id, results, best),
        key=REPORT_KEY,
        description=f"ganpipe sweep {sweep_id}: configurations and the best by {spec.metric}",
    )
    print(f"best: {best['name']} {spec.metric}={best['metrics'][spec.metric]} ({best['root']})")
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="flows/sweep.py", description=__doc__.split("\n")[0])
    p.add_argument("sweep_file")
    p.add_argument("params_file", nargs="?")
    p.add_argument("--root", default="sweeps-out")
    p.add_argument("--address", help="a running Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--workers", type=int, default=2, help="local cluster size (no --address)")
    a = p.parse_args(argv)
    with _shared_prefect_server():
        sweep(a.sweep_file, a.params_file, a.root, a.address, a.workers)


@contextlib.contextmanager
def _shared_prefect_server() -> Iterator[None]:
    """Without PREFECT_API_URL every Dask worker process would start a temporary Prefect server of its
    own and record its task runs there; start one here and hand its URL to the workers instead."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by the local cluster's workers
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # before the server goes: else exit retries for a minute
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


if __name__ == "__main__":
    main()
