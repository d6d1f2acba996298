"""Fast unit tests of ganpipe/orchestration: no Prefect server, no MLflow server, no training. Where MLflow is
needed it is one SQLite store in a temporary folder, shared by the module."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest

from ganpipe.config import load_params
from ganpipe.errors import ConfigError
from ganpipe.mlflow_adapter import tracking
from ganpipe.mlflow_adapter.tracking import NULL_TRACKER, Tracker, tracked_run
from ganpipe.orchestration import console_script
from ganpipe.orchestration import dvc as ops_dvc
from ganpipe.orchestration import sweep as sweeps
from ganpipe.orchestration.promotion import evaluation_identity
from ganpipe.orchestration.report import pipeline_report, sweep_report
from ganpipe.orchestration.run_links import MAX_EMBED_BYTES, RunLinks, artifact_url, png_data_uri
from ganpipe.pipeline import Paths
from tests.helpers import TINY

# ---- console scripts -----------------------------------------------------------------------------


def test_console_script_prefers_this_environment_else_the_bare_name():
    assert console_script("python") == str(Path(sys.executable).parent / "python")
    assert console_script("no-such-ganpipe-tool") == "no-such-ganpipe-tool"


# ---- tracked_run: the lifecycle, with a recording tracker ----------------------------------------


class Recorder(Tracker):
    run_id = "recorded"

    def __init__(self) -> None:
        self.statuses: list[str] = []

    def finish(self, status: str = "FINISHED") -> None:
        self.statuses.append(status)


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(tracking, "start_tracker", lambda *a, **k: rec)
    return rec


def test_tracked_run_finishes_on_success(recorder):
    with tracked_run(load_params(TINY, [])) as tracker:
        assert tracker is recorder and recorder.statuses == []
    assert recorder.statuses == ["FINISHED"]


def test_tracked_run_fails_and_reraises_on_an_error(recorder):
    with pytest.raises(ValueError, match="boom"), tracked_run(load_params(TINY, [])):
        raise ValueError("boom")
    assert recorder.statuses == ["FAILED"]


def test_tracked_run_is_killed_by_ctrl_c(recorder):
    with pytest.raises(KeyboardInterrupt), tracked_run(load_params(TINY, [])):
        raise KeyboardInterrupt
    assert recorder.statuses == ["KILLED"]


def test_tracked_run_with_tracking_off_is_the_null_tracker():
    with tracked_run(load_params(TINY, ["tracking.enabled=false"])) as tracker:
        assert tracker is NULL_TRACKER and tracker.run_id is None and tracker.run_url() is None


# ---- tracking against a real SQLite store --------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def tracked(store: str, experiment: str, *more: str):
    uri, exp = f"tracking.uri={store}", f"tracking.experiment={experiment}"
    return load_params(TINY, ["tracking.enabled=true", uri, exp, *more])


def test_tracked_run_records_the_end_state_and_a_stage_process_rejoins_the_run(store, tmp_path):
    params = tracked(store, "lifecycle")
    with tracked_run(params, run_name="ok") as ok:
        tracking.save_run_file(ok, tmp_path)
    with pytest.raises(RuntimeError), tracked_run(params, run_name="bad") as bad:
        raise RuntimeError("stage failed")
    client = ok.client
    assert client.get_run(ok.run_id).info.status == "FINISHED"
    assert client.get_run(bad.run_id).info.status == "FAILED"
    assert client.get_run(ok.run_id).data.params["train.epochs"] == "2"
    # a later stage (its own process under dvc repro) logs into the same run, through the run file
    with tracked_run(params, resume_from=tmp_path / tracking.RUN_FILE) as again:
        assert again.run_id == ok.run_id
    assert client.get_run(ok.run_id).info.status == "FINISHED"
    assert ok.run_url() is None  # a SQLite store has no UI page


def test_run_url_points_at_the_server_ui():
    class Info:
        experiment_id = "7"

    class Run:
        info = Info()

    class Client:
        def get_run(self, run_id):
            return Run()

    stub = tracking.MlflowTracker.__new__(tracking.MlflowTracker)
    stub.uri, stub.client, stub.run_id = "http://127.0.0.1:5000/", Client(), "abc"
    # the query opens MLflow 3.17's UI in its model-training view (docs/mlflow.md)
    url = "http://127.0.0.1:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
    assert stub.run_url() == url


def test_model_version_by_alias_is_none_until_the_alias_exists(store):
    params = tracked(store, "alias")
    with tracked_run(params) as run:
        client = run.client
        assert tracking.model_version_by_alias(client, "alias-model", "champion") is None
        client.create_registered_model("alias-model")
        assert tracking.model_version_by_alias(client, "alias-model", "champion") is None
        version = client.create_model_version("alias-model", "file:///nowhere", run_id=run.run_id)
        client.set_registered_model_alias("alias-model", "champion", version.version)
        found = tracking.model_version_by_alias(client, "alias-model", "champion")
        assert found is not None and str(found.version) == str(version.version)


def a_sweep() -> sweeps.Sweep:
    return sweeps.make_sweep(
        {"grid": {"train.g_learning_rate": [1e-4, 4e-4]}, "fixed": {"train.epochs": 1}}, "s.yaml"
    )


def test_record_best_tags_the_parent_and_registers_only_the_best(store, tmp_path):
    params = tracked(store, "sweep", "tracking.model_name=sweep-generator")
    spec = a_sweep()
    results = []
    for config in spec.configs:
        with tracked_run(params, run_name=config.name) as child:
            exp = child.client.get_run(child.run_id).info.experiment_id
            # what MlflowTracker.log_generator leaves: a logged model named "generator"
            child.client.create_logged_model(exp, name="generator", source_run_id=child.run_id)
        paths = Paths.under(tmp_path / config.name)
        results.append(
            sweeps.config_result(config.name, paths, child.run_id, {"classifier_fd": 1.0})
        )
    results[1]["metrics"]["classifier_fd"] = 0.5
    failed = {"name": "02-x", "root": "/r", "error": "boom"}
    spec = sweeps.Sweep([*spec.configs, sweeps.SweepConfig("02-x", {})], origin="s.yaml")
    with tracked_run(params, run_name="parent") as parent:
        best = sweeps.pick_best(spec, "sid", [*results, failed])
        sweeps.record_best(parent, spec, [*results, failed], best, params.tracking)
    assert best is results[1]
    run = parent.client.get_run(parent.run_id)
    assert run.data.metrics["best_classifier_fd"] == 0.5
    tags = run.data.tags
    assert tags["best_config"] == spec.configs[1].name and tags["best_run_id"] == best["run_id"]
    assert tags["best_root"] == str(tmp_path / spec.configs[1].name)
    assert json.loads(tags["best_overrides"]) == spec.configs[1].overrides
    assert tags["failed_configs"] == "02-x"
    assert tags["registered_model"] == "sweep-generator/1"
    versions = parent.client.search_model_versions("name = 'sweep-generator'")
    assert [v.run_id for v in versions] == [best["run_id"]]
    sweeps.record_best(NULL_TRACKER, spec, results, best, params.tracking)  # tracking off: no-op


# ---- promotion's evaluation identity -------------------------------------------------------------


def test_evaluation_identity_keeps_the_hash_stored_on_earlier_champions(tmp_path):
    assert evaluation_identity(tmp_path, {}) is None  # no evaluator cached
    (tmp_path / "meta.json").write_text(json.dumps({"key": "abc123"}))
    identity = evaluation_identity(tmp_path, {"max_samples": 200, "kid_subsets": 10})
    # the value earlier versions tagged runs with: a change would make old champions incomparable
    assert identity == "39fc32cfd2d3b74e"


# ---- DVC helpers ---------------------------------------------------------------------------------


def test_find_repo_walks_up_to_the_dvc_folder(tmp_path):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert ops_dvc.find_repo(tmp_path / "a" / "b") == tmp_path.resolve()
    assert ops_dvc.find_repo(tmp_path) == tmp_path.resolve()
    assert ops_dvc.find_repo(tmp_path.parent) is None or (tmp_path.parent / ".dvc").is_dir()


def test_dvc_stage_repo_only_for_the_repositorys_own_params(tmp_path):
    assert ops_dvc.dvc_stage_repo(tmp_path, None, []) is None  # no .dvc
    (tmp_path / ".dvc").mkdir()
    assert ops_dvc.dvc_stage_repo(tmp_path, None, []) is None  # no dvc.yaml
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert ops_dvc.dvc_stage_repo(tmp_path, None, []) == tmp_path.resolve()
    own = str(tmp_path / "params.yaml")
    assert ops_dvc.dvc_stage_repo(tmp_path, own, []) == tmp_path.resolve()
    assert ops_dvc.dvc_stage_repo(tmp_path, own, ["train.epochs=3"]) is None
    assert ops_dvc.dvc_stage_repo(tmp_path, str(TINY), []) is None


def test_pull_without_a_repository_or_a_remote_does_nothing(tmp_path, caplog):
    import subprocess

    caplog.set_level(logging.INFO)
    assert ops_dvc.pull(tmp_path / "nowhere") == "no DVC repository"
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([console_script("dvc"), "init", "--no-scm", "-q"], cwd=repo, check=True)
    (repo / "sub").mkdir()
    assert ops_dvc.pull(repo / "sub") == "no DVC remote"
    assert "no DVC remote configured" in caplog.text


class Tags(Tracker):
    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.metrics: dict[str, float] = {}

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_metrics(self, metrics, step=None):
        self.metrics.update(metrics)


def test_skipped_result_of_an_up_to_date_stage(tmp_path, monkeypatch):
    paths = Paths.under(tmp_path)
    paths.metrics.mkdir(parents=True)
    (paths.metrics / "eval.json").write_text(json.dumps({"classifier_fd": 1.5, "note": "x"}))
    monkeypatch.setattr(ops_dvc, "is_up_to_date", lambda repo, stage: stage != "prepare")
    tracker = Tags()
    assert ops_dvc.skipped_result(tmp_path, "prepare", paths, tracker) is None
    assert tracker.tags == {}
    assert ops_dvc.skipped_result(tmp_path, "train", paths, tracker) == {"skipped": True}
    assert tracker.tags == {"stage.train": "skipped: up to date (dvc status)"}
    metrics = ops_dvc.skipped_result(tmp_path, "evaluate", paths, tracker)
    assert metrics == {"classifier_fd": 1.5, "note": "x"}  # the report still gets them
    assert tracker.metrics == {"classifier_fd": 1.5}  # and the run logs the numbers


# ---- reports -------------------------------------------------------------------------------------

PROMOTION = {
    "decision": "promoted", "reason": "classifier_fd 1 < champion v2's 2 (logged)",
    "model_name": "ganpipe-generator", "version": "3", "metric": "classifier_fd", "mode": "min",
    "champion_version": "2", "basis": "logged", "champion_metrics": {"classifier_fd": 2.0},
}  # fmt: skip


def test_pipeline_report_without_tracking():
    paths = Paths.under("/out")
    text = pipeline_report({"classifier_fd": 1.23456, "num_synthetic": 120}, paths)
    assert text.startswith("# ganpipe run\n\n**Does it help?** not known")
    assert "**Champion:** no promotion (tracking is off)" in text
    assert "| classifier_fd | 1.2346 |" in text and "| num_synthetic | 120 |" in text
    assert "tracking off: no run recorded" in text and "no sample grid" in text
    assert "## Latest outputs (overwritten by the next run)\n" in text
    assert "- generator: `/out/models/generator.keras` (sample grid" in text
    assert "- metrics: `/out/metrics/eval.json`, `/out/metrics/per_class.csv`" in text


def test_pipeline_report_shows_the_per_class_table(tmp_path):
    paths = Paths.under(tmp_path)
    paths.metrics.mkdir(parents=True)
    (paths.metrics / "per_class.csv").write_text(
        "class,class_name,n_synthetic,n_real,conditional_accuracy,recall,coverage,"
        "closer_to_train_fraction,classifier_fd\n"
        "0,zero,64,980,1.0,0.8125,0.9,0.48,28.8\n"
        "5,five,936,20,0.99893,0.25,,0.74038,18.2\n"
    )
    text = pipeline_report({"classifier_fd": 1.0}, paths)
    assert "## Per class\n| class | real images | samples | on-label | recall | coverage |" in text
    assert "| zero | 980 | 64 | 1.000 | 0.812 | 0.900 | 0.480 |" in text
    assert "| five | 20 | 936 | 0.999 | 0.250 |  | 0.740 |" in text  # too few: empty
    assert "## Per class" not in pipeline_report({"classifier_fd": 1.0}, Paths.under("/out"))


def test_pipeline_report_counts_are_integers_beside_the_champion():
    """MLflow gives the champion's counts back as floats: the report prints them as integers."""
    promotion = {**PROMOTION, "champion_metrics": {"classifier_fd": 2.0, "num_synthetic": 500.0,
                                                   "num_real": 40.0}}  # fmt: skip
    metrics = {"classifier_fd": 1.0, "num_synthetic": 480, "num_real": 40}
    text = pipeline_report(metrics, Paths.under("/out"), RunLinks(run_id="r1"), promotion)
    assert "| metric | this run | champion v2 (logged) |" in text
    assert "| classifier_fd | 1.0000 | 2.0000 |" in text  # not a count: 4 decimals, even if whole
    assert "| num_synthetic | 480 | 500 |" in text and "| num_real | 40 | 40 |" in text
    assert "500.0" not in text


def test_pipeline_report_with_a_server_links_the_runs_own_artifacts():
    base = "http://mlflow:5000"
    links = RunLinks(
        run_id="r1", server=True, run_page=f"{base}/#/experiments/1/runs/r1",
        image=artifact_url(base, "r1", "generate/grid.png"), image_note="grid of this run",
        files={"metrics": ("evaluate/eval.json", artifact_url(base, "r1", "evaluate/eval.json"))},
        model=[f"registered [ganpipe-generator version 3]({base}/#/models/ganpipe-generator/versions/3)"],
    )  # fmt: skip
    text = pipeline_report({"classifier_fd": 1.0}, Paths.under("/out"), links, PROMOTION)
    title, _, rest = text.partition("\n\n")
    assert title == "# ganpipe run"
    assert rest.startswith("**Does it help?**")
    assert (
        "**Champion:** this run's `ganpipe-generator` v3 now holds the `champion` alias; it was v2"
        in text
    )
    img = f"![sample grid: one row per class]({base}/get-artifact?path=generate%2Fgrid.png&run_uuid=r1)"
    assert img in text and text.index(img) < text.index("## Metrics")
    assert f"- run: [r1]({base}/#/experiments/1/runs/r1)" in text
    assert (
        f"- metrics: [evaluate/eval.json]({base}/get-artifact?path=evaluate%2Feval.json&run_uuid=r1)"
        in text
    )
    assert f"- generator: registered [ganpipe-generator version 3]({base}/#/models/" in text
    assert "## Champion: promoted\n- model: `ganpipe-generator` version 3" in text


def test_pipeline_report_local_store_embeds_the_grid(tmp_path):
    import base64

    import numpy as np

    from ganpipe.images import save_grid

    save_grid(tmp_path / "grid.png", np.random.default_rng(0).integers(0, 255, (100, 28, 28, 1),
              dtype=np.uint8), rows=10, scale=2)  # fmt: skip
    big = (tmp_path / "grid.png").stat().st_size
    assert big > MAX_EMBED_BYTES  # noise does not compress: it must be downscaled
    uri = png_data_uri(tmp_path / "grid.png")
    data = base64.b64decode(uri.removeprefix("data:image/png;base64,"))
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) <= MAX_EMBED_BYTES
    assert png_data_uri(tmp_path / "missing.png") is None
    links = RunLinks(run_id="r1", image=uri, image_note="embedded",
                     files={"metrics": ("evaluate/eval.json", "/s/mlartifacts/1/r1/artifacts/evaluate/eval.json")},
                     model=["registered `models:/ganpipe-generator/3`"])  # fmt: skip
    promotion = {**PROMOTION, "decision": "kept", "reason": "not better; alias unchanged"}
    text = pipeline_report({"classifier_fd": 1.0}, Paths.under("/out"), links, promotion)
    assert f"![sample grid: one row per class]({uri})" in text
    assert "- run: `r1`" in text
    assert "- metrics: `/s/mlartifacts/1/r1/artifacts/evaluate/eval.json`" in text
    assert "v3 does **not** hold the `champion` alias; v2 keeps it (not better" in text


def test_pipeline_report_shows_the_verdict_and_the_filters():
    from tests.helpers import utility_study

    study = utility_study(0.02, second_shift=-0.01)
    study["worth"] = {"worth": 1.6, "low": 1.2, "high": 2.1, "above": False, "below": False,
                      "rare_real_images": 100}  # fmt: skip
    utility = {"enabled": True, "verdict": study["verdict"], "verdict_metric": "balanced_accuracy",
               "scenarios": {"as_given": study}}  # fmt: skip
    augment = {
        "num_real": 15, "num_synthetic": 8, "mode": "balance",
        "filters": {"filters": {
            "off_label": {"dropped_by_class": {"a": 3, "b": 0}, "dropped": 3},
            "memorization": {"dropped_by_class": {"a": 1, "b": 2}, "dropped": 3},
        }},
    }  # fmt: skip
    text = pipeline_report({"classifier_fd": 1.0}, Paths.under("/out"),
                           utility=utility, augment=augment)  # fmt: skip
    # the second architecture saw harm: the verdict is hurts, and the report shows both
    assert "**Does it help?** **hurts** on balanced_accuracy: synthetic_weighted vs " in text
    assert "## Does it help? **hurts** (balanced_accuracy)" in text
    assert "- as_given: **hurts**: synthetic_weighted 0.9310 vs real_weighted 0.9100 " in text
    assert "difference +0.0210 (95% interval +0.0185 .. +0.0235, 3 seeds; " in text
    assert "second opinion (resnet): **hurts**, difference -0.0090" in text
    assert "worth 1.60x the rare classes' 100 real images (95% interval 1.20 .. 2.10x)" in text
    assert "| filter | a | b | dropped |" in text and "| memorization | 1 | 2 | 3 |" in text
    assert "8 synthetic added to 15 real (augment.mode balance)" in text
    plain = pipeline_report({"classifier_fd": 1.0}, Paths.under("/out"))
    assert "## Does it help" not in plain and "Filters" not in plain
    off = pipeline_report({"classifier_fd": 1.0}, Paths.under("/out"),
                          utility={"enabled": False, "verdict": None})  # fmt: skip
    assert "**Does it help?** not measured: the utility stage is disabled" in off
    assert "## Does it help" not in off


def test_sweep_report_bolds_the_best_and_shows_failures():
    spec = a_sweep()
    ok = {"name": spec.configs[0].name, "root": "/o/0", "run_id": "r0",
          "metrics": {"classifier_fd": 1.5, "precision": 0.25}}  # fmt: skip
    bad = {"name": spec.configs[1].name, "root": "/o/1", "error": "boom | bang"}
    text = sweep_report(spec, "sid", [ok, bad], ok)
    assert text.startswith("# ganpipe sweep sid\n\nBest by classifier_fd (min): ")
    assert f"**{ok['name']}** = 1.5000, outputs `/o/0`" in text
    assert f"| **{ok['name']}** (best) | `train.epochs=1`, `train.g_learning_rate=0.0001` |" in text
    assert "| 1.5000 |  |  | 0.2500 |  | r0 | `/o/0` |" in text
    assert "failed: boom / bang |" in text and "| - | `/o/1` |" in text


# ---- sweep planning and judging ------------------------------------------------------------------


def test_new_sweep_ids_sort_by_time_and_differ():
    a, b = sweeps.new_sweep_id(), sweeps.new_sweep_id()
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", a) and a != b


def test_shared_key_is_the_hash_it_always_was():
    import hashlib

    params = load_params(TINY, [])
    blob = json.dumps([params.data.model_dump(), params.evaluate.model_dump()], sort_keys=True)
    assert sweeps.shared_key(params) == hashlib.sha256(blob.encode()).hexdigest()[:10]


def test_plan_runs_shares_prepared_data_per_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri sets it
    spec = sweeps.make_sweep(
        {"configs": [{"train.epochs": 1}, {"train.epochs": 2}, {"data.max_per_class": 20}]}
    )
    configs = [(c, spec.params(c, TINY)) for c in spec.configs]
    shared, jobs = sweeps.plan_runs(configs, tmp_path / "sid", "sid", "parent")
    assert len(shared) == 2  # the first two configs share their data and evaluation
    assert jobs[0]["shared_key"] == jobs[1]["shared_key"] != jobs[2]["shared_key"]
    for job, config in zip(jobs, spec.configs, strict=True):
        assert job["name"] == config.name and job["sweep_id"] == "sid"
        assert job["parent_run_id"] == "parent"
        common = shared[job["shared_key"]]["paths"]
        assert common.prepared == tmp_path / "sid" / "_shared" / job["shared_key"] / "data/prepared"
        assert job["paths"].prepared == common.prepared
        assert job["paths"].evaluator == common.evaluator
        assert job["paths"].models == tmp_path / "sid" / config.name / "models"
        tracking_params = job["params"].tracking
        assert not tracking_params.register_model  # the sweep registers the best only
        assert tracking_params.uri == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert jobs[1]["params"].train.epochs == 2


def test_base_params_apply_the_fixed_overrides():
    spec = sweeps.make_sweep({"fixed": {"train.epochs": 7}, "configs": [{"train.batch_size": 16}]})
    base = spec.base_params(TINY)
    assert base.train.epochs == 7 and base.train.batch_size == 32


class State:
    def __init__(self, completed: bool, message: str = "", name: str = "Failed") -> None:
        self.completed, self.message, self.name = completed, message, name

    def is_completed(self) -> bool:
        return self.completed


def test_failed_results_say_why(tmp_path):
    job = {"name": "01-x", "paths": Paths.under(tmp_path / "01-x")}
    never_ran = sweeps.failed_result(job, State(False, "data missing"), State(False, "", "Pending"))
    assert never_ran == {
        "name": "01-x", "root": str(tmp_path / "01-x"), "error": "prepare/classifier: data missing"
    }  # fmt: skip
    assert sweeps.failed_result(job, State(True), State(False, "OOM"))["error"] == "OOM"
    assert sweeps.failed_result(job, State(True), State(False, "", "Crashed"))["error"] == "Crashed"


def test_pick_best_warns_of_failures_and_refuses_when_all_failed(caplog):
    spec = sweeps.make_sweep({"mode": "max", "metric": "precision", "configs": [{}, {}, {}]})
    results = [
        {"name": "a", "root": "/a", "run_id": None, "metrics": {"precision": 0.5}},
        {"name": "b", "root": "/b", "error": "boom"},
        {"name": "c", "root": "/c", "run_id": None, "metrics": {"precision": 0.75}},
    ]
    caplog.set_level(logging.WARNING)
    assert sweeps.pick_best(spec, "sid", results)["name"] == "c"
    assert "config b failed: boom" in caplog.text
    with pytest.raises(RuntimeError, match="sweep sid: every config failed: boom"):
        sweeps.pick_best(spec, "sid", [results[1]])
    with pytest.raises(ConfigError, match="no config reported 'precision'"):
        sweeps.pick_best(spec, "sid", [{"name": "a", "root": "/a", "metrics": {}}])
