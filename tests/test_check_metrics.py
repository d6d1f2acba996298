"""`ganpipe check-metrics` in a real git + DVC repository: the workspace's metrics against the
committed ones, through `dvc metrics diff`, with the tolerances of the spread between machines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ganpipe.orchestration.check_metrics import PER_CLASS, TOLERANCES, compare
from tests.helpers import run
from tests.test_dvc import git

COMMITTED = {"classifier_fd": 3.068, "kid_mean": 0.270, "precision": 0.789, "num_real": 4000}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("check-metrics")
    (root / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: 'true'\n    metrics:\n"
        "      - metrics/eval.json:\n          cache: false\n"
    )
    (root / "metrics").mkdir()
    (root / "metrics/eval.json").write_text(json.dumps(COMMITTED))
    git(root, "init", "-q")
    assert run(["dvc", "init", "-q"], cwd=root).returncode == 0
    git(root, "add", "-A")
    git(root, "commit", "-qm", "metrics")
    return root


def check(repo: Path, **new: float):
    (repo / "metrics/eval.json").write_text(json.dumps({**COMMITTED, **new}))
    return run(["ganpipe", "check-metrics"], cwd=repo)


def test_the_spread_measured_between_two_machines_passes(repo):
    # the figures a fresh clone's dvc repro gave on another machine of ours (docs/dvc.md)
    done = check(repo, classifier_fd=2.833, kid_mean=0.226, precision=0.786)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 changed, all within the spread between machines" in done.stdout


def test_a_real_regression_fails_naming_the_metric(repo):
    done = check(repo, classifier_fd=4.1, precision=0.70)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert lines["metrics/eval.json:classifier_fd"].endswith("WORSE")
    assert lines["metrics/eval.json:precision"].endswith("WORSE")
    assert "2 of 2 changed beyond the spread" in done.stdout


def test_unchanged_metrics_and_a_changed_count(repo):
    assert check(repo).stdout.strip() == "metrics: the same as at HEAD"
    done = check(repo, num_real=3999)  # counts must match exactly
    assert done.returncode == 1 and "CHANGED" in done.stdout


def test_outside_a_dvc_repository_is_one_clear_error(tmp_path):
    done = run(["ganpipe", "check-metrics", "--root", str(tmp_path)], cwd=tmp_path)
    assert done.returncode == 2 and "not in a DVC repository" in done.stderr
    assert "Traceback" not in done.stderr


def test_tolerances_are_relative_or_absolute():
    diff = {
        "m.json": {"classifier_fd": {"old": 3.0, "new": 3.44}, "recall": {"old": 0.5, "new": 0.52}}
    }
    fd, recall = compare(diff)
    assert (
        fd.within
        and not compare({"m.json": {"classifier_fd": {"old": 3.0, "new": 3.46}}})[0].within
    )
    assert recall.within and TOLERANCES["recall"] == ("abs", 0.04)
    assert compare({"m.json": {"verdict": {"old": "helps", "new": "hurts"}}}) == []


def test_per_class_memorization_figures_get_their_own_spread():
    # memorization.json as two machines of ours gave it (metrics/ at 7d5fb70 and at 55c4b35)
    measured = {
        "closer_to_train_fraction": {"old": 0.513, "new": 0.515},
        "pixel_near_copy_fraction": {"old": 0.0014, "new": 0.0004},
        "per_class.3.closer_to_train_fraction": {"old": 0.418, "new": 0.484},
        "per_class.1.pixel_near_copy_fraction": {"old": 0.014, "new": 0.004},
        "per_class.1.dcr_train_median": {"old": 2.69, "new": 2.93},
    }
    assert all(c.within for c in compare({"metrics/memorization.json": measured}))
    # one class drifting towards its training images is a regression, not spread; the overall
    # figure keeps its tighter tolerance
    regressed = {
        "per_class.3.closer_to_train_fraction": {"old": 0.418, "new": 0.60},
        "closer_to_train_fraction": {"old": 0.513, "new": 0.484 + 0.066},
    }
    overall, per_class = compare({"metrics/memorization.json": regressed})  # sorted by name
    assert per_class.verdict == "WORSE" and overall.verdict == "WORSE"
    assert PER_CLASS["closer_to_train_fraction"][1] > TOLERANCES["closer_to_train_fraction"][1]
