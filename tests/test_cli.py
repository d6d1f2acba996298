"""The CLI end to end on the tiny config, its errors, and what MLflow records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import run, tiny_project


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    root = tiny_project(tmp_path_factory.mktemp("cli"), tracking=True)
    result = run(["ganpipe", "run", "--set", "utility.enabled=true"], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def test_run_writes_every_output_and_prints_metrics(tracked_run):
    root, result = tracked_run
    for rel in [
        "data/prepared/train.npz",
        "data/prepared/summary.json",
        "models/generator.keras",
        "models/history.csv",
        "models/samples/final.png",
        "data/synthetic/samples.npz",
        "data/synthetic/manifest.csv",
        "data/augmented/train.npz",
        "evaluator/classifier.keras",
        "metrics/eval.json",
        "metrics/per_class.csv",
        "metrics/memorization.json",
        "metrics/nearest_copies.png",
        "metrics/utility.json",
        "metrics/utility.csv",
        "metrics/utility.png",
    ]:
        assert (root / rel).exists(), rel
    metrics = json.loads((root / "metrics/eval.json").read_text())
    assert "All metrics" in result.stdout and "conditional_accuracy" in result.stdout
    # what the numbers mean comes first, in a few lines; the full table after
    out = result.stdout
    assert out.index("Result:") < out.index("All metrics (metrics/eval.json):")
    ratio = metrics["classifier_fd"] / metrics["classifier_fd_floor"]
    assert f"Distance       classifier_fd {metrics['classifier_fd']:.3g} = {ratio:.1f}x" in out
    assert f"On-label       {metrics['conditional_accuracy']:.1%} of the samples" in out
    assert f"Near-copies    {metrics['near_copy_fraction']:.2%}" in out
    assert "augment dropped " in out and " from the export" in out
    exported = json.loads((root / "data/augmented/summary.json").read_text())
    assert (
        f"Exported       {exported['num_real']} real + {exported['num_synthetic']} synthetic "
        "images: augment.mode ratio, not validated"
    ) in out
    assert 0.0 <= metrics["conditional_accuracy"] <= 1.0
    assert np.isfinite(metrics["classifier_fd"])
    with np.load(root / "data/synthetic/samples.npz") as f:
        assert f["images"].shape == (120, 8, 8, 1) and f["images"].dtype == np.uint8


def test_mlflow_holds_one_run_with_params_metrics_images_and_registered_generator(tracked_run):
    from mlflow import MlflowClient

    root, _ = tracked_run
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ganpipe")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run_ = runs[0]
    assert run_.info.status == "FINISHED"
    assert run_.data.params["train.epochs"] == "2"
    assert run_.data.params["data.source"] == "digits"
    summary = json.loads((root / "data/prepared/summary.json").read_text())
    assert run_.data.tags["data.content_hash"] == summary["content_hash"]
    for key in ("classifier_fd", "conditional_accuracy", "train/d_loss", "train/g_loss", "near_copy_fraction",
                "augment_num_synthetic", "augment_memorization_dropped"):  # fmt: skip
        assert key in run_.data.metrics, key
    utility = json.loads((root / "metrics/utility.json").read_text())
    assert run_.data.tags["utility.verdict"] == utility["verdict"]
    assert len(client.get_metric_history(run_.info.run_id, "train/d_loss")) > 1  # per-step
    artifacts = {a.path for a in client.list_artifacts(run_.info.run_id, "samples")}
    assert "samples/final.png" in artifacts
    versions = client.search_model_versions("name='ganpipe-generator'")
    assert [v.run_id for v in versions] == [run_.info.run_id]
    # (stages run as their own processes log into the same run: tests/test_dvc.py)


def test_utility_verdict_printed_and_gating_the_export(tracked_run, tmp_path):
    """`ganpipe run` printed the utility verdict; with augment.require_benefit the augment
    command exports exactly when that verdict is not 'hurts' (and says why when it is)."""
    import shutil

    root, result = tracked_run
    utility = json.loads((root / "metrics/utility.json").read_text())
    assert utility["enabled"] and utility["verdict"] in ("helps", "no measurable effect", "hurts")
    assert f"Does it help?  {utility['verdict']}: " in result.stdout
    assert "(metrics/utility.json)" in result.stdout
    study = utility["scenarios"]["as_given"]
    arms = study["arms"]  # tests/data/tiny.yaml: both losses, no oversampling control, a ResNet
    assert set(arms) == {
        "real_weighted", "real_balanced_softmax", "synthetic_weighted",
        "synthetic_balanced_softmax", f"resnet:{study['baseline']}", f"resnet:{study['treatment']}",
    }  # fmt: skip
    assert all(len(a["balanced_accuracy"]["per_seed"]) == 3 for a in arms.values())
    assert study["steps"] == 10 and set(study["verdicts"]) == {"cnn", "resnet"}
    assert "               second architecture: " in result.stdout

    copy = tmp_path / "project"
    shutil.copytree(root, copy)
    before = (copy / "data/augmented/train.npz").read_bytes()
    gate = ["--set", "augment.require_benefit=true", "--set", "utility.enabled=true"]
    gated = run(["ganpipe", "augment", *gate, "--set", "augment.seed=9"], cwd=copy)
    if utility["verdict"] == "hurts":
        assert gated.returncode == 2 and "verdict is 'hurts'" in gated.stderr
        assert (copy / "data/augmented/train.npz").read_bytes() == before
    else:
        assert gated.returncode == 0, gated.stderr[-2000:]
    (copy / "metrics/utility.json").write_text(json.dumps({"enabled": False, "verdict": None}))
    gated = run(["ganpipe", "augment", *gate], cwd=copy)
    assert gated.returncode == 2 and "has no verdict" in gated.stderr
    assert "Traceback" not in gated.stderr


def test_bad_param_stops_before_any_work(tmp_path):
    root = tiny_project(tmp_path)
    result = run(["ganpipe", "prepare", "--set", "train.epochs=-1"], cwd=root)
    assert result.returncode == 2
    assert "params.yaml: train.epochs: Input should be greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (root / "data").exists()


def test_missing_inputs_and_oversized_batch_are_clear_errors(tmp_path):
    root = tiny_project(tmp_path)
    result = run(["ganpipe", "train"], cwd=root)
    assert result.returncode == 2 and "run `ganpipe prepare` first" in result.stderr
    assert run(["ganpipe", "prepare"], cwd=root).returncode == 0
    result = run(["ganpipe", "train", "--set", "train.batch_size=100000"], cwd=root)
    assert result.returncode == 2
    assert "params.yaml: train.batch_size: 100000 is larger than the training set" in result.stderr
    assert not (root / "models").exists()


def test_off_label_rejection_end_to_end(tracked_run, tmp_path):
    """augment and evaluate with augment.reject_off_label: the stages load the domain classifier
    and filter with it. Real test digits stand in for a generator's samples, so the classifier
    (20 epochs on 320 digits) accepts most and rejects the ones it gets wrong."""
    import shutil

    root = tmp_path / "project"
    shutil.copytree(tracked_run[0], root)
    with np.load(root / "data/prepared/test.npz") as f:
        images, labels = f["images"], f["labels"]
    np.savez(root / "data/synthetic/samples.npz", images=images, labels=labels)
    on = ["--set", "augment.reject_off_label=true", "--set", "tracking.enabled=false"]
    on += ["--set", "evaluate.classifier_epochs=20"]  # a classifier that knows the digits

    result = run(["ganpipe", "augment", *on, "--set", "augment.synthetic_ratio=0.1"], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    filters = json.loads((root / "data/augmented/summary.json").read_text())["filters"]
    off_label = filters["filters"]["off_label"]
    accepted = sum(off_label["kept_by_class"].values())
    assert accepted + sum(off_label["dropped_by_class"].values()) == len(labels)
    assert 0.5 < accepted / len(labels) < 1.0
    # real test images are no copies of training images: the guard drops few (its promise: ~2%)
    guard = filters["filters"]["memorization"]
    assert guard["dropped"] <= 0.05 * accepted


def test_summary_says_what_was_exported_and_how_it_was_chosen():
    from ganpipe.cli import summary_lines

    auto = {"mode": "auto", "num_real": 5, "num_synthetic": 7}
    auto["auto"] = {"share": 0.2, "synthetic_weight": 0.5}
    lines = summary_lines({"augment": auto})
    assert "augment.mode=auto the study also chooses" in lines[0]  # utility off: how to ask
    assert lines[1] == (
        "Exported       5 real + 7 synthetic images: the utility study chose 0.2 of the pool at "
        "loss weight 0.5 (augment.mode auto)"
    )
    auto["auto"] |= {"teacher_mix": 0.5, "synthetic_start": 0.25}
    assert summary_lines({"augment": auto})[1].endswith(
        "chose 0.2 of the pool at loss weight 0.5, 0.5 of each synthetic target from the teacher, "
        "joining after 0.25 of the training (augment.mode auto)"
    )
    auto["auto"] = {"share": 0.5, "synthetic_weight": 1.0, "real_fill": 1.0, "synthetic_stop": 0.75}
    assert summary_lines({"augment": auto})[1].endswith(
        "chose 0.5 of the pool at loss weight 1, leaving after 0.75 of it, real images weighted "
        "for 1 of the gap to the pool (augment.mode auto)"
    )


def test_a_worth_at_the_bottom_of_the_curve_reads_as_a_bound():
    from ganpipe.cli import summary_lines

    flat = {"delta_balanced_accuracy": -0.025, "worth_in_real_images": 1.0}
    flat |= {"worth_in_real_images_low": 1.0, "worth_in_real_images_high": 1.0}
    utility = {"enabled": True, "verdict": "hurts", "verdict_metric": "balanced_accuracy"}
    lines = summary_lines({"utility": utility | {"headline": flat}})
    assert "worth 1.00x or less: below the real-only baseline" in lines[1]
