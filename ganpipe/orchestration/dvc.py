"""DVC for the Prefect flow: pull the data, and skip stages whose inputs did not change, by DVC's
own record: one caching mechanism, not two.

`dvc.yaml` already names every stage's deps, params and outs, and `dvc.lock` records their hashes,
so the Prefect flow asks DVC (`dvc status <stage>`) instead of keeping a second cache of its own,
and after running a stage records it (`dvc commit <stage>`), exactly as `dvc repro` would. A later
`dvc repro` and a later flow run therefore agree on what is up to date.

This applies only where the flow's outputs are the ones dvc.yaml describes: the run's root is the
DVC repository's root (so the default paths match) and its params are the repository's
`params.yaml` with no overrides. Anywhere else every stage runs.

The data comes from the user's own DVC remote, if any: the repository commits none. `pull` runs
`dvc pull` only when a default remote is configured and reachable; a missing local remote, or one
lacking some outputs, is a warning and the run builds what is missing.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganpipe.errors import GanpipeError
from ganpipe.io import read_json
from ganpipe.lock import dvc_lock_released
from ganpipe.orchestration import Logger, console_script

if TYPE_CHECKING:
    from ganpipe.pipeline import Paths
    from ganpipe.tracker import Tracker

log = logging.getLogger(__name__)


def run_dvc(
    repo: Path, *args: str, timeout: float | None = 600
) -> subprocess.CompletedProcess[str]:
    """`dvc <args>` in `repo`, output captured. The flow holds DVC's repository lock for its whole
    run (ganpipe/lock.py); a DVC command needs it, so it is released meanwhile."""
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


class RemoteError(GanpipeError):
    """The DVC remote cannot be used as configured (e.g. its storage's DVC plugin is missing):
    trying again would fail again."""


# DVC's own test for "not a path" (dvc/config.py, Config._resolve): anything else is a local path.
_URL_SCHEME = re.compile(r"\w+://")
_LOCK_HELD = "Unable to acquire lock"  # dvc/lock.py: another DVC command holds the repository
_CHECKOUT_FAILED = "Checkout failed for following targets:"  # dvc/exceptions.py, CheckoutError


def default_remote(repo: Path) -> tuple[str, str] | None:
    """The repository's default DVC remote as (name, url), or None when there is none. The url
    is as DVC resolves it: a relative path is relative to the folder of the config file naming it
    (`.dvc/` for `.dvc/config` and `.dvc/config.local`), and `dvc config` prints it absolute."""
    default = run_dvc(repo, "remote", "default", timeout=60)
    name = default.stdout.strip()
    if default.returncode != 0 or not name:
        return None
    url = run_dvc(repo, "config", f"remote.{name}.url", timeout=60)
    return name, url.stdout.strip() if url.returncode == 0 else ""


def local_path(repo: Path, url: str) -> Path | None:
    """The directory a local remote's url names; None for a remote elsewhere (s3://, ssh://...)."""
    if url.startswith("file://"):
        url = url.removeprefix("file://")
    elif _URL_SCHEME.match(url):
        return None
    path = Path(url).expanduser()
    return path if path.is_absolute() else (repo / ".dvc" / path).resolve()


def pull(root: str | Path, logger: Logger = log) -> str:
    """`dvc pull` when `root` is inside a DVC repository whose default remote is configured and
    reachable; else nothing. A remote is the user's choice: none is committed. Returns what
    happened:

    - "no DVC repository", "no DVC remote": nothing to pull (info);
    - "remote unreachable": a local remote whose directory does not exist; one warning saying what
      to do, and the run goes on, building what is missing (network remotes are not probed: their
      pull is tried);
    - "missing from remote": the pull got what the remote has, but some of the pipeline's outputs
      are not on it (a new remote nobody pushed to); one warning, and the run builds them;
    - "pulled".

    Raises RemoteError (not worth retrying) when the remote's DVC plugin is missing, RuntimeError
    for any other failed pull (another DVC command holding the repository's lock, a network or
    credentials error: worth retrying), each message saying what to do."""
    repo = find_repo(root)
    if repo is None:
        logger.info("data: %s is not in a DVC repository; nothing to pull", root)
        return "no DVC repository"
    remote = default_remote(repo)
    if remote is None:
        logger.info(
            "data: no DVC remote configured in %s (no default remote); nothing to pull. To share "
            "data between machines: `dvc remote add -d <name> <url>` (--local: this machine only)",
            repo,
        )
        return "no DVC remote"
    name, url = remote
    where = local_path(repo, url) if url else None
    if not url or (where is not None and not where.is_dir()):
        if not url:
            problem = "has no url"
        elif where is not None and where.exists():
            problem = f"is not reachable: {where} is not a directory"
        else:
            problem = f"is not reachable: {where} does not exist"
        logger.warning(
            "data: the DVC remote '%s' (%s) %s; nothing pulled, the run goes on and builds what "
            "is missing. To use it, create it (`mkdir -p %s`, then `dvc push` from a machine that "
            "has the data); or point it elsewhere (`dvc remote modify %s url <path or url>`); or "
            "remove it (`dvc remote remove %s`; add --local if it is in .dvc/config.local)",
            name, url or "no url", problem, where or "<path>", name, name,
        )  # fmt: skip
        return "remote unreachable"
    pulled = run_dvc(repo, "pull", timeout=None)  # as long as the data takes
    if pulled.returncode == 0:
        logger.info("data: dvc pull from '%s' (%s): %s", name, url, pulled.stdout.strip()[-500:])
        return "pulled"
    output = f"{pulled.stdout}\n{pulled.stderr}"
    if _CHECKOUT_FAILED in output:
        # dvc pull fetched what the remote has and checked it out; these outputs it does not have.
        missing = output.split(_CHECKOUT_FAILED, 1)[1].split("Is your cache up to date?", 1)[0]
        logger.warning(
            "data: the DVC remote '%s' (%s) lacks some of the pipeline's outputs (%s); pulled the "
            "rest, and the run builds these. To share them, `dvc push` from a machine that has "
            "them",
            name, url, ", ".join(missing.split()),
        )  # fmt: skip
        return "missing from remote"
    tail = pulled.stderr.strip()[-2000:]
    if _LOCK_HELD in output:
        raise RuntimeError(
            f"dvc pull in {repo}: another DVC command holds the repository's lock (retried; if "
            f"none is running, see DVC's message): {tail}"
        )
    plugin = re.search(r"requires '(dvc-\w+)' to be installed", output)
    if plugin:
        raise RemoteError(
            f"dvc pull from the DVC remote '{name}' ({url}) in {repo} needs DVC's plugin for that "
            f"storage: pip install '{plugin.group(1).replace('-', '[', 1)}]'. Or point the remote "
            f"elsewhere (`dvc remote modify {name} url ...`) or remove it (`dvc remote remove "
            f"{name}`)"
        )
    raise RuntimeError(
        f"dvc pull from the DVC remote '{name}' ({url}) in {repo} failed: {tail}\nCheck that the "
        f"remote is reachable from here and its credentials (from the environment or the "
        f"storage tool's own profile; `dvc remote modify {name} ...`), point it elsewhere "
        f"(`dvc remote modify {name} url ...`), or remove it (`dvc remote remove {name}`) to run "
        f"without pulling"
    )


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
    result = run_dvc(repo, "status", stage, "--json")
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
    result = run_dvc(repo, "commit", "--force", stage)
    if result.returncode != 0:
        raise RuntimeError(f"dvc commit {stage} in {repo} failed: {result.stderr.strip()[-2000:]}")
