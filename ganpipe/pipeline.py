"""The stages in order, and the one function that runs any of them.

The CLI (and so `dvc.yaml`), `ganpipe run` and the Prefect flow all call `run_stage`, which looks
the stage up in `STAGES` and calls its module's entry point,
`ganpipe.stages.<name>.run(params, paths, tracker, progress) -> dict`. No stage logic lives here.
Stage modules are imported on first use, so `ganpipe prepare` never loads TensorFlow; before a
stage that imports Keras, a missing Keras backend is one message naming the extras to install
(ganpipe.backend), not a ModuleNotFoundError from inside Keras.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ganpipe.backend import require_keras_backend
from ganpipe.config import Params
from ganpipe.lock import workspace_lock
from ganpipe.ops.tracking import NULL_TRACKER, RUN_FILE, Tracker
from ganpipe.paths import Paths

__all__ = ["STAGES", "Paths", "run_file", "run_stage"]

# The pipeline order; each name is a module in ganpipe/stages/. The classifier (the evaluator)
# comes before augment, whose filters use it; utility before augment, whose export it can gate
# (augment.require_benefit).
STAGES = ("prepare", "train", "generate", "classifier", "utility", "augment", "evaluate")
DEFAULT_PATHS = Paths()
# The one stage that runs without a Keras backend (it imports Keras only to download a Keras dataset,
# and checks for a backend there itself).
NO_KERAS = frozenset({"prepare"})


def run_stage(
    name: str,
    params: Params,
    paths: Paths = DEFAULT_PATHS,
    tracker: Tracker = NULL_TRACKER,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one stage; return its summary (metrics for `evaluate`)."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    if name not in NO_KERAS:
        require_keras_backend()
    stage = importlib.import_module(f"ganpipe.stages.{name}")
    with workspace_lock(paths):  # re-entrant: the CLI and the flow already hold it for the run
        result = stage.run(params, paths, tracker, progress)
    tracker.raise_if_lost(name)
    return result


def run_file(paths: Paths) -> Path:
    """The file through which a stage run on its own finds the pipeline's MLflow run."""
    return paths.models / RUN_FILE
