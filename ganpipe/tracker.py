"""The tracking interface at the bottom of the house: what a stage or the trainer may call.

Stages and the trainer receive a `Tracker` and import only this module. With tracking off they get
`NULL_TRACKER`, whose methods do nothing; the MLflow adapter (`ganpipe.mlflow_adapter`) subclasses
`Tracker` and is chosen above the stages (`ganpipe.cli`, `flows/`), so nothing below imports mlflow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ganpipe.errors import GanpipeError
from ganpipe.io import write_json

# Beside the model: how a stage run as its own process (`dvc repro`) finds the pipeline's run.
RUN_FILE = "mlflow_run.json"


class Tracker:
    """No-op base; `ganpipe.mlflow_adapter.tracking.MlflowTracker` records for real."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Log a file or a whole directory."""

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_generator(self, model_path: str | os.PathLike[str]) -> None:
        """Log the generator saved at `model_path` as the run's logged model "generator" (not
        registered: `register_generator` does that once the run's evaluation is done)."""

    def register_generator(self) -> str | None:
        """Register the run's logged generator (if configured); "name/version" or None."""
        return None

    def log_data(self, prepared_dir: str | os.PathLike[str]) -> None:
        """Tag the run with the prepared data it uses and log it as the run's dataset input."""

    def run_url(self) -> str | None:
        """The run's page in the MLflow UI, when there is one."""
        return None

    def run_record(self) -> dict[str, str] | None:
        """What a later stage's process needs to rejoin this run (None: nothing to rejoin)."""
        return None

    def finish(self, status: str = "FINISHED") -> None:
        pass

    def raise_if_lost(self, stage: str) -> None:
        """Raise TrackingLost once the store stopped answering (checked after each stage)."""


NULL_TRACKER = Tracker()


class TrackingError(GanpipeError):
    """The tracking store cannot be used: unreachable server, damaged store."""


class TrackingLost(TrackingError):
    """The tracking server went away during a stage; the stage's outputs were kept."""


def save_run_file(tracker: Tracker, model_dir: str | os.PathLike[str]) -> None:
    """Leave the run id beside the model so later stages (other processes) log into the same run."""
    record = tracker.run_record()
    if record is not None:
        write_json(Path(model_dir) / RUN_FILE, record)
