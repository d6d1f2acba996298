"""The orchestration, above the stages: what runs stages or acts on finished runs. `sweep.py`
(sweep files, planning, running configurations through `ganpipe.pipeline.run_stages`, picking the
best), `promotion.py` (the `champion` alias, re-evaluating a champion on new data), `dvc.py` (pull,
stage status and commit for the flow's skipping), `check_metrics.py` (`ganpipe check-metrics`),
`report.py` and `run_links.py` (the flows' markdown reports and their links). Nothing below the
stages imports this package; `flows/` wires these functions into Prefect tasks. MLflow is reached
through `ganpipe.mlflow_adapter`, never imported here.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

# Where the orchestration reports progress: a module's logger, or the Prefect run logger a flow passes in (so the
# lines show in the Prefect UI).
Logger = logging.Logger | logging.LoggerAdapter[Any]


def console_script(name: str) -> str:
    """The console script `name` (dvc, prefect, mlflow) of this interpreter's environment, else the
    bare name for PATH to resolve. The environment's own copy comes first because a flow run or a
    worker may start with a PATH that lacks the venv (or has another dvc first)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name
