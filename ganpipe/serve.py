"""`ganpipe serve`: a Prefect server, an MLflow tracking server and a Prefect process worker on
127.0.0.1, each its own subprocess, for scheduled pipeline runs (`flows/deploy.py`).

State lives under one directory (default `.ganpipe_serve/`):

  prefect/            PREFECT_HOME: the Prefect server's SQLite database (prefect.db), profiles
  mlflow.db           the MLflow backend store (SQLite)
  mlartifacts/        MLflow artifacts, served by the MLflow server (--artifacts-destination)
  logs/{prefect-server,mlflow-server,worker}.log

Postgres instead of SQLite: `--prefect-db-url postgresql+asyncpg://user:pass@host/db` (or
PREFECT_SERVER_DATABASE_CONNECTION_URL in the environment) and `--mlflow-backend-store-uri
postgresql://user:pass@host/db`.

The worker's flow runs get PREFECT_API_URL and MLFLOW_TRACKING_URI pointing at the two servers.
Each service is started in its own process group and waited for (Prefect `/api/health`, MLflow
`/health`, the worker: registered with its pool); on failure the error names the service and shows
its log's tail. Stopping (Ctrl-C, SIGTERM, leaving the `Services` context) terminates every process
group and any descendants (flow runs start in their own sessions), then kills what is left.

`shared_prefect_server` is the light alternative for one command (a sweep): a temporary Prefect
server for this process and its Dask workers, unless PREFECT_API_URL already names one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ganpipe.orchestration import console_script

DEFAULT_STATE = Path(".ganpipe_serve")
POOL = "ganpipe"


class ServiceError(RuntimeError):
    pass


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def fail(self, why: str) -> ServiceError:
        return ServiceError(f"{self.name}: {why} (log {self.log}):\n{self.tail()}")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise self.fail(f"exited with status {self.proc.returncode}")


def _get(url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        text = r.read().decode()
    try:
        return r.status, json.loads(text) if text.strip() else None
    except ValueError:  # MLflow's /health answers "OK"
        return r.status, text


@dataclass
class Services:
    """The three services, started in `start()` (or `with Services(...) as s:`), stopped in
    `stop()`. Ports default to Prefect's and MLflow's usual ones; tests pass free ports."""

    state_dir: Path = DEFAULT_STATE
    host: str = "127.0.0.1"
    prefect_port: int = 4200
    mlflow_port: int = 5000
    pool: str = POOL
    prefect_db_url: str | None = None
    mlflow_backend_store_uri: str | None = None
    mlflow_artifacts: Path | None = None
    worker: bool = True
    # How often the worker asks for runs (Prefect's default: 10 s).
    poll_seconds: float | None = None
    timeout: float = 120.0
    extra_env: dict[str, str] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        if self.mlflow_artifacts is None:
            self.mlflow_artifacts = self.state_dir / "mlartifacts"
        self.mlflow_artifacts = Path(self.mlflow_artifacts).resolve()
        if self.mlflow_backend_store_uri is None:
            self.mlflow_backend_store_uri = f"sqlite:///{self.state_dir / 'mlflow.db'}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    def client_env(self) -> dict[str, str]:
        """What a client of these services (the worker, a deploy script, a shell) needs."""
        return {"PREFECT_API_URL": self.prefect_api_url, "MLFLOW_TRACKING_URI": self.mlflow_uri}

    def _env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        env.update(PREFECT_HOME=str(self.state_dir / "prefect"))
        env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # MLflow's server otherwise starts five job-queue processes (~280 MB each) for its GenAI
        # jobs (evaluation, trace roll-ups), which ganpipe never submits. Set it to true to keep them.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        env.update(extra)
        return env

    def _service(self, name: str, argv: list[str], env: dict[str, str]) -> Service:
        s = Service(name, argv, env, self.state_dir / "logs" / f"{name}.log")
        self.services.append(s)
        s.start()
        return s

    def _wait(self, service: Service, ready: Any, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            service.check_alive()
            try:
                if ready():
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise service.fail(f"not {what} after {self.timeout:.0f} s")
            time.sleep(0.5)

    def start(self) -> Services:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        server_env = self._env(PREFECT_API_URL=self.prefect_api_url)
        if self.prefect_db_url:
            server_env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.prefect_db_url
        server_env.pop("MLFLOW_TRACKING_URI", None)
        prefect = self._service(
            "prefect-server",
            [console_script("prefect"), "server", "start", "--host", self.host,
             "--port", str(self.prefect_port)],
            server_env,
        )  # fmt: skip
        mlflow = self._service(
            "mlflow-server",
            [console_script("mlflow"), "server", "--host", self.host,
             "--port", str(self.mlflow_port), "--workers", "1",
             "--backend-store-uri", str(self.mlflow_backend_store_uri),
             "--artifacts-destination", str(self.mlflow_artifacts)],
            self._env(),
        )  # fmt: skip
        # both start at once; wait for each
        self._wait(mlflow, lambda: _get(f"{self.mlflow_uri}/health")[0] == 200, "healthy")
        self._wait(prefect, lambda: _get(f"{self.prefect_api_url}/health")[0] == 200, "healthy")
        if not self.worker:
            return
        worker_env = self._env(**self.client_env())
        if self.poll_seconds is not None:
            worker_env["PREFECT_WORKER_QUERY_SECONDS"] = str(self.poll_seconds)
        worker = self._service(
            "worker",
            [console_script("prefect"), "worker", "start", "--pool", self.pool,
             "--type", "process", "--name", f"ganpipe-{os.getpid()}"],
            worker_env,
        )  # fmt: skip
        url = f"{self.prefect_api_url}/work_pools/{self.pool}/workers/filter"
        self._wait(worker, lambda: bool(_get(url, {})[1]), f"registered with pool {self.pool!r}")

    def pids(self) -> list[int]:
        """Every process of the services now: the top-level ones and all their descendants."""
        import psutil

        out: list[int] = []
        for s in self.services:
            if s.proc is None or s.proc.poll() is not None:
                continue
            out.append(s.proc.pid)
            try:
                out += [c.pid for c in psutil.Process(s.proc.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return out

    def check(self) -> None:
        """Raise ServiceError if a service has died."""
        for s in self.services:
            s.check_alive()

    def stop(self, grace: float = 15.0) -> None:
        """Terminate every process group (worker first), then any descendant left, then kill."""
        import psutil

        procs: list[psutil.Process] = []
        for pid in self.pids():
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass

        def send(sig: int, services: list[Service], processes: list[psutil.Process]) -> None:
            for s in services:
                if s.proc is not None and s.proc.poll() is None:
                    _signal_group(s.proc.pid, sig)
            for p in processes:
                try:
                    p.send_signal(sig)
                except psutil.NoSuchProcess:
                    pass

        send(signal.SIGTERM, list(reversed(self.services)), procs)
        _, alive = psutil.wait_procs(procs, timeout=grace)
        send(signal.SIGKILL, self.services, alive)
        psutil.wait_procs(alive, timeout=5)
        for s in self.services:
            if s.proc is not None:
                try:
                    s.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self.services.clear()

    def __enter__(self) -> Services:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session: the group id is the leader's pid
    except ProcessLookupError:
        pass


@contextmanager
def shared_prefect_server() -> Iterator[None]:
    """Without PREFECT_API_URL every Dask worker process would start a temporary Prefect server of
    its own and record its task runs there; start one here and hand its URL to the workers instead
    (in the environment, which a local cluster's worker processes inherit)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # before the server goes: else exit retries for a minute
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


# ---- CLI -------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--state-dir", type=Path, default=DEFAULT_STATE, help=f"(default: {DEFAULT_STATE})")
    a("--host", default="127.0.0.1", help="(default: 127.0.0.1)")
    a("--prefect-port", type=int, default=4200, help="(default: 4200)")
    a("--mlflow-port", type=int, default=5000, help="(default: 5000)")
    a("--pool", default=POOL, help=f"the process work pool the worker polls (default: {POOL})")
    a(
        "--prefect-db-url",
        default=os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL"),
        help="Prefect database URL, e.g. postgresql+asyncpg://... (default: SQLite in the state dir)",
    )
    a(
        "--mlflow-backend-store-uri",
        default=None,
        help="MLflow backend store (default: sqlite:///<state-dir>/mlflow.db)",
    )
    a("--mlflow-artifacts", type=Path, default=None, help="(default: <state-dir>/mlartifacts)")
    a("--no-worker", dest="worker", action="store_false", help="servers only")
    a("--poll-seconds", type=float, default=None, help="worker poll interval (Prefect: 10)")
    a("--timeout", type=float, default=120.0, help="seconds to wait for each service (default 120)")


def main(args: argparse.Namespace) -> int:
    services = Services(
        state_dir=args.state_dir, host=args.host, prefect_port=args.prefect_port,
        mlflow_port=args.mlflow_port, pool=args.pool, prefect_db_url=args.prefect_db_url,
        mlflow_backend_store_uri=args.mlflow_backend_store_uri,
        mlflow_artifacts=args.mlflow_artifacts, worker=args.worker,
        poll_seconds=args.poll_seconds, timeout=args.timeout,
    )  # fmt: skip

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        with services:
            print(f"Prefect UI   http://{args.host}:{args.prefect_port}", flush=True)
            print(f"MLflow UI    {services.mlflow_uri}", flush=True)
            print(f"logs         {services.state_dir / 'logs'}/", flush=True)
            print("In another shell:", flush=True)
            for k, v in services.client_env().items():
                print(f"  export {k}={v}", flush=True)
            print(
                "  python flows/deploy.py --cron '0 2 * * *'   # then: Ctrl-C here stops all",
                flush=True,
            )
            while True:
                services.check()
                time.sleep(1.0)
    except ServiceError as e:
        print(f"ganpipe serve: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ganpipe serve: stopped", file=sys.stderr)
        return 0
