"""What an MLflow run records and when the registry sees it, against a real SQLite store: the
stages run one by one through the run file (as `dvc repro` runs them), then a run that fails in
generate."""

from __future__ import annotations

import json
import subprocess

import pytest

from ganpipe.config import load_params
from ganpipe.pipeline import STAGES, Paths
from tests.helpers import TINY

NAME = "ganpipe-generator"


@pytest.fixture(scope="module")
def stages_run(tmp_path_factory):
    """Every stage as `ganpipe <stage>` would run it (`run_one`: train opens the run, the later
    stages rejoin it through the run file), in a git repository, into a SQLite store."""
    from mlflow import MlflowClient

    from ganpipe.cli import run_one

    root = tmp_path_factory.mktemp("mlflow-runs")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty",
         "-m", "init"], cwd=root, check=True,
    )  # fmt: skip
    uri = f"sqlite:///{root / 'mlflow.db'}"
    params = load_params(TINY, ["tracking.enabled=true", f"tracking.uri={uri}"])
    paths = Paths.under(root / "w")
    client = MlflowClient(uri)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for name in STAGES:
            if name == "evaluate":  # the registry is still empty before evaluate
                assert client.search_model_versions(f"name='{NAME}'") == []
            run_one(name, params, paths, progress=False)
    run_id = json.loads((paths.models / "mlflow_run.json").read_text())["run_id"]
    return root, params, paths, client, run_id


def test_a_completed_run_registers_its_generator_once_after_evaluate(stages_run):
    _, _, _, client, run_id = stages_run
    versions = client.search_model_versions(f"name='{NAME}'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", run_id)]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["registered_model"] == f"{NAME}/1"  # what promotion reads


def test_the_generator_is_logged_with_a_signature_and_an_input_example(stages_run):
    import mlflow
    import numpy as np

    _, _, _, client, run_id = stages_run
    version = client.get_model_version(NAME, "1")
    info = mlflow.models.get_model_info(version.source)
    inputs = {s.name: (s.type.name, s.shape) for s in info.signature.inputs.inputs}
    assert inputs == {"z": ("float32", (-1, 8)), "label": ("int32", (-1,))}  # tiny: latent_dim 8
    assert info.signature.outputs.inputs[0].shape == (-1, 8, 8, 1)
    # the example is saved with the model and is what the generator takes: it samples from it
    local = mlflow.artifacts.download_artifacts(version.source)
    example = mlflow.models.Model.load(local).load_input_example(local)
    assert set(example) == {"z", "label"} and example["label"].tolist() == [0, 1]
    model = mlflow.keras.load_model(version.source)
    images = np.asarray(model.predict(example, verbose=0))
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()


def test_run_name_source_tags_and_experiment_kind(stages_run):
    from ganpipe.mlflow_adapter.runinfo import run_key

    root, params, _, client, run_id = stages_run
    run = client.get_run(run_id)
    assert run.info.run_name == f"digits · {run_key(params)}"  # no Prefect flow run here
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == head
    assert tags["mlflow.source.type"] == "LOCAL"
    assert "prefect.flow_run_url" not in tags and "dvc.data_version" not in tags  # neither here
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_prepared_data_is_the_runs_dataset_input_once(stages_run):
    _, _, paths, client, run_id = stages_run
    summary = json.loads((paths.prepared / "summary.json").read_text())
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 1  # train and evaluate both offered it
    dataset = inputs[0].dataset
    assert dataset.name == "digits" and summary["content_hash"].startswith(dataset.digest)
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"
    profile = json.loads(dataset.profile)
    assert profile["num_train"] == summary["num_train"] and profile["image_shape"] == [8, 8, 1]
    assert "mlflow_tensorspec" in json.loads(dataset.schema)


def test_per_step_losses_are_prefixed_and_headline_metrics_are_not(stages_run):
    _, _, _, client, run_id = stages_run
    metrics = client.get_run(run_id).data.metrics
    assert {"train/d_loss", "train/g_loss"} <= set(metrics)
    assert {"classifier_fd", "conditional_accuracy", "precision", "recall"} <= set(metrics)
    assert "d_loss" not in metrics


def test_a_run_that_fails_in_generate_registers_nothing(stages_run):
    """A second run on the same workspace whose generator file is damaged after train: generate
    fails, the run ends FAILED with its generator logged but no model version."""
    from ganpipe.errors import GanpipeError
    from ganpipe.mlflow_adapter.tracking import tracked_run
    from ganpipe.pipeline import run_stage

    root, params, paths, client, first = stages_run
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        with pytest.raises(GanpipeError), tracked_run(params) as tracker:
            run_stage("train", params, paths, tracker, progress=False)  # resumes: done at once
            (paths.models / "generator.keras").write_bytes(b"not a keras file")
            run_stage("generate", params, paths, tracker, progress=False)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FAILED" and "registered_model" not in run.data.tags
    assert [v.run_id for v in client.search_model_versions(f"name='{NAME}'")] == [first]
