"""`dvc push` / `dvc pull` of pipeline outputs through a local-directory remote, in temporary git+DVC
repos, and the flow's update step (`ganpipe.orchestration.dvc.pull`): no remote committed, a remote the user
added, one that is missing, one that is empty, and a network remote that fails."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml

from ganpipe.errors import GanpipeError
from ganpipe.orchestration import dvc as ops_dvc
from tests.helpers import REPO, TINY, run
from tests.test_dvc import full_params, git, make_repo


def dvc(root: Path, *args: str) -> str:
    result = run(["dvc", *args], cwd=root)
    assert result.returncode == 0, (
        f"dvc {' '.join(args)}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    )
    return result.stdout


def tree_hash(folder: Path) -> str:
    """SHA-256 over every file's relative path and bytes."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def content_hash(root: Path) -> str:
    return json.loads((root / "data/prepared/summary.json").read_text())["content_hash"]


def test_push_then_pull_restores_prepared_data(tmp_path):
    (tmp_path / "project").mkdir()
    root = make_repo(tmp_path / "project", full_params(TINY))
    dvc(root, "repro", "prepare")
    before, data_hash = tree_hash(root / "data/prepared"), content_hash(root)
    dvc(root, "remote", "add", "-d", "mine", str(tmp_path / "storage"))
    assert "pushed" in dvc(root, "push")
    assert any(p.is_file() for p in (tmp_path / "storage").rglob("*"))

    shutil.rmtree(root / ".dvc/cache")
    shutil.rmtree(root / "data/prepared")
    dvc(
        root, "pull", "prepare"
    )  # only prepare ever ran: a bare `dvc pull` wants every stage's outs
    assert tree_hash(root / "data/prepared") == before
    assert content_hash(root) == data_hash
    assert dvc(root, "status", "prepare").strip().endswith("up to date.")


def test_the_repository_commits_no_remote(tmp_path, caplog):
    """A remote is the user's choice: with the committed `.dvc/config` there is none, and the
    flow's update step pulls nothing (and does not fail)."""
    caplog.set_level(logging.INFO)
    (tmp_path / "project").mkdir()
    root = make_repo(tmp_path / "project", full_params(TINY))
    shutil.copy(REPO / ".dvc/config", root / ".dvc/config")
    assert dvc(root, "remote", "list").strip() == ""
    assert dvc(root, "config", "core.analytics").strip() == "false"
    assert ops_dvc.pull(root) == "no DVC remote"
    assert "no DVC remote configured" in caplog.text


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A committed project whose dvc.yaml is only the prepare stage, prepared (not pushed): each
    test clones it, as a new user would, and picks a remote."""
    base = tmp_path_factory.mktemp("remote")
    (base / "project").mkdir()
    root = make_repo(base / "project", full_params(TINY))
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": stages["prepare"]}}))
    dvc(root, "repro", "prepare")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "prepared data")
    return root


def clone_of(project: Path, tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    assert not (clone / "data/prepared").exists()
    return clone


def test_a_fresh_clone_pulls_from_a_remote_the_user_added(prepared, tmp_path, caplog):
    """A remote beside the checkout, added with a relative path (DVC stores it relative to
    `.dvc/`): `dvc push` creates it, and the flow's update step in a new clone pulls from it."""
    caplog.set_level(logging.INFO)
    project = tmp_path / "project"
    git(tmp_path, "clone", "-q", str(prepared), str(project))
    shutil.copytree(prepared / "data/prepared", project / "data/prepared")
    shutil.copytree(prepared / ".dvc/cache", project / ".dvc/cache")
    dvc(project, "remote", "add", "-d", "shared", "../dvc-storage")
    storage = tmp_path / "dvc-storage"
    assert "url = ../../dvc-storage" in (project / ".dvc/config").read_text()
    assert ops_dvc.default_remote(project) == ("shared", str(storage))
    dvc(project, "push")
    assert any(p.is_file() for p in storage.rglob("*"))
    git(project, "commit", "-qam", "a remote beside the checkout")

    clone = clone_of(project, tmp_path)
    assert ops_dvc.pull(clone) == "pulled"
    assert tree_hash(clone / "data/prepared") == tree_hash(prepared / "data/prepared")
    assert dvc(clone, "status").strip().endswith("up to date.")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_missing_local_remote_is_one_warning_and_no_pull(prepared, tmp_path, caplog):
    clone = clone_of(prepared, tmp_path)
    # relative to the config file's folder, `.dvc/`, as DVC reads it: <tmp_path>/storage
    (clone / ".dvc/config.local").write_text(
        "[core]\n    remote = gone\n['remote \"gone\"']\n    url = ../../storage\n"
    )
    storage = tmp_path / "storage"
    assert ops_dvc.default_remote(clone) == ("gone", str(storage))
    assert ops_dvc.local_path(clone, "../../storage") == storage
    assert ops_dvc.local_path(clone, "s3://bucket/ganpipe") is None

    assert ops_dvc.pull(clone) == "remote unreachable"  # no exception: the run goes on
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    for hint in ("'gone'", f"{storage} does not exist", "mkdir -p", "dvc remote modify gone url"):
        assert hint in warnings[0]
    assert "dvc remote remove gone" in warnings[0]
    assert not storage.exists()
    assert not (clone / "data/prepared").exists()


def test_an_empty_remote_is_a_warning_to_push(prepared, tmp_path, caplog):
    """A reachable remote nobody pushed to: `dvc pull` fails its checkout; that is a warning
    (the run builds the outputs), not a failed run."""
    clone = clone_of(prepared, tmp_path)
    (tmp_path / "storage").mkdir()
    dvc(clone, "remote", "add", "-d", "--local", "empty", str(tmp_path / "storage"))
    assert ops_dvc.pull(clone) == "missing from remote"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "'empty'" in warnings[0] and "(data/prepared)" in warnings[0]
    assert "`dvc push` from a machine that has them" in warnings[0]


def test_a_network_remote_that_fails_says_what_to_do(prepared, tmp_path):
    """Network remotes are not probed: the pull is tried, and its failure names the fix. (OSS:
    its plugin, dvc-oss, is not installed, so nothing reaches the network.)"""
    if importlib.util.find_spec("dvc_oss") is not None:
        pytest.skip("dvc-oss is installed: the pull would try the network")
    clone = clone_of(prepared, tmp_path)
    dvc(clone, "remote", "add", "-d", "--local", "cloud", "oss://bucket/ganpipe")
    with pytest.raises(ops_dvc.RemoteError, match=r"pip install 'dvc\[oss\]'") as raised:
        ops_dvc.pull(clone)
    assert isinstance(raised.value, GanpipeError)  # the flow does not retry it
    assert "dvc remote remove cloud" in str(raised.value)
