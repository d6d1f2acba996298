"""`dvc push` / `dvc pull` of pipeline outputs through a local-directory remote, in temporary git+DVC
repos: a remote added by the user, and the default remote that `.dvc/config` commits."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

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


def test_committed_default_remote_serves_a_fresh_clone(tmp_path):
    """The repo's `.dvc/config` names a default remote beside the checkout (`../ganpipe-dvc-storage`):
    repro works while it does not exist, `dvc push` creates it, and a second clone pulls from it."""
    (tmp_path / "project").mkdir()
    root = make_repo(tmp_path / "project", full_params(TINY))
    shutil.copy(REPO / ".dvc/config", root / ".dvc/config")
    storage = tmp_path / "ganpipe-dvc-storage"
    assert f"remote.local.url={storage}\n" in dvc(root, "config", "--list")
    dvc(root, "repro", "prepare")  # the remote is not needed, and does not exist yet
    assert not storage.exists()
    dvc(root, "push", "prepare")
    assert any(p.is_file() for p in storage.rglob("*"))
    git(root, "add", "-A")
    git(root, "commit", "-qm", "prepared data")

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(root), str(clone))
    assert not (clone / "data/prepared").exists()
    dvc(clone, "pull", "prepare")
    assert tree_hash(clone / "data/prepared") == tree_hash(root / "data/prepared")
