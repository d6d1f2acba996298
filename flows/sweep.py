"""Parameter sweeps: K configurations of the pipeline trained in parallel on a Dask cluster.

    python flows/sweep.py sweeps/example.yaml                      # params.yaml, 2 local workers
    python flows/sweep.py sweeps/example.yaml my.yaml --workers 4
    python flows/sweep.py sweeps/example.yaml --address tcp://scheduler:8786

Wiring only: the sweep's logic is in `ganpipe/orchestration/sweep.py`, its markdown artifact `ganpipe-sweep`
in `ganpipe/orchestration/report.py`. Each configuration is a Prefect task that `DaskTaskRunner` sends to a
Dask worker once the prepare+classifier task it shares with the configs of its dataset is done.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

import ganpipe.orchestration.sweep as sweeps
from ganpipe.config import Params
from ganpipe.mlflow_adapter.runinfo import run_title
from ganpipe.mlflow_adapter.tracking import tracked_run
from ganpipe.orchestration.report import sweep_report
from ganpipe.pipeline import Paths
from ganpipe.serve import shared_prefect_server

REPORT_KEY = "ganpipe-sweep"


@task(cache_policy=NO_CACHE)
def prepare_shared(params: Params, paths: Paths) -> dict[str, Any]:
    """prepare and classifier for every config of one dataset (`sweeps.run_shared`)."""
    return sweeps.run_shared(params, paths, get_run_logger())


@task(cache_policy=NO_CACHE)
def train_config(
    name: str, params: Params, paths: Paths, sweep_id: str, parent_run_id: str | None
) -> dict[str, Any]:
    """One configuration, in a Dask worker (`sweeps.run_config`)."""
    return sweeps.run_config(name, params, paths, sweep_id, parent_run_id, get_run_logger())


@flow(name="ganpipe-sweep-configs")
def train_configs(
    shared: dict[str, dict[str, Any]], jobs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Submit the shared stages, then every configuration once its shared stages are done, to this
    flow's task runner (Dask); wait for all. A failed configuration is reported with its error
    rather than stopping the others."""
    submit = {k: prepare_shared.with_options(name=f"shared-{k}").submit for k in shared}
    ready = {key: submit[key](**job) for key, job in shared.items()}
    futures = []
    for job in jobs:
        upstream = ready[job.pop("shared_key")]
        task_ = train_config.with_options(name=f"config-{job['name']}")
        futures.append((job, upstream, task_.submit(**job, wait_for=[upstream])))
    results = []
    for job, upstream, future in futures:
        future.wait()
        if future.state.is_completed():
            results.append(future.result())
        else:
            results.append(sweeps.failed_result(job, upstream.state, future.state))
    return results


def dask_runner(scheduler_address: str | None, n_workers: int) -> Any:
    """The one place the sweep's task runner is built: a running cluster, or a local one."""
    from prefect_dask import DaskTaskRunner

    if scheduler_address:
        return DaskTaskRunner(address=scheduler_address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True}
    )


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

    Outputs: `<root>/<sweep_id>/<config>/`; `sweep_id` defaults to a timestamp and a short uuid.
    With `scheduler_address` the tasks run on that Dask cluster (its workers need this project
    installed, and `root` and the MLflow store on storage they share); else on a local cluster of
    `n_workers` processes. With tracking on: an MLflow parent run, each config a child run."""
    log = get_run_logger()
    spec = sweeps.load_sweep(sweep_file)
    configs = [(c, spec.params(c, params_file)) for c in spec.configs]  # all checked first
    base = spec.base_params(params_file)
    sweep_id = sweep_id or sweeps.new_sweep_id()
    out = Path(root).resolve() / sweep_id
    with tracked_run(base, run_name=run_title(base, label=f"sweep-{sweep_id}")) as parent:
        sweeps.describe_parent(parent, spec, sweep_file, sweep_id, out)
        log.info("sweep %s: %d configs into %s", sweep_id, len(configs), out)
        shared, jobs = sweeps.plan_runs(configs, out, sweep_id, parent.run_id)
        runner = dask_runner(scheduler_address, n_workers)
        results = train_configs.with_options(task_runner=runner)(shared, jobs)
        best = sweeps.pick_best(spec, sweep_id, results, log)
        sweeps.record_best(parent, spec, results, best, base.tracking)
    create_markdown_artifact(
        sweep_report(spec, sweep_id, results, best),
        key=REPORT_KEY,
        description=f"ganpipe sweep {sweep_id}: configurations and the best by {spec.metric}",
    )
    print(f"best: {best['name']} {spec.metric}={best['metrics'][spec.metric]} ({best['root']})")
    return {"sweep_id": sweep_id, "root": str(out), "metric": spec.metric, "mode": spec.mode,
            "best": best, "results": results, "parent_run_id": parent.run_id}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="flows/sweep.py", description=__doc__.split("\n")[0])
    p.add_argument("sweep_file")
    p.add_argument("params_file", nargs="?")
    p.add_argument("--root", default="sweeps-out")
    p.add_argument("--address", help="a running Dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--workers", type=int, default=2, help="local cluster size (no --address)")
    a = p.parse_args(argv)
    with shared_prefect_server():
        sweep(a.sweep_file, a.params_file, a.root, a.address, a.workers)


if __name__ == "__main__":
    main()
