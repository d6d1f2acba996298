"""DVC for the Prefect flow: pull the data, and skip stages whose inputs did not change, by DVC's
own record: one caching mechanism, not two.

`dvc.yaml` already names every stage's deps, params and outs, and `dvc.lock` records their hashes,
so the Prefect flow asks DVC (`dvc status <stage>`) instead of keeping a second cache of its own,
and after running a stage records it (`dvc commit <stage>`), exactly as `dvc repro` would. A later
`dvc repro` and a later flow run therefore agree on what is up to date.

This applies only where the flow's outputs are the ones dvc.yaml describes: the run's root is the
DVC repository's root (so the default paths match) and its params are the repository's
`params.yaml` with no overrides. Anywhere else every stage runs.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganpipe.io import read_json
from ganpipe.lock import dvc_lock_released
from ganpipe.ops import Logger, console_script

if TYPE_CHECKING:
    from ganpipe.ops.tracking import Tracker
    from ganpipe.pipeline import Paths

log = logging.getLogger(__name__)


def _dvc(repo: Path, *args: str, timeout: float | None = 600) -> subprocess.CompletedProcess[str]:
    # The flow holds DVC's repository lock for its whole run (ganpipe/lock.py); a DVC command needs it.
    with dvc_lock_released(repo):
        return subprocess.run(
            [console_script("dvc"), *args],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def find_repo(path: str | Path) -> Path | None:
    """The DVC repository `path` lies in (the nearest folder upwards with a `.dvc/`), or None."""
    path = Path(path).resolve()
    for d in (path, *path.parents):
        if (d / ".dvc").is_dir():
            return d
    return None


def pull(root: str | Path, logger: Logger = log) -> str:
    """`dvc pull` when `root` is inside a DVC repository that has a remote; else nothing. Returns
    what happened ("pulled", "no DVC repository", "no DVC remote"); raises RuntimeError when the
    pull fails (e.g. the repository's lock is held by another DVC command: worth retrying)."""
    repo = find_repo(root)
    if repo is None:
        logger.info("data: %s is not in a DVC repository; nothing to pull", root)
        return "no DVC repository"
    remotes = _dvc(repo, "remote", "list", timeout=60)
    if remotes.returncode != 0 or not remotes.stdout.strip():
        logger.info("data: no DVC remote configured in %s; nothing to pull", repo)
        return "no DVC remote"
    pulled = _dvc(repo, "pull", timeout=None)  # as long as the data takes
    if pulled.returncode != 0:
        raise RuntimeError(f"dvc pull in {repo} failed: {pulled.stderr.strip()[-2000:]}")
    logger.info("data: dvc pull: %s", pulled.stdout.strip()[-500:])
    return "pulled"


def dvc_stage_repo(root: str | Path, params_file: str | None, overrides: list[str]) -> Path | None:
    """The repository whose dvc.lock can vouch for this run's stages, or None."""
    repo = Path(root).resolve()
    if overrides or not (repo / ".dvc").is_dir() or not (repo / "dvc.yaml").exists():
        return None
    if params_file is not None and Path(params_file).resolve() != repo / "params.yaml":
        return None
    return repo


def is_up_to_date(repo: Path, stage: str) -> bool:
    """True when DVC reports no change in the stage's deps, params or outs (outs present)."""
    result = _dvc(repo, "status", stage, "--json")
    if result.returncode != 0:
        return False  # unknown stage, broken lock, ...: run it
    try:
        return json.loads(result.stdout or "{}") == {}
    except json.JSONDecodeError:
        return False


def skipped_result(repo: Path, stage: str, paths: Paths, tracker: Tracker) -> dict[str, Any] | None:
    """What an up-to-date stage returns instead of running, or None when it must run. The run's
    tracker notes the skip; a skipped evaluate hands on (and logs) the metrics it wrote last time,
    which are still those of its unchanged outputs, so the run's report is complete."""
    if not is_up_to_date(repo, stage):
        return None
    tracker.set_tags({f"stage.{stage}": "skipped: up to date (dvc status)"})
    if stage == "evaluate":
        metrics = read_json(paths.metrics / "eval.json")
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
        return metrics
    return {"skipped": True}


def record(repo: Path, stage: str) -> None:
    """Record the stage's current deps, params and outs in dvc.lock (and outs in DVC's cache)."""
    result = _dvc(repo, "commit", "--force", stage)
    if result.returncode != 0:
        raise RuntimeError(f"dvc commit {stage} in {repo} failed: {result.stderr.strip()[-2000:]}")
