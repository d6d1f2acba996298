"""The report's links to a run's own artifacts, against a real local MLflow store (SQLite +
mlartifacts/). The server case runs end to end in tests/test_flow.py."""

from __future__ import annotations

import base64
import json

import numpy as np

from ganpipe.config import TrackingParams
from ganpipe.images import save_grid
from ganpipe.mlflow_adapter.tracking import MlflowTracker
from ganpipe.orchestration.report import pipeline_report
from ganpipe.orchestration.run_links import GRID, log_report_files, run_links
from ganpipe.paths import Paths


def workspace(root):
    """The files a finished pipeline leaves that the report links."""
    paths = Paths.under(root)
    images = np.random.default_rng(0).integers(0, 255, (20, 8, 8, 1), dtype=np.uint8)
    save_grid(paths.synthetic / "grid.png", images, rows=2, scale=4)
    save_grid(paths.models / "samples" / "final.png", images[:10], rows=1, scale=4)
    paths.metrics.mkdir(parents=True)
    (paths.metrics / "eval.json").write_text(json.dumps({"classifier_fd": 1.5, "num_real": 40}))
    (paths.metrics / "per_class.csv").write_text("class,classifier_fd\n0,1.5\n")
    return paths


def test_a_local_store_run_is_linked_by_its_own_files_and_its_grid_embedded(tmp_path):
    paths = workspace(tmp_path / "w")
    store = tmp_path / "store"
    tracker = MlflowTracker(TrackingParams(uri=f"sqlite:///{store / 'mlflow.db'}"), run_name="t")
    log_report_files(tracker, paths)
    links = run_links(tracker, paths)
    tracker.finish()

    assert links.run_id == tracker.run_id and not links.server and links.run_page is None
    stored = {label: path for label, (_, path) in links.files.items()}
    assert set(stored) == {"synthetic sample grid", "training samples", "metrics",
                           "per-class metrics"}  # fmt: skip
    root = store / "mlartifacts"
    for path in stored.values():  # per run, under the store: not the workspace's files
        assert path.startswith(str(root)) and tracker.run_id in path
    assert json.loads(open(stored["metrics"]).read())["num_real"] == 40
    # the picture is the run's stored grid, small enough to embed as is
    grid = open(stored["synthetic sample grid"], "rb").read()
    assert links.image == "data:image/png;base64," + base64.b64encode(grid).decode()
    assert links.image_note.startswith(f"`{GRID}` of this run")

    # the next run overwrites the workspace; this run's stored copy stays
    (paths.metrics / "eval.json").write_text(json.dumps({"classifier_fd": 9.0, "num_real": 40}))
    assert json.loads(open(stored["metrics"]).read())["classifier_fd"] == 1.5

    text = pipeline_report({"classifier_fd": 1.5, "num_real": 40}, paths, links)
    assert f"- run: `{tracker.run_id}`" in text and f"- metrics: `{stored['metrics']}`" in text
    assert f"![sample grid: one row per class]({links.image})" in text
