"""One run per workspace, interrupted runs, and a SQLite tracking store shared by processes that
start at once: real `ganpipe` and `dvc` processes, real signals, real stores."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import GANPIPE, TINY, quiet_env, run, tiny_project

# Never finishes in a test: every run of it is interrupted or killed (12 steps an epoch,
# checkpoints every 5 steps), so it can be as long as need be whatever the machine's speed.
LONG = "train.epochs=2000"
# A run that must finish: at its first checkpoint (step 5) it is paused (`paused`) while the test
# acts beside it, so it need not be long to be caught mid-way; 240 steps leave seconds to spare.
PAUSABLE = "train.epochs=20"


def start(cmd: list[str], cwd: Path, **env: str) -> subprocess.Popen[str]:
    """`cmd` running in the background, with Ctrl-C's signal at its default, as in a terminal: a
    suite started in the background by a non-interactive shell (`pytest &`) inherits SIGINT
    ignored, and Python then never turns it into KeyboardInterrupt."""
    exe = GANPIPE if cmd[0] == "ganpipe" else cmd[0]
    return subprocess.Popen(
        [exe, *cmd[1:]], cwd=cwd, env=quiet_env(**env), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def wait_for_checkpoint(root: Path, proc: subprocess.Popen[str], seconds: float = 300) -> Path:
    """The first checkpoint the running `proc` writes under `root` (training is under way)."""
    deadline = time.monotonic() + seconds
    while not (found := sorted(root.glob("checkpoints/*/ckpt_*.npz"))):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(
                f"exited {proc.returncode} before a checkpoint:\n{out[-2000:]}{err[-2000:]}"
            )
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.2)
    return found[0]


@contextmanager
def paused(pid: int) -> Iterator[None]:
    """Process `pid` stopped (SIGSTOP) for the block, then continued: what the block does happens
    while that process is certainly mid-way, however little work it has left."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def just_past_the_last_checkpoint(root: Path) -> str:
    """`train.epochs=N` for a rerun that resumes the newest checkpoint under `root` and trains only
    to the end of the epoch after it, not to LONG's end: the run key leaves `epochs` out
    (ganpipe/gan/training/checkpoint.py), so these epochs resume the same run, and they end past
    the checkpoint's step (fewer would discard it, exactly at it would leave nothing to do)."""
    from ganpipe.io import read_npz

    newest = max(root.glob("checkpoints/*/ckpt_*.npz"), key=lambda p: p.stat().st_mtime_ns)
    history = read_npz(newest, ["history"])["history"]  # a row a step: step, epoch (from 1), …
    return f"train.epochs={int(history[-1, 1]) + 1}"


def digest(root: Path, *folders: str) -> dict[str, str]:
    """Content hash of every file under `folders` (the outputs a second run must not touch)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }


def mlflow_statuses(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT status FROM runs ORDER BY start_time")]
    finally:
        con.close()


def dot_files(root: Path, *folders: str) -> list[Path]:
    """Temp files an interrupted atomic write would leave (every temp name starts with a dot)."""
    return [p for f in folders for p in (root / f).rglob(".*") if p.name != ".gitignore"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_second_run_stops_naming_the_first_and_an_interrupt_resumes(tmp_path, sig):
    """`ganpipe run` twice in one workspace: the second stops at once naming the first and
    changes nothing; then the first is interrupted (Ctrl-C, or a scheduler's SIGTERM): outputs
    whole, lock released, MLflow run KILLED; a rerun resumes training from its checkpoint."""
    root = tiny_project(tmp_path / "w", tracking=True)
    first = start(["ganpipe", "run", "--quiet", "--set", LONG], root)
    try:
        wait_for_checkpoint(root, first)
        before = digest(root, "data", "checkpoints")
        # paused while the second run starts: however slow its start-up, the first is mid-way
        with paused(first.pid):
            second = run(["ganpipe", "run", "--quiet", "--set", LONG], cwd=root, timeout=120)
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        assert f"another run is using the workspace {root.resolve()}" in second.stderr
        assert f"pid {first.pid}" in second.stderr and "ganpipe run --quiet" in second.stderr
        assert digest(root, "data") == {k: v for k, v in before.items() if k.startswith("data")}
        first.send_signal(sig)
        out, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 128 + sig, err[-3000:]
    assert f"interrupted ({sig.name})" in err and "Traceback" not in err
    assert (root / ".ganpipe.lock").read_text() == ""  # released cleanly
    assert mlflow_statuses(root / "mlflow.db") == ["KILLED"]
    assert not dot_files(root, "data", "models", "checkpoints")
    assert not (root / "models" / "generator.keras").exists()  # train never finished
    steps = sorted(root.glob("checkpoints/*/ckpt_*.npz"))
    assert steps, "the checkpoints were lost"
    if sig != signal.SIGINT:
        # SIGTERM unwinds as Ctrl-C does (ganpipe.cli turns it into KeyboardInterrupt), so what it
        # leaves is what the SIGINT case leaves, whose rerun resumes below (and after SIGKILL,
        # with no unwinding at all: test_a_killed_holder_is_taken_over_and_training_resumes).
        return
    resume = just_past_the_last_checkpoint(root)
    again = run(["ganpipe", "train", "--quiet", "--set", resume], cwd=root, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step" in again.stdout
    assert (root / "models" / "generator.keras").exists()


def test_a_killed_holder_is_taken_over_and_training_resumes(tmp_path):
    """SIGKILL leaves no `finally`: the lock record stays in the file, the kernel frees the lock;
    the next command takes it over, says so, and resumes from the last checkpoint."""
    root = tiny_project(tmp_path / "w")
    assert run(["ganpipe", "prepare", "--quiet"], cwd=root).returncode == 0
    first = start(["ganpipe", "train", "--quiet", "--set", LONG], root)
    try:
        wait_for_checkpoint(root, first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()
    left = json.loads((root / ".ganpipe.lock").read_text())
    assert left["pid"] == first.pid
    resume = just_past_the_last_checkpoint(root)
    again = run(["ganpipe", "train", "--quiet", "--set", resume], cwd=root, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"taking over the lock left by pid {first.pid}" in again.stderr
    assert "resuming from step" in again.stdout


def test_dvc_repro_and_a_run_in_one_repository_exclude_each_other(tmp_path):
    """`dvc repro` deletes a changed stage's outputs before its command runs, so `ganpipe run` holds
    DVC's own lock too: `dvc repro` beside it stops before touching anything; and `ganpipe run`
    beside a `dvc repro` stops, naming the stage command that repro runs."""
    from tests.test_dvc import full_params, make_repo, repro_here

    (tmp_path / "repo").mkdir()
    repo = make_repo(tmp_path / "repo", full_params(TINY, LONG))
    assert run(["ganpipe", "prepare", "--quiet"], cwd=repo).returncode == 0
    first = start(["ganpipe", "run", "--quiet"], repo)
    try:
        wait_for_checkpoint(repo, first)
        before = digest(repo, "data")
        with paused(first.pid):  # however slowly repro starts, the run is mid-way
            repro = repro_here(repo)
        assert repro.returncode != 0
        assert "Unable to acquire lock" in repro.stderr + repro.stdout
        assert digest(repo, "data") == before  # prepare's outputs were not deleted
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)

    # dvc repro first: its stage command holds the workspace (DVC lets its own lock go while a
    # command runs), and `ganpipe run` stops naming it; repro carries on undisturbed.
    shutil.rmtree(repo / "checkpoints")  # train from scratch, paused at its first checkpoint
    (repo / "params.yaml").write_text(full_params(TINY, PAUSABLE))  # (repro runs to the end)
    repro_proc = subprocess.Popen(
        ["dvc", "repro", "train"], cwd=repo, env=quiet_env(PYTHONPATH=str(repo)), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for_checkpoint(repo, repro_proc)
        stage = json.loads((repo / ".ganpipe.lock").read_text())["pid"]  # dvc's `ganpipe train`
        with paused(stage):
            second = run(["ganpipe", "run", "--quiet"], cwd=repo, timeout=120)
    finally:
        out, err = repro_proc.communicate(timeout=600)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert "another run is using the workspace" in second.stderr
    assert "command: ganpipe train --quiet" in second.stderr  # dvc.yaml's train command
    assert repro_proc.returncode == 0, out[-2000:] + err[-2000:]  # repro was not disturbed


def test_runs_starting_at_once_share_a_new_sqlite_store(tmp_path):
    """Three workspaces, one new SQLite store, three `ganpipe train` started together: MLflow's
    first-use migration runs once (store_setup_lock) and every run is recorded FINISHED."""
    db = tmp_path / "shared" / "mlflow.db"
    uri = f"sqlite:///{db}"
    roots = [tiny_project(tmp_path / f"w{i}", tracking=True) for i in range(3)]
    assert run(["ganpipe", "prepare", "--quiet"], cwd=roots[0]).returncode == 0
    for r in roots[1:]:  # the same prepared data (prepare is deterministic and never tracked)
        shutil.copytree(roots[0] / "data", r / "data")
    procs = [
        start(["ganpipe", "train", "--quiet", "--set", f"tracking.uri={uri}"], r) for r in roots
    ]
    results = [(p, *p.communicate(timeout=600)) for p in procs]
    for p, _, err in results:
        assert p.returncode == 0, err[-3000:]
    assert mlflow_statuses(db) == ["FINISHED"] * 3


def test_queued_dvc_experiments_on_two_jobs_record_every_run_in_the_repository(tmp_path):
    """`dvc exp run --queue` twice, then `dvc queue start --jobs 2`: both experiments run at once,
    each in a temporary copy of the repository, and both record into the repository's SQLite store
    (not into their copies, which DVC deletes), each with its generator registered. (Up to
    evaluate, which registers it: utility and augment, which only log into the run, are left out.)"""
    from tests.test_dvc import full_params, make_repo

    (tmp_path / "repo").mkdir()
    repo = make_repo(tmp_path / "repo", full_params(TINY, "tracking.enabled=true"))
    env = {"PYTHONPATH": str(repo)}
    for lr in ("0.0001", "0.0004"):
        exp = ["dvc", "exp", "run", "--queue", "-S", f"train.g_learning_rate={lr}", "evaluate"]
        queued = run(exp, repo, **env)
        assert queued.returncode == 0, queued.stderr
    started = run(["dvc", "queue", "start", "--jobs", "2"], repo, **env)
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 600
    while True:
        status = run(["dvc", "queue", "status"], repo).stdout
        if status.count("Success") + status.count("Failed") == 2:
            break
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status.count("Success") == 2, status
    assert mlflow_statuses(repo / "mlflow.db") == ["FINISHED", "FINISHED"]
    con = sqlite3.connect(repo / "mlflow.db")
    versions = con.execute("SELECT version FROM model_versions ORDER BY version").fetchall()
    con.close()
    assert versions == [(1,), (2,)]


def test_default_store_of_a_queued_experiment_is_the_repositorys(tmp_path):
    from ganpipe.mlflow_adapter.tracking import default_store_dir

    exp = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    exp.mkdir(parents=True)
    assert default_store_dir(exp) == (tmp_path / "repo").resolve()
    assert default_store_dir(exp / "sub") == (tmp_path / "repo").resolve()
    assert default_store_dir(tmp_path) == tmp_path.resolve()
