"""Operations around the pipeline: MLflow tracking (`tracking`, the only module that imports
mlflow), champion promotion, the local servers, DVC, sweep planning and the run reports.

Ops sit above the stages: they may call `ganpipe.pipeline` and the stages, never the reverse (the
stages only receive a `Tracker`). `flows/` wires these functions into Prefect tasks.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

# Where ops report progress: a module's logger, or the Prefect run logger a flow passes in (so the
# lines show in the Prefect UI).
Logger = logging.Logger | logging.LoggerAdapter[Any]


def console_script(name: str) -> str:
    """The console script `name` (dvc, prefect, mlflow) of this interpreter's environment, else the
    bare name for PATH to resolve. The environment's own copy comes first because a flow run or a
    worker may start with a PATH that lacks the venv (or has another dvc first)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name
