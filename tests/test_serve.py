"""`ganpipe serve` for real (Prefect server, MLflow server, process worker on free ports), a cron
deployment of the pipeline, one run of it through the worker, then, on that one set of services
and that run: the README's `prefect` commands, the UI pages in headless Chromium (tests/ui.py), a
cancelled run and its resumption, and a clean stop on SIGTERM (last: the module's tests run in
file order)."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests import ui
from tests.helpers import GANPIPE, TINY, quiet_env

# What Prefect 3.8.8's server logged when its scheduler met SQLAlchemy 2.1 (fixed in 3.9; kept as a diagnosis).
SCHEDULER_BUG = "Can't evaluate bulk DML statement"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_ready(proc: subprocess.Popen, seconds: float = 180) -> str:
    """What `ganpipe serve` printed up to the end of its "In another shell" block (the deploy
    line), which comes once every service is up (the worker registered with its pool). Reads the
    pipe unbuffered (os.read), so select() sees every byte that has not been read yet; waits for
    the block's last line, since the block may arrive in more than one read."""
    fd, out, deadline = proc.stdout.fileno(), "", time.monotonic() + seconds
    while "flows/deploy.py --cron" not in out:
        assert time.monotonic() < deadline, f"ganpipe serve not ready:\n{out}"
        if select.select([fd], [], [], 1.0)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"ganpipe serve exited ({proc.wait()}):\n{out}"
            out += chunk.decode(errors="replace")
    return out


def flow_run_state(api: str, run_id: str) -> str:
    return httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).json()["state"]["type"]


def cancel_a_run_then_resume_it(api: str, mlflow_uri: str, root: Path) -> None:
    """A longer deployment run, cancelled from the API mid-training (the worker sends SIGTERM):
    the earlier run's outputs stay whole, the workspace lock is released, the MLflow run is KILLED
    and no model is registered; the next run resumes training from the cancelled one's checkpoint."""
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import FLOW_NAME
    from tests.test_concurrency import digest

    with temporary_settings({PREFECT_API_URL: api}):
        _cancel_and_resume(api, mlflow_uri, root, MlflowClient, run_deployment, FLOW_NAME, digest)


def _cancel_and_resume(api, mlflow_uri, root, MlflowClient, run_deployment, FLOW_NAME, digest):  # noqa: N803
    from tests.test_concurrency import just_past_the_last_checkpoint

    longer = {"overrides": ["tracking.enabled=true", "train.epochs=80"]}
    outputs = digest(root, "models", "metrics", "data/synthetic", "data/augmented")
    ckpts = set(root.glob("checkpoints/*/ckpt_*.npz"))
    # started as the README says, with `prefect deployment run` (its parameters as JSON)
    out = prefect_cli(
        api,
        "deployment",
        "run",
        f"{FLOW_NAME}/test",
        "--param",
        f"overrides={json.dumps(longer['overrides'])}",
    )
    run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    deadline = time.monotonic() + 240
    while not set(root.glob("checkpoints/*/ckpt_*.npz")) - ckpts:  # training is under way
        assert flow_run_state(api, run_id) in ("SCHEDULED", "PENDING", "RUNNING")
        assert time.monotonic() < deadline, "the longer run wrote no checkpoint"
        time.sleep(0.5)
    cancel = {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True}
    httpx.post(f"{api}/flow_runs/{run_id}/set_state", json=cancel, timeout=30)
    deadline = time.monotonic() + 180
    while (state := flow_run_state(api, run_id)) != "CANCELLED":
        assert time.monotonic() < deadline, f"not cancelled: {state}"
        time.sleep(1)

    assert digest(root, "models", "metrics", "data/synthetic", "data/augmented") == outputs
    assert (root / ".ganpipe.lock").read_text() == ""  # released by the flow, not by a kill
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("ganpipe").experiment_id
    latest = client.search_runs([exp], order_by=["start_time DESC"])[0]
    assert latest.info.status == "KILLED"
    assert len(client.search_model_versions("name = 'ganpipe-generator'")) == 1

    # resumed to just past the cancelled run's last checkpoint, not to its 80 epochs
    resume = {"overrides": ["tracking.enabled=true", just_past_the_last_checkpoint(root)]}
    resumed = run_deployment(f"{FLOW_NAME}/test", parameters=resume, timeout=300, poll_interval=1)
    assert resumed.state.is_completed(), resumed.state
    logs = httpx.post(
        f"{api}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [str(resumed.id)]}}, "limit": 200},
        timeout=30,
    ).json()
    assert any("resuming from step" in entry["message"] for entry in logs), logs[-20:]


def prefect_cli(api: str, *args: str) -> str:
    """`prefect <args>` against the served API, as the README has a user run it; must exit 0.
    Wide COLUMNS: rich's tables would otherwise cut names and ids to fit 80 columns."""
    prefect = str(Path(GANPIPE).parent / "prefect")
    env = quiet_env(PREFECT_API_URL=api, COLUMNS="250", NO_COLOR="1")
    r = subprocess.run([prefect, *args], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (
        f"prefect {' '.join(args)}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    )
    return r.stdout


@dataclass
class Served:
    """`ganpipe serve`'s process and URLs, the deployment and its first run (completed)."""

    proc: subprocess.Popen
    printed: str
    api: str
    mlflow_uri: str
    state: Path
    root: Path
    deployment_id: str
    run_id: str
    run_name: str


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    """`ganpipe serve` as a user starts it, a cron deployment (tiny params, tracking on) and one
    run through its worker. Stopped at the end unless test_stop_on_sigterm did it."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import FLOW_NAME, deploy

    tmp = tmp_path_factory.mktemp("serve")
    state, root = tmp / "state", tmp / "root"
    prefect_port, mlflow_port = free_port(), free_port()
    api, mlflow_uri = f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}"
    proc = subprocess.Popen(
        [GANPIPE, "serve", "--state-dir", str(state), "--poll-seconds", "1",
         "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)],
        env=quiet_env(PREFECT_LOGGING_LEVEL="INFO"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0,
    )  # fmt: skip
    try:
        printed = wait_ready(proc)
        with pytest.MonkeyPatch.context() as mp, temporary_settings({PREFECT_API_URL: api}):
            mp.setenv("PREFECT_API_URL", api)
            mp.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
            dep_id = deploy(
                cron="15 3 * * 1-5",
                name="test",
                params_file=str(TINY),
                overrides=["tracking.enabled=true"],
                root=str(root),
            )
            t0 = time.perf_counter()
            run = run_deployment(f"{FLOW_NAME}/test", timeout=240, poll_interval=1)
            print(f"\ntrigger -> completed: {time.perf_counter() - t0:.1f} s")
            log = (state / "logs" / "worker.log").read_text()[-3000:]
            assert run.state.is_completed(), f"{run.state}\n{log}"
            yield Served(
                proc, printed, api, mlflow_uri, state, root, str(dep_id), str(run.id), run.name
            )
    finally:
        if proc.poll() is None:  # a failed check: stop the services too, not just the CLI
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def latest_report(api: str) -> dict:
    body = {"artifacts": {"key": {"any_": ["ganpipe-report"]}}, "limit": 1, "sort": "CREATED_DESC"}
    found = httpx.post(f"{api}/artifacts/filter", json=body, timeout=30).json()
    assert found, "no ganpipe-report artifact"
    return found[0]


def test_deployed_run_promotes_and_the_scheduler_schedules(served: Served):
    """The deployment has its cron and pool; the run through the worker published its report,
    promoted the first model and logged to the MLflow server; the scheduler made the cron's
    upcoming runs."""
    from mlflow import MlflowClient

    api, mlflow_uri = served.api, served.mlflow_uri
    assert f"export PREFECT_API_URL={api}" in served.printed
    dep = httpx.get(f"{api}/deployments/{served.deployment_id}", timeout=30).json()
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["15 3 * * 1-5"]
    assert dep["work_pool_name"] == "ganpipe"

    found = latest_report(api)
    assert found["flow_run_id"] == served.run_id
    report = found["data"]
    assert "## Champion: promoted" in report and "first model" in report
    assert f"{mlflow_uri}/#/experiments/" in report

    # the server's scheduler puts the cron's next runs on the calendar (or fails: see below)
    body = {
        "flow_runs": {
            "deployment_id": {"any_": [served.deployment_id]},
            "state": {"type": {"any_": ["SCHEDULED"]}},
        },
        "limit": 10,
    }
    server_log = served.state / "logs" / "prefect-server.log"
    deadline = time.monotonic() + 60
    while not (scheduled := httpx.post(f"{api}/flow_runs/filter", json=body).json()):
        assert SCHEDULER_BUG not in server_log.read_text(errors="replace"), server_log
        assert time.monotonic() < deadline, "the scheduler scheduled no runs"
        time.sleep(1)
    assert all(r["auto_scheduled"] for r in scheduled)

    client = MlflowClient(mlflow_uri)
    champion = client.get_model_version_by_alias("ganpipe-generator", "champion")
    mlrun = client.get_run(champion.run_id)
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.tags["promotion.decision"] == "promoted"
    assert "classifier_fd" in mlrun.data.metrics
    # the MLflow run names its Prefect flow run and links back to it
    assert mlrun.info.run_name.endswith(f" · prefect:{served.run_name}"), mlrun.info.run_name
    assert mlrun.data.tags["prefect.flow_run_id"] == served.run_id
    assert mlrun.data.tags["prefect.flow_run_url"].endswith(f"/runs/flow-run/{served.run_id}")
    assert mlrun.data.tags["mlflow.source.name"] == "prefect flow ganpipe-pipeline"
    assert (served.root / "metrics" / "eval.json").exists()


def test_prefect_cli_against_serve(served: Served):
    """The `prefect` commands a user runs against `ganpipe serve` (README, Scheduled runs) answer
    (Prefect 3.8.8's client got HTTP 422 from its own server for several of them) and list what is
    there. `prefect deployment run` is exercised by test_cancel_then_resume."""
    api, run_id = served.api, served.run_id
    out = prefect_cli(api, "deployment", "ls")
    assert "ganpipe-pipeline/test" in out and served.deployment_id in out
    out = prefect_cli(api, "work-pool", "ls")
    assert re.search(r"ganpipe\s.*\sprocess\s", out), out
    out = prefect_cli(api, "flow-run", "ls")
    assert re.search(rf"{run_id}.*{served.run_name}.*COMPLETED", out), out
    out = prefect_cli(api, "artifact", "ls")
    assert re.search(rf"{latest_report(api)['id']}.*ganpipe-report.*markdown", out), out
    out = prefect_cli(api, "flow-run", "logs", run_id)
    assert f"Beginning flow run '{served.run_name}'" in out
    assert "Finished in state Completed()" in out


def test_ui_pages_in_headless_chromium(served: Served, tmp_path):
    """What a user sees after the run: the Prefect flow-run page (state Completed, the report on
    its Artifacts tab), the report itself (title, champion section, every image loaded), the MLflow
    run it links to, and the registered model's `champion` alias. Screenshots: $GANPIPE_UI_SHOTS
    (a directory) or the test's tmp_path."""
    from mlflow import MlflowClient

    shots = Path(os.environ.get("GANPIPE_UI_SHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(served.mlflow_uri)
    champion = client.get_model_version_by_alias("ganpipe-generator", "champion")
    mlrun = client.get_run(champion.run_id)
    prefect_ui = served.api.removesuffix("/api")
    t0 = time.perf_counter()
    with ui.browser_page() as page:
        ui.check_prefect_flow_run(page, prefect_ui, served.run_id, served.run_name, shots)
        mlflow_link = ui.check_prefect_report(page, latest_report(served.api)["data"], shots)
        assert (
            mlflow_link.startswith(served.mlflow_uri)
            and f"/runs/{mlrun.info.run_id}?" in mlflow_link
        )
        ui.check_mlflow_run(page, mlflow_link, mlrun.info.run_id, mlrun.info.run_name, shots)
        ui.check_mlflow_champion(
            page, served.mlflow_uri, "ganpipe-generator", champion.version, shots
        )
    print(f"\nUI checks: {time.perf_counter() - t0:.1f} s; screenshots in {shots}")


def test_cancel_then_resume(served: Served):
    cancel_a_run_then_resume_it(served.api, served.mlflow_uri, served.root)


def test_stop_on_sigterm(served: Served):
    """SIGTERM to `ganpipe serve` stops every service (and their children), and it exits 0."""
    proc = served.proc
    children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    assert len(children) >= 3  # Prefect server, MLflow server, worker (and their children)
    os.kill(proc.pid, signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode == 0, served.printed + out
    assert "MLflow UI" in served.printed and "stopped" in out
    assert all(gone(p) for p in children), [p for p in children if not gone(p)]
