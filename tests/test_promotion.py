"""Champion promotion against a SQLite MLflow store: one real tiny pipeline run, then runs with
faked metrics registered as further versions of the same model."""

from __future__ import annotations

import pytest

from ganpipe.config import load_params
from ganpipe.pipeline import Paths
from tests.helpers import TINY

NAME = "ganpipe-generator"


def fake_run(client, exp_id: str, source: str, fd: float, data_hash: str) -> str:
    """A finished run with `classifier_fd` = fd, registered as a new version of NAME."""
    run_id = client.create_run(exp_id).info.run_id
    client.log_metric(run_id, "classifier_fd", fd)
    client.set_tag(run_id, "data.content_hash", data_hash)
    version = client.create_model_version(NAME, source, run_id=run_id).version
    client.set_tag(run_id, "registered_model", f"{NAME}/{version}")
    client.set_terminated(run_id)
    return run_id


def alias_version(client) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def test_first_promoted_worse_kept_other_data_reevaluated_better_promoted(tmp_path, capsys):
    from mlflow import MlflowClient

    from ganpipe.cli import run_all
    from ganpipe.orchestration.promotion import decide, promote_if_better, reevaluate_champion

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = load_params(TINY, ["tracking.enabled=true", f"tracking.uri={uri}"])
    paths = Paths.under(tmp_path / "root")
    first = run_all(params, paths, progress=False)["run_id"]
    client = MlflowClient(uri)

    d = promote_if_better(client, first)
    assert d.promoted and "first model" in d.reason and d.version == "1"
    assert alias_version(client) == "1"
    run = client.get_run(first)
    assert run.data.tags["promotion.decision"] == "promoted"
    fd = run.data.metrics["classifier_fd"]
    data_hash = run.data.tags["data.content_hash"]
    exp_id = run.info.experiment_id
    source = client.get_model_version(NAME, "1").source

    # worse on the same data: kept, alias unchanged, reason on the run
    worse = fake_run(client, exp_id, source, fd + 1.0, data_hash)
    d = promote_if_better(client, worse)
    assert not d.promoted and d.basis == "logged" and d.champion_value == pytest.approx(fd)
    assert alias_version(client) == "1"
    tags = client.get_run(worse).data.tags
    assert tags["promotion.decision"] == "kept"
    assert "is not <" in tags["promotion.reason"] and tags["promotion.champion_version"] == "1"

    # better, but on other data: never compared with numbers from another data version ...
    other = fake_run(client, exp_id, source, fd / 2, "other-data-hash")
    d = promote_if_better(client, other)
    assert not d.promoted and "not comparable" in d.reason and alias_version(client) == "1"
    # ... unless the champion's generator is re-evaluated on the current data (here: the same
    # prepared data and evaluator, so it must score what it scored in its own run)
    d = decide(
        client, other,
        reevaluate=lambda model_uri: reevaluate_champion(
            uri, model_uri, params, paths.prepared, paths.evaluator
        ),
    )  # fmt: skip
    assert d.basis == "re-evaluated" and d.promoted
    assert d.champion_value == pytest.approx(fd, rel=1e-3)
    assert alias_version(client) == "1"  # decide changes nothing

    # better on the same data: promoted
    better = fake_run(client, exp_id, source, fd / 2, data_hash)
    d = promote_if_better(client, better)
    assert d.promoted and d.basis == "logged" and alias_version(client) == d.version
    assert client.get_run(better).data.tags["promotion.decision"] == "promoted"

    # a higher-is-better metric: the worse run would win under mode "max"
    assert decide(client, worse, mode="max").promoted


def test_a_run_without_a_registered_model_is_not_promoted(tmp_path):
    from mlflow import MlflowClient

    from ganpipe.orchestration.promotion import promote_if_better

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    client.log_metric(run_id, "classifier_fd", 1.0)
    d = promote_if_better(client, run_id)
    assert not d.promoted and "no registered model version" in d.reason
    assert client.get_run(run_id).data.tags["promotion.decision"] == "kept"
