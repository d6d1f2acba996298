"""A tracking server that is down before the run, or goes away during it: a real `mlflow server`,
real `ganpipe` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import quiet_env, run, tiny_project
from tests.test_concurrency import PAUSABLE, start, wait_for_checkpoint
from tests.test_serve import free_port


@contextmanager
def mlflow_server(db: Path, port: int) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1:`port` over the SQLite store `db`, as a user starts one."""
    from ganpipe.orchestration import console_script

    log = open(db.with_suffix(f".{port}.log"), "ab")
    proc = subprocess.Popen(
        [console_script("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{db}",
         "--artifacts-destination", str(db.parent / "mlartifacts")],
        env=quiet_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, "mlflow server exited"
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server not healthy"
                time.sleep(0.5)
        yield uri
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the server and its uvicorn worker
            proc.wait(timeout=60)
        log.close()


def test_unreachable_server_stops_the_run_before_any_work(tmp_path):
    root = tiny_project(tmp_path / "w", tracking=True)
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    result = run(["ganpipe", "run", "--quiet", "--set", f"tracking.uri={uri}"], cwd=root)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"the MLflow tracking server {uri} is not reachable" in result.stderr
    assert "tracking.enabled=false" in result.stderr
    assert not (root / "data").exists() and not (root / "models").exists()
    assert time.monotonic() - t0 < 60


def test_server_lost_mid_training_keeps_the_outputs_and_a_rerun_resumes(tmp_path):
    """The server dies while `ganpipe train` runs: training finishes, the model is written, the
    command fails naming the URI and the stage; with the server back, a rerun picks up the finished
    checkpoint (no training again) and records the run."""
    from mlflow import MlflowClient

    root = tiny_project(tmp_path / "w", tracking=True)
    db, port = tmp_path / "mlflow.db", free_port()
    assert run(["ganpipe", "prepare", "--quiet"], cwd=root).returncode == 0
    args = ["ganpipe", "train", "--quiet", "--set", PAUSABLE]
    # ganpipe's retries of a request to a dead server (HTTP_RETRY_DEFAULTS), without the waits
    # between them: the same failures, seconds sooner.
    no_waits = {
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    }
    with mlflow_server(db, port) as uri:
        train = start([*args, "--set", f"tracking.uri={uri}"], root, **no_waits)
        try:
            wait_for_checkpoint(root, train)
        except BaseException:
            train.kill()
            raise
        os.kill(train.pid, signal.SIGSTOP)  # paused mid-training until the server is gone
    try:  # the server is gone now
        os.kill(train.pid, signal.SIGCONT)
        out, err = train.communicate(timeout=600)
    finally:
        train.kill()
    assert train.returncode == 2, err[-3000:]
    assert "Traceback" not in err
    assert f"the MLflow tracking store {uri} stopped answering during the train stage" in err
    assert (root / "models" / "generator.keras").exists()
    assert (root / "models" / "train_summary.json").exists()

    with mlflow_server(db, port) as uri:
        again = run([*args, "--set", f"tracking.uri={uri}"], cwd=root)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "nothing to do" in again.stdout  # the finished checkpoint, not a second training
        client = MlflowClient(uri)
        runs = client.search_runs(["0", "1"], order_by=["start_time DESC"])
        assert runs[0].info.status == "FINISHED"
        # the generator is logged this time (registering it is evaluate's: tests/test_mlflow_runs)
        logged = client.search_logged_models(
            ["1"], filter_string=f"source_run_id = '{runs[0].info.run_id}'"
        )
        assert [m.name for m in logged] == ["generator"]
