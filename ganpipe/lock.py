"""One pipeline run per workspace at a time.

A workspace is the folder that holds a run's `models/` folder (`workspace_of`: the repository for
`ganpipe run` and `dvc repro`, a configuration's folder in a sweep). Whoever runs
stages there (a `ganpipe` command, `ganpipe run`, the Prefect flow) holds `<workspace>/.ganpipe.lock`
for as long as it works; a second one **stops at once** with a message naming the holder (pid, host,
start time, command), so a scheduler's retry or the user decides what to do next. Outputs written by
two runs at once would otherwise be a silent mix of both.

The lock is an `flock` on that file, which the kernel releases when its holder dies, however it dies
(SIGKILL included): a lock is never left behind, and the holder's record a killed process leaves in the
file is reported as taken over. The lock is re-entrant within a process (the flow holds it while its
tasks, in worker threads, run the stages).

Inside a DVC repository's root, `ganpipe run` and the flow also hold DVC's own lock (`.dvc/tmp/lock`,
the same `flock` that DVC takes), because `dvc repro` deletes a changed stage's outputs before it runs
the stage's command, so the command's own check would come too late. The stage commands that `dvc
repro` runs hold only ours (their parent holds DVC's). The flow lets DVC's lock go while it runs `dvc
status` or `dvc commit` itself (`dvc_lock_released`). DVC itself lets its lock go while a stage's
command runs (which then holds ours): in the second between the two a `ganpipe run` can win, and
that `dvc repro` stage then stops with our message; no outputs are mixed.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganpipe.errors import GanpipeError

if TYPE_CHECKING:
    from ganpipe.paths import Paths

LOCK_NAME = ".ganpipe.lock"
DVC_LOCK = Path(".dvc") / "tmp" / "lock"
log = logging.getLogger(__name__)


class WorkspaceBusy(GanpipeError):
    """Another process is running stages in this workspace."""


@dataclass
class _Held:
    fd: int
    count: int = 1


_held: dict[Path, _Held] = {}
_guard = threading.Lock()


def workspace_of(paths: Paths) -> Path:
    """The workspace of `paths`: the folder that holds its models folder (`.` for the default
    layout, the root of `Paths.under(root)`, a sweep configuration's folder). Not the common folder
    of every path: a run may read prepared data or an evaluator shared with others (sweeps, tests),
    and those must not make their workspaces one. Absolute, symlinks kept as they are."""
    return Path(os.path.abspath(paths.models)).parent


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _describe(record: dict[str, Any]) -> str:
    if not record:
        return "a process that left no record"
    return (
        f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')}, "
        f"command: {record.get('command')}"
    )


def _read_record(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 65536, 0).decode(errors="replace").strip()
        return json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}


def _acquire(path: Path, record: dict[str, Any] | None, busy: str) -> None:
    """flock `path` (re-entrant in this process); raise WorkspaceBusy naming the holder if taken.
    `record` (None: leave the file's content alone, DVC's format) is written once the lock is ours."""
    with _guard:
        if path in _held:
            _held[path].count += 1
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise WorkspaceBusy(f"cannot open the lock file {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_record(fd) if record is not None else {}
            os.close(fd)
            who = _describe(holder) if record is not None else _dvc_holder(path)
            raise WorkspaceBusy(busy.format(who=who, path=path)) from None
        if record is not None:
            left = _read_record(fd)
            if left and left.get("pid") != os.getpid():
                log.warning(
                    "%s: taking over the lock left by %s (no longer running)", path, _describe(left)
                )
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        _held[path] = _Held(fd)


def _release(path: Path, clear: bool) -> None:
    with _guard:
        held = _held[path]
        held.count -= 1
        if held.count:
            return
        del _held[path]
        if clear:  # an empty file means "released cleanly"; a record left behind means "killed"
            os.ftruncate(held.fd, 0)
        os.close(held.fd)  # closing the last descriptor releases the flock


def _dvc_holder(path: Path) -> str:
    try:  # zc.lockfile (DVC's lock) writes the holder's pid into the file
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid else "another DVC process"


def _dvc_root(workspace: Path) -> Path | None:
    return (
        workspace if (workspace / ".dvc").is_dir() and (workspace / "dvc.yaml").exists() else None
    )


@contextmanager
def workspace_lock(paths: Paths, command: str | None = None, dvc: bool = False) -> Iterator[Path]:
    """Hold the lock of the workspace of `paths` for the body; yields the workspace folder.

    `dvc`: also hold DVC's repository lock when the workspace is a DVC repository's root (for whole
    pipeline runs; never for the stage commands that `dvc repro` itself runs)."""
    root = workspace_of(paths)
    lock = root / LOCK_NAME
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": _now(),
        "command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    # DVC's lock first: a `dvc repro` between two stages holds only that one, and taking ours even
    # for a moment could make its next stage command fail.
    repo = _dvc_root(root) if dvc else None
    dvc_lock = repo / DVC_LOCK if repo else None
    if dvc_lock is not None:
        _acquire(
            dvc_lock,
            None,
            f"a DVC command ({{who}}) holds the lock of the DVC repository {repo} (for example "
            "`dvc repro`, which runs the same stages here). Wait for it to finish.",
        )
    try:
        _acquire(
            lock,
            record,
            "another run is using the workspace {path.parent} ({who}). Wait for it to finish, or "
            "give this run other output folders (e.g. run it in another directory).",
        )
        try:
            yield root
        finally:
            _release(lock, clear=True)
    finally:
        if dvc_lock is not None and dvc_lock in _held:
            _release(dvc_lock, clear=False)


@contextmanager
def dvc_lock_released(repo: Path) -> Iterator[None]:
    """Let go of DVC's lock on `repo` (if this process holds it) while the body runs a DVC command;
    take it back afterwards, waiting for it if a DVC command got it meanwhile."""
    path = Path(repo).resolve() / DVC_LOCK
    with _guard:
        held = _held.pop(path, None)
        if held is not None:
            os.close(held.fd)
    try:
        yield
    finally:
        if held is not None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocking: the window is a DVC command's length
            with _guard:
                _held[path] = _Held(fd, held.count)
