"""Deploy `flows/pipeline.py:pipeline` to the `ganpipe` process work pool on a cron schedule.

    ganpipe serve &                                   # Prefect + MLflow servers and a worker
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python flows/deploy.py --cron "0 2 * * *"         # nightly at 02:00 (server's timezone: UTC)
    python flows/deploy.py --params params.yaml --set train.epochs=3 --root /data/ganpipe

The flow's code is read from this checkout at run time (`flow.from_source` on the local directory:
no image, no push); the worker runs each flow run in a subprocess with its own environment, so
MLFLOW_TRACKING_URI comes from the worker (`ganpipe serve` points it at its MLflow server).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/pipeline.py:pipeline"
FLOW_NAME = "ganpipe-pipeline"
DEFAULT_CRON = "0 2 * * *"
DEFAULT_NAME = "nightly"


def deploy(
    cron: str = DEFAULT_CRON,
    name: str = DEFAULT_NAME,
    params_file: str | None = None,
    overrides: list[str] | None = None,
    root: str | None = None,
    pool: str = "ganpipe",
    timezone: str | None = None,
    paused: bool = False,
) -> UUID:
    """Create or update deployment `ganpipe-pipeline/<name>`; return its id. Params file and root
    are made absolute (flow runs start in the source directory, not the caller's)."""
    from prefect import flow
    from prefect.client.schemas.schedules import CronSchedule

    parameters: dict[str, Any] = {
        "params_file": str(Path(params_file).resolve()) if params_file else None,
        "overrides": list(overrides or []),
        "root": str(Path(root).resolve()) if root else str(REPO),
    }
    remote = flow.from_source(source=str(REPO), entrypoint=ENTRYPOINT)
    # `to_deployment(...).apply()` is what `remote.deploy(..., build=False, push=False)` does, minus
    # its listing of the pool's workers, which Prefect 3.8.8's client sends with explicit nulls
    # that its own server (under fastapi 0.154) rejects with a 422.
    deployment = remote.to_deployment(
        name=name,
        work_pool_name=pool,
        schedule=CronSchedule(cron=cron, timezone=timezone),
        parameters=parameters,
        paused=paused,
    )
    return deployment.apply()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cron", default=DEFAULT_CRON, help=f"(default: {DEFAULT_CRON!r})")
    p.add_argument("--timezone", default=None, help="IANA name, e.g. Europe/Berlin (default UTC)")
    p.add_argument(
        "--name", default=DEFAULT_NAME, help=f"deployment name (default: {DEFAULT_NAME})"
    )
    p.add_argument("--params", default=None, help="params file (default: the flow's params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="S.K=V")
    p.add_argument("--root", default=None, help="where the outputs go (default: this checkout)")
    p.add_argument("--pool", default="ganpipe", help="process work pool (default: ganpipe)")
    p.add_argument("--paused", action="store_true", help="create the schedule paused")
    args = p.parse_args(argv)
    deployment_id = deploy(
        args.cron, args.name, args.params, args.overrides, args.root, args.pool,
        args.timezone, args.paused,
    )  # fmt: skip
    print(f"deployment {FLOW_NAME}/{args.name} ({deployment_id}): cron {args.cron!r}")
    print(f"run it now: prefect deployment run {FLOW_NAME}/{args.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
