"""The Prefect flow on the tiny config, under the session's one test harness (conftest.py)."""

from __future__ import annotations

import base64
import json
import math
import re

import pytest

from tests.helpers import TINY


def read_report() -> str:
    """The latest `ganpipe-report` artifact, read over the REST API. (Prefect 3.8.8's own client
    sends explicit nulls for unset filter fields, which its server under fastapi 0.154 rejects.)"""
    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"key": {"any_": ["ganpipe-report"]}}, "limit": 1, "sort": "CREATED_DESC"}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body, timeout=30)
    response.raise_for_status()
    found = response.json()
    assert found, "no ganpipe-report artifact"
    return str(found[0]["data"])


def image_source(report: str) -> str:
    """The source of the report's one markdown image (the sample grid)."""
    [source] = re.findall(r"!\[sample grid[^\]]*\]\(([^)\s]+)\)", report)
    return source


def test_bad_data_fails_without_retry(harness, tmp_path, monkeypatch):
    import flows.pipeline as fp
    from ganpipe.errors import DataError

    calls: list[str] = []

    def broken(name, *args, **kwargs):
        calls.append(name)
        raise DataError("data/raw/x.png: not an image")

    monkeypatch.setattr(fp, "run_stage", broken)
    with pytest.raises(DataError, match="not an image"):
        fp.pipeline(params_file=str(TINY), root=str(tmp_path))
    assert calls == ["prepare"]


def test_flow_retries_reports_and_skips_stages_unchanged_by_dvc_status(
    harness, tmp_path, monkeypatch
):
    """One pipeline in a DVC repository, run four times: all stages (a transient failure retried)
    and a report; nothing (every stage up to date by dvc status); only what a param change
    touches; and everything when overrides make dvc.lock's record inapplicable."""
    import yaml

    import flows.pipeline as fp
    from ganpipe.errors import DataError
    from tests.test_dvc import full_params, make_repo

    repo = make_repo(tmp_path, full_params(TINY))
    params_file = str(repo / "params.yaml")
    ran: list[str] = []
    real = fp.run_stage
    hiccups = ["generate"]  # one transient failure, in the first run: the task retries

    def counting(name, *args, **kwargs):
        ran.append(name)
        if name in hiccups:
            hiccups.remove(name)
            raise OSError("disk hiccup")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(fp, "run_stage", counting)
    result = fp.pipeline(params_file=params_file, root=str(repo))
    # first run: everything, generate twice (retried), recorded in dvc.lock
    assert ran == [
        "prepare",
        "train",
        "generate",
        "generate",
        "classifier",
        "utility",
        "augment",
        "evaluate",
    ]
    assert set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"]) == set(fp.STAGES)
    assert (repo / "metrics/eval.json").exists()
    assert 0.0 <= result["evaluate"]["conditional_accuracy"] <= 1.0
    report = read_report()
    assert "conditional_accuracy" in report
    assert "**Does it help?** not measured: the utility stage is disabled" in report  # (default)
    assert "**Champion:** no promotion (tracking is off)" in report
    # tracking off: the workspace's grid, embedded (Prefect's UI renders a data: image source)
    png = base64.b64decode(image_source(report).removeprefix("data:image/png;base64,"))
    assert png == (repo / "data" / "synthetic" / "grid.png").read_bytes()
    latest = report.index("## Latest outputs (overwritten by the next run)")
    assert report.index(str(repo / "models" / "generator.keras")) > latest

    ran.clear()
    again = fp.pipeline(params_file=params_file, root=str(repo))
    assert ran == []  # nothing changed: every stage skipped
    assert again["train"] == {"skipped": True}
    assert "conditional_accuracy" in again["evaluate"]  # the report still has the metrics
    skipped_report = read_report()
    assert re.search(r"\| num_real \| \d+ \|", skipped_report)  # counts as integers
    assert "**Does it help?** not measured" in skipped_report  # from utility.json: not "not known"

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["generate"]["per_class"] = 13
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ran.clear()
    fp.pipeline(params_file=params_file, root=str(repo))
    assert ran == ["generate", "utility", "augment", "evaluate"]  # downstream of the change only

    # Overrides differ from what dvc.lock records: no skipping. The first stage runs although
    # dvc.lock vouches for it; it stops the run there (a DataError is not retried) to save time.
    def stop_at_first(name, *args, **kwargs):
        ran.append(name)
        raise DataError("stopped after the first stage")

    ran.clear()
    monkeypatch.setattr(fp, "run_stage", stop_at_first)
    with pytest.raises(DataError, match="stopped after the first stage"):
        fp.pipeline(params_file=params_file, root=str(repo), overrides=["generate.seed=5"])
    assert ran == ["prepare"]


def test_flow_stops_at_once_in_a_workspace_another_process_holds(harness, tmp_path):
    """The flow holds its workspace's lock for the whole run: beside another holder it fails at
    once (no retry, nothing written), naming that process."""
    import subprocess
    import sys
    import time

    import flows.pipeline as fp
    from ganpipe.lock import WorkspaceBusy

    root = tmp_path / "root"
    script = (
        "import sys\n"
        "from ganpipe.lock import workspace_lock\n"
        "from ganpipe.paths import Paths\n"
        f"with workspace_lock(Paths.under({str(root)!r}), command='ganpipe run (by hand)'):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(WorkspaceBusy, match=rf"pid {holder.pid} .*ganpipe run \(by hand\)"):
            fp.pipeline(params_file=str(TINY), root=str(root), update=False)
        assert time.monotonic() - t0 < 60
        assert not (root / "data").exists()
    finally:
        holder.communicate("")


def test_flow_completes_when_the_dvc_remote_is_missing(harness, tmp_path):
    """A scheduled run in a DVC repository whose default remote does not exist (issue 14: a fresh
    clone failed at `update_data`, three tries): the update step warns and the run completes. It
    records into an MLflow server: the report's picture and links are that run's artifacts, served
    by the server, and its first generator holds the `champion` alias. Then the nightly user's
    normal case: the next run's data changed, so the champion is re-evaluated on the new data,
    with the default `generate` params (issue 21: per_class auto raised DataError there)."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    import flows.pipeline as fp
    from tests.test_dvc import full_params, make_repo
    from tests.test_remote import dvc
    from tests.test_serve import free_port
    from tests.test_tracking_server import mlflow_server

    (tmp_path / "project").mkdir()
    with mlflow_server(tmp_path / "mlflow.db", free_port()) as uri:
        params = full_params(
            TINY, "tracking.enabled=true", f"tracking.uri={uri}", "generate.per_class=auto"
        )
        repo = make_repo(tmp_path / "project", params)
        dvc(repo, "remote", "add", "-d", "--local", "gone", "../storage")
        state = fp.pipeline(
            params_file=str(repo / "params.yaml"), root=str(repo), return_state=True
        )
        assert state.is_completed(), state.message
        assert (repo / "metrics/eval.json").exists()
        assert not (tmp_path / "storage").exists()

        report = read_report()
        run_id = state.result()["run_id"]
        assert (
            "**Champion:** this run's `ganpipe-generator` v1 now holds the `champion` alias"
            in report
        )
        grid = httpx.get(image_source(report), timeout=30)
        assert image_source(report).startswith(f"{uri}/get-artifact?")
        assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
        assert grid.content == (repo / "data" / "synthetic" / "grid.png").read_bytes()
        [eval_url] = re.findall(r"- metrics: \[evaluate/eval.json\]\(([^)]+)\)", report)
        assert f"run_uuid={run_id}" in eval_url
        assert httpx.get(eval_url, timeout=30).json() == json.loads(
            (repo / "metrics" / "eval.json").read_text()
        )
        assert f"- run: [{run_id}]({uri}/#/experiments/" in report
        assert (
            f"registered [ganpipe-generator version 1]({uri}/#/models/ganpipe-generator/versions/1"
            "?workflowType=machine_learning)" in report
        )
        assert re.search(r"\| num_synthetic \| \d+ \|", report)  # a count, not 480.0000

        # the next night: fewer images per class, so other data; the champion is re-evaluated
        first_data = json.loads((repo / "data/prepared/summary.json").read_text())["content_hash"]
        changed = (
            (repo / "params.yaml").read_text().replace("max_per_class: 40", "max_per_class: 30")
        )
        (repo / "params.yaml").write_text(changed)
        again = fp.pipeline(params_file=str(repo / "params.yaml"), root=str(repo))
        summary = json.loads((repo / "data/prepared/summary.json").read_text())
        assert summary["content_hash"] != first_data and summary["num_train"] < 10 * 40
        decision = again["promotion"]
        assert decision["basis"] == "re-evaluated" and decision["champion_version"] == "1"
        assert decision["version"] == "2" and decision["decision"] in ("promoted", "kept")
        assert math.isfinite(decision["champion_value"]) and math.isfinite(decision["value"])

    body = {
        "flow_runs": {"id": {"any_": [str(state.state_details.flow_run_id)]}},
        "task_runs": {"name": {"like_": "update_data"}},
    }
    response = httpx.post(f"{PREFECT_API_URL.value()}/task_runs/filter", json=body, timeout=30)
    response.raise_for_status()
    [update] = response.json()
    assert update["state_type"] == "COMPLETED" and update["run_count"] == 1  # no retries
