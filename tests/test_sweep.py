"""Sweep files expand into named configs; a 2-config sweep trains in parallel on a real 2-worker Dask
LocalCluster under the session's Prefect harness, as MLflow child runs of one parent run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ganpipe.errors import ConfigError
from ganpipe.orchestration.sweep import config_name, expand_grid, load_sweep, make_sweep
from tests.helpers import TINY


def test_grid_is_the_cartesian_product():
    combos = expand_grid({"train.g_learning_rate": [1e-4, 2e-4], "model.filters": [32, 64]})
    assert combos == [
        {"train.g_learning_rate": 1e-4, "model.filters": 32},
        {"train.g_learning_rate": 1e-4, "model.filters": 64},
        {"train.g_learning_rate": 2e-4, "model.filters": 32},
        {"train.g_learning_rate": 2e-4, "model.filters": 64},
    ]
    sweep = make_sweep({"grid": {"model.filters": [32, 64]}, "fixed": {"train.epochs": 3}})
    assert [c.overrides for c in sweep.configs] == [
        {"train.epochs": 3, "model.filters": 32},
        {"train.epochs": 3, "model.filters": 64},
    ]
    assert (sweep.metric, sweep.mode) == ("classifier_fd", "min")


def test_list_form_names_and_params():
    sweep = make_sweep(
        {
            "metric": "conditional_accuracy",
            "mode": "max",
            "configs": [
                {"train.g_learning_rate": 1e-4},
                {"model.filters": 64, "data.source": "digits"},
            ],
        }
    )
    names = [c.name for c in sweep.configs]
    assert names == ["00-g_learning_rate=0.0001", "01-filters=64-source=digits"]
    assert len(set(names)) == 2 and all("/" not in n for n in names)
    params = sweep.params(sweep.configs[1], TINY)
    assert params.model.filters == 64 and params.train.epochs == 2  # the rest from the file
    best = sweep.best(
        [
            {"name": "a", "metrics": {"conditional_accuracy": 0.2}},
            {"name": "b", "metrics": {"conditional_accuracy": 0.9}},
        ]
    )
    assert best["name"] == "b"
    assert config_name(3, {"data.path": "a/b c"}) == "03-path=a-b-c"


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"grid": {"train.learning_rate": [1e-4]}}, "train.learning_rate: unknown key"),
        ({"grid": {"trian.epochs": [1]}}, "trian.epochs: unknown section 'trian'"),
        ({"configs": [{"model.filter": 32}]}, "model.filter: unknown key"),
        ({"grid": {"epochs": [1, 2]}}, "epochs: expected section.key"),
        ({"grid": {"train.epochs": []}}, "grid.train.epochs: expected a non-empty list"),
        ({"fixed": {"train.epoch": 1}, "grid": {"train.epochs": [1]}}, "train.epoch: unknown key"),
        ({"grid": {"train.epochs": [1]}, "configs": [{}]}, "exactly one of `grid` and `configs`"),
        ({"grid": {"train.epochs": [1]}, "mode": "best"}, "mode: expected min or max"),
        ({"grids": {}}, "grids: unknown key"),
    ],
)
def test_bad_sweep_names_the_key(tmp_path, spec, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_bad_value_names_the_config_and_key(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"configs": [{"train.epochs": 1}, {"train.epochs": -1}]}))
    sweep = load_sweep(path)
    sweep.params(sweep.configs[0], TINY)
    with pytest.raises(
        ConfigError, match=r"s.yaml: config 01-epochs=-1: .*train.epochs: Input should be"
    ):
        sweep.params(sweep.configs[1], TINY)


def read_artifact(key: str) -> str:
    """The latest artifact `key`, over the REST API (Prefect 3.8.8's Artifact.get is broken against
    its own server; see tests/test_flow.py)."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    body = {"artifacts": {"key": {"any_": [key]}}, "limit": 1, "sort": "CREATED_DESC"}
    response = httpx.post(f"{PREFECT_API_URL.value()}/artifacts/filter", json=body, timeout=30)
    response.raise_for_status()
    assert response.json(), f"no {key} artifact"
    return str(response.json()[0]["data"])


def test_two_config_sweep_on_a_local_dask_cluster(harness, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from flows.sweep import REPORT_KEY, sweep

    monkeypatch.chdir(tmp_path)  # the workers' working directory too (reference-statistics cache)
    params = yaml.safe_load(TINY.read_text())
    params["tracking"] = {"enabled": True, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "sweep.yaml").write_text(
        yaml.safe_dump(
            {"grid": {"train.g_learning_rate": [1e-4, 4e-4]}, "fixed": {"train.epochs": 1}}
        )
    )
    result = sweep("sweep.yaml", "params.yaml", root=str(tmp_path / "out"), n_workers=2)

    out = Path(result["root"])
    assert out.parent == tmp_path / "out" and out.name == result["sweep_id"]
    by_name = {r["name"]: r for r in result["results"]}
    assert set(by_name) == {"00-g_learning_rate=0.0001", "01-g_learning_rate=0.0004"}
    hashes = set()
    for name, r in by_name.items():
        assert "error" not in r, r
        assert Path(r["root"]) == out / name
        assert (out / name / "models/generator.keras").exists()
        assert (out / name / "data/synthetic/samples.npz").exists()
        assert json.loads((out / name / "metrics/eval.json").read_text()) == pytest.approx(
            r["metrics"]
        )
        hashes.add((out / name / "models/generator.keras").read_bytes())
    assert len(hashes) == 2  # two different generators, not one written twice
    shared = list((out / "_shared").iterdir())
    assert len(shared) == 1 and (shared[0] / "evaluator").is_dir()  # one classifier judges both

    best = min(by_name.values(), key=lambda r: r["metrics"]["classifier_fd"])
    assert result["best"]["name"] == best["name"]

    client = MlflowClient(tracking_uri=params["tracking"]["uri"])
    runs = client.search_runs([client.get_experiment_by_name("ganpipe").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.run_id == result["parent_run_id"]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.run_name for c in children} == set(by_name)
    assert all(c.info.status == "FINISHED" for c in runs)
    assert parent.data.tags["best_config"] == best["name"]
    assert parent.data.tags["best_run_id"] == best["run_id"]
    assert parent.data.metrics["best_classifier_fd"] == pytest.approx(
        best["metrics"]["classifier_fd"]
    )
    child_fd = {c.info.run_name: c.data.metrics["classifier_fd"] for c in children}
    assert min(child_fd, key=child_fd.get) == best["name"]
    # Only the best generator is registered (the configs register nothing).
    versions = client.search_model_versions("name = 'ganpipe-generator'")
    assert [v.run_id for v in versions] == [best["run_id"]]
    assert parent.data.tags["registered_model"] == "ganpipe-generator/1"

    report = read_artifact(REPORT_KEY)
    assert result["sweep_id"] in report and f"**{best['name']}** (best)" in report
    assert str(out / best["name"]) in report


def test_a_failing_config_is_reported_and_the_rest_still_run(harness, tmp_path, monkeypatch):
    """Tracking off; the second config's data folder does not exist, so its shared prepare fails."""
    from flows.sweep import sweep

    monkeypatch.chdir(tmp_path)
    spec = {"configs": [{"train.epochs": 1}, {"data.source": "folder", "data.path": "missing"}]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(spec))
    result = sweep("sweep.yaml", str(TINY), root="out", n_workers=2)
    good, bad = result["results"]
    assert "error" not in good and result["best"]["name"] == good["name"] == "00-epochs=1"
    assert "missing does not exist" in bad["error"] and bad["error"].startswith(
        "prepare/classifier"
    )
    assert (Path(good["root"]) / "metrics/eval.json").exists()
    assert not (Path(bad["root"]) / "models").exists()
    assert result["parent_run_id"] is None and good["run_id"] is None
    assert not (tmp_path / "mlflow.db").exists()
