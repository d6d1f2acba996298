"""`dvc repro`, its no-op rerun, metrics, experiments and data versioning, in a temporary git repo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ganpipe.config import load_params
from tests.helpers import REPO, TINY, run


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=cwd, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout


def full_params(path: Path, *overrides: str) -> str:
    """Every key written out: DVC requires each param that dvc.yaml names to be in the file."""
    return yaml.safe_dump(load_params(path, list(overrides)).model_dump(), sort_keys=False)


def make_repo(root: Path, params: str) -> Path:
    """A user's project: the repo's dvc.yaml and code, the given params, committed."""
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(
        REPO / "ganpipe", root / "ganpipe", ignore=shutil.ignore_patterns("__pycache__")
    )
    (root / "data" / "raw").mkdir(parents=True)
    shutil.copy(REPO / "data/raw/README.md", root / "data/raw/README.md")
    (root / "params.yaml").write_text(params)
    git(root, "init", "-q")
    assert run(["dvc", "init", "-q"], cwd=root).returncode == 0
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    return root


def repro_here(root: Path, *stages: str) -> subprocess.CompletedProcess[str]:
    """`dvc repro` running the project's own copy of the code (PYTHONPATH), as in a user's clone."""
    return run(["dvc", "repro", *stages], cwd=root, PYTHONPATH=str(root))


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    root = make_repo(tmp_path_factory.mktemp("dvc"), full_params(TINY, "tracking.enabled=true"))
    result = repro_here(root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root


def test_repro_runs_every_stage_into_one_mlflow_run(repro):
    from mlflow import MlflowClient

    assert (repro / "dvc.lock").exists()
    assert json.loads((repro / "metrics/eval.json").read_text())["num_synthetic"] == 120
    client = MlflowClient(tracking_uri=f"sqlite:///{repro / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("ganpipe").experiment_id])
    assert len(runs) == 1  # train opened it; generate and evaluate rejoined it
    assert {"train/d_loss", "generated_samples", "classifier_fd"} <= set(runs[0].data.metrics)
    # registered by the evaluate stage (its own process, rejoining the run): once
    versions = client.search_model_versions("name='ganpipe-generator'")
    assert [v.run_id for v in versions] == [runs[0].info.run_id]
    assert runs[0].data.tags["registered_model"] == "ganpipe-generator/1"
    # dvc.lock vouches for the prepared data train used (written after prepare ran)
    assert runs[0].data.tags["dvc.data_version"] + ".dir" in (repro / "dvc.lock").read_text()


def test_second_repro_is_a_no_op(repro):
    before = (repro / "models/generator.keras").stat().st_mtime_ns
    result = repro_here(repro)
    assert result.returncode == 0
    assert "Running stage" not in result.stdout
    assert (repro / "models/generator.keras").stat().st_mtime_ns == before


def test_metrics_show(repro):
    result = run(["dvc", "metrics", "show", "--json"], cwd=repro)
    assert result.returncode == 0
    assert "conditional_accuracy" in result.stdout and "classifier_fd" in result.stdout


def test_experiment_with_a_changed_param(repro):
    git(repro, "add", "-A")
    git(repro, "commit", "-qm", "baseline")
    # Up to train, the stage the param is for (the stages after it are repro's and the queued
    # experiments' in tests/test_concurrency.py): one stage process instead of five.
    result = run(["dvc", "exp", "run", "-S", "train.epochs=3", "train"], cwd=repro)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Running stage 'train'" in result.stdout
    rows = (repro / "models/history.csv").read_text().strip().splitlines()
    assert len(rows) - 1 == 3 * (400 // 32)  # 40 per class x 10 classes, 80% for training
    shown = run(["dvc", "exp", "show", "--json"], cwd=repro)
    assert shown.returncode == 0 and '"epochs": 3' in shown.stdout  # the experiment is listed


def test_changed_training_code_retrains(repro):
    """A checkpoint made by other code is not resumed: after an edit to the trainer, `dvc repro`
    reruns train, which starts afresh under a new run key instead of "nothing to do". (Only up to
    train: the stages after it rerun on any new model, code change or not.)"""
    before = json.loads((repro / "models/train_summary.json").read_text())
    trainer = repro / "ganpipe/gan/training/trainer.py"
    trainer.write_text(trainer.read_text() + "\n# an edit to the training code\n")
    result = repro_here(repro, "train")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Running stage 'train'" in result.stdout
    after = json.loads((repro / "models/train_summary.json").read_text())
    assert after["run_key"] != before["run_key"]
    assert after["resumed_from_step"] == 0 and after["steps_trained"] == after["steps"] > 0


def write_pngs(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for cls in ("a", "b"):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
                folder / cls / f"{i}.png"
            )


def test_dataset_versions_round_trip(tmp_path):
    overrides = ("data.source=folder", "data.path=data/raw/shapes", "data.test_fraction=0.34")
    root = make_repo(tmp_path, full_params(TINY, *overrides))
    raw = root / "data/raw/shapes"

    def version(message: str) -> str:
        assert run(["dvc", "add", "data/raw/shapes"], cwd=root).returncode == 0
        result = run(["dvc", "repro", "prepare"], cwd=root)
        assert result.returncode == 0, result.stderr[-2000:]
        git(root, "add", "-A")
        git(root, "commit", "-qm", message)
        return json.loads((root / "data/prepared/summary.json").read_text())["content_hash"]

    write_pngs(raw, seed=1)
    v1 = version("data v1")
    shutil.rmtree(raw)
    write_pngs(raw, seed=2)
    v2 = version("data v2")
    assert v1 != v2

    git(root, "checkout", "-q", "HEAD~1")
    # Only prepare ever ran here, so check out its outputs and the raw data, not every stage's.
    assert run(["dvc", "checkout", "data/raw/shapes.dvc", "prepare"], cwd=root).returncode == 0
    assert json.loads((root / "data/prepared/summary.json").read_text())["content_hash"] == v1
    assert run(["dvc", "status", "prepare"], cwd=root).stdout.strip().endswith("up to date.")
