"""Where a pipeline run's own outputs live, for the Prefect report (ganpipe/orchestration/report.py).

The workspace's outputs (`models/generator.keras`, `data/synthetic/`, `metrics/`) are overwritten by
the next run; the MLflow run's artifacts are not. So the report points at the run's artifacts:

- with an MLflow server (http(s) tracking URI): the server's URLs. Files through
  `<uri>/get-artifact?path=<artifact path>&run_uuid=<run id>` (the route the MLflow UI itself
  fetches artifacts from; it serves `image/png` for a PNG, so the sample grid is an `<img>` the
  Prefect UI shows), the run, logged model and registered version through the UI's pages;
- with a local store (SQLite + `mlartifacts/`): the run id and the files' paths in the store, and the
  sample grid embedded as a `data:image/png;base64,` URI (Prefect 3.9's UI renders a markdown image
  as a plain `<img src>`, without a sanitiser that would drop data URIs), downscaled when large so
  the artifact stays small in Prefect's database;
- with tracking off: only the embedded grid of the workspace.

Reads the store through the tracker's `MlflowClient`; mlflow itself is imported in tracking.py only.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlencode, urlparse

from ganpipe.mlflow_adapter.runinfo import ui_url
from ganpipe.paths import Paths

if TYPE_CHECKING:
    from ganpipe.mlflow_adapter.tracking import MlflowTracker

# The run's artifacts the report links, in the order shown: label -> (path in the run, workspace
# file under Paths). The grid is logged by the generate stage, final.png by train, per_class.csv by
# evaluate; eval.json by `log_report_files` (evaluate logs its numbers as metrics only).
GRID = "generate/grid.png"
REPORT_FILES: dict[str, tuple[str, str, str]] = {
    "synthetic sample grid": (GRID, "synthetic", "grid.png"),
    "training samples": ("samples/final.png", "models", "samples/final.png"),
    "metrics": ("evaluate/eval.json", "metrics", "eval.json"),
    "per-class metrics": ("evaluate/per_class.csv", "metrics", "per_class.csv"),
}
# A PNG embedded as a data URI is stored in Prefect's database with every report: a grid larger
# than this is downscaled until it fits (the 10x10 grids of 28x28 digits are about 30 KB as is).
MAX_EMBED_BYTES = 48_000


@dataclass(frozen=True)
class RunLinks:
    """What the report links: `image` is an `<img>` source (a URL or a data URI) of the sample grid;
    `files` maps a label to (artifact path, URL or path in the store); `model` lines name the
    logged model and the registered version with their links."""

    run_id: str | None = None
    server: bool = False
    run_page: str | None = None
    image: str | None = None
    image_note: str = ""
    files: dict[str, tuple[str, str]] = field(default_factory=dict)
    model: list[str] = field(default_factory=list)


def log_report_files(tracker: MlflowTracker, paths: Paths) -> None:
    """Log the files the report links into the run, so the run holds its own copies even of the
    outputs of stages DVC skipped (those logged nothing this run). Logging one again writes the same
    bytes to the same artifact path."""
    for artifact, attr, rel in REPORT_FILES.values():
        tracker.log_artifact(Path(getattr(paths, attr)) / rel, artifact.rpartition("/")[0])


def run_links(tracker: MlflowTracker, paths: Paths) -> RunLinks:
    """The links to run `tracker.run_id`'s artifacts, logged model and registered version."""
    client, run_id = tracker.client, tracker.run_id
    run = client.get_run(run_id)
    exp = run.info.experiment_id
    logged = client.search_logged_models(
        [exp], filter_string=f"source_run_id = '{run_id}' AND name = 'generator'"
    )
    model_id = logged[0].model_id if logged else None
    registered = run.data.tags.get("registered_model", "")
    name, _, version = registered.rpartition("/")
    have = _artifact_files(client, run_id)
    server = tracker.uri.startswith(("http://", "https://"))
    base = tracker.uri.rstrip("/")
    root = None if server else _local_dir(run.info.artifact_uri)

    def where(path: str) -> str:
        """A file's link: the server's URL, else its path in the store."""
        if server:
            return artifact_url(base, run_id, path)
        return str(root / path) if root else f"{run.info.artifact_uri}/{path}"

    files = {
        label: (path, where(path)) for label, (path, _, _) in REPORT_FILES.items() if path in have
    }
    if server:
        model = []
        if model_id:
            page = ui_url(base, f"experiments/{exp}/models/{model_id}")
            model.append(f"logged model [generator]({page})")
        if name and version:
            page = ui_url(base, f"models/{quote(name, safe='')}/versions/{version}")
            model.append(f"registered [{name} version {version}]({page})")
        return RunLinks(
            run_id=run_id,
            server=True,
            run_page=ui_url(base, f"experiments/{exp}/runs/{run_id}"),
            image=where(GRID) if GRID in have else None,
            image_note=f"`{GRID}` of this run, served by the MLflow server",
            files=files,
            model=model,
        )
    model = []
    if model_id:
        stored_at = _local_dir(logged[0].artifact_location) or logged[0].artifact_location
        model.append(f"logged model `models:/{model_id}` (`{stored_at}`)")
    if name and version:
        model.append(f"registered `models:/{name}/{version}`")
    stored = root / GRID if root and GRID in have else None
    grid = stored or Path(paths.synthetic) / "grid.png"
    return RunLinks(
        run_id=run_id,
        image=png_data_uri(grid),
        image_note=f"`{GRID}` of this run, embedded"
        if stored
        else f"`{grid}`, embedded (latest output)",
        files=files,
        model=model,
    )


def workspace_links(paths: Paths, run_id: str | None = None) -> RunLinks:
    """Tracking off (or a store that did not answer): the workspace's latest grid, embedded."""
    grid = Path(paths.synthetic) / "grid.png"
    note = f"`{grid}`, embedded (latest output)"
    return RunLinks(run_id=run_id, image=png_data_uri(grid), image_note=note)


def artifact_url(base: str, run_id: str, path: str) -> str:
    """The MLflow server's URL that serves artifact `path` of run `run_id` (as the MLflow UI
    fetches it: mlflow/server/handlers.py `get_artifact_handler`)."""
    return f"{base.rstrip('/')}/get-artifact?{urlencode({'path': path, 'run_uuid': run_id})}"


def png_data_uri(path: str | Path, max_bytes: int = MAX_EMBED_BYTES) -> str | None:
    """`path` as a `data:image/png;base64,` URI, downscaled (halving steps) until the PNG is at
    most `max_bytes`; None when the file is missing or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = Path(path).read_bytes()
        img = Image.open(io.BytesIO(data))
        img.load()
    except (OSError, UnidentifiedImageError):
        return None
    while len(data) > max_bytes and min(img.size) > 16:
        img = img.resize((img.width // 2, img.height // 2), Image.Resampling.BOX)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _artifact_files(client: Any, run_id: str) -> set[str]:
    """The run's artifact files in the directories the report links (one listing per directory)."""
    found: set[str] = set()
    for directory in {p.rpartition("/")[0] for p, _, _ in REPORT_FILES.values()}:
        found.update(f.path for f in client.list_artifacts(run_id, directory) if not f.is_dir)
    return found


def _local_dir(uri: str | None) -> Path | None:
    """The local directory of a `file:` (or plain path) artifact URI; None for a remote one."""
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(uri) if parsed.scheme == "" else None
