"""The one function that runs a stage, and the one loop that runs several.

The CLI (and so `dvc.yaml`), `ganpipe run`, the Prefect flow, sweeps and the utility stage's
scenarios all go through `run_stage`/`run_stages`, which look the stage up in the registry
(`ganpipe.registry.STAGES`) and call its module's entry point,
`ganpipe.stages.<name>.run(params, paths, tracker, progress) -> dict`. No stage logic lives here.
Stage modules are imported on first use, so `ganpipe prepare` never loads TensorFlow; before a
stage that imports Keras, a missing Keras backend is one message naming the extras to install
(ganpipe.backend), not a ModuleNotFoundError from inside Keras.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ganpipe.backend import require_keras_backend
from ganpipe.config import Params
from ganpipe.lock import workspace_lock
from ganpipe.paths import Paths
from ganpipe.registry import NAMES, stage
from ganpipe.tracker import NULL_TRACKER, RUN_FILE, Tracker

__all__ = ["STAGES", "Paths", "run_file", "run_stage", "run_stages"]

# The pipeline order (ganpipe/registry.py says why it is this one).
STAGES = NAMES
DEFAULT_PATHS = Paths()
# Called before each stage of `run_stages` with its name (progress lines, a logger).
OnStage = Callable[[str], None]


def run_stage(
    name: str,
    params: Params,
    paths: Paths = DEFAULT_PATHS,
    tracker: Tracker = NULL_TRACKER,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one stage; return its summary (metrics for `evaluate`)."""
    if stage(name).keras:
        require_keras_backend()
    module = importlib.import_module(f"ganpipe.stages.{name}")
    with workspace_lock(paths):  # re-entrant: the CLI and the flow already hold it for the run
        result = module.run(params, paths, tracker, progress)
    tracker.raise_if_lost(name)
    return result


def run_stages(
    names: Iterable[str],
    params: Params,
    paths: Paths = DEFAULT_PATHS,
    tracker: Tracker = NULL_TRACKER,
    progress: bool = True,
    on_stage: OnStage | None = None,
    runner: Callable[..., dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run `names` in order; {name: result, "seconds": {name: seconds}}. `runner` replaces
    `run_stage` for callers that wrap each stage (the Prefect flow's retried task)."""
    results: dict[str, Any] = {"seconds": {}}
    for name in names:
        if on_stage is not None:
            on_stage(name)
        t0 = time.perf_counter()
        results[name] = (runner or run_stage)(name, params, paths, tracker, progress)
        results["seconds"][name] = round(time.perf_counter() - t0, 1)
    return results


def run_file(paths: Paths) -> Path:
    """The file through which a stage run on its own finds the pipeline's MLflow run."""
    return paths.models / RUN_FILE
