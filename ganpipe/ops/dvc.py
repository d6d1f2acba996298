"""Skip stages whose inputs did not change, by DVC's own record: one caching mechanism, not two.

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
import subprocess
import sys
from pathlib import Path


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = str(Path(sys.executable).parent / "dvc")
    return subprocess.run([exe, *args], cwd=repo, capture_output=True, text=True, timeout=600)


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


def record(repo: Path, stage: str) -> None:
    """Record the stage's current deps, params and outs in dvc.lock (and outs in DVC's cache)."""
    result = _dvc(repo, "commit", "--force", stage)
    if result.returncode != 0:
        raise RuntimeError(f"dvc commit {stage} in {repo} failed: {result.stderr.strip()[-2000:]}")
