"""What an MLflow run says about itself: its name, where it comes from, the data it used.

Everything here is cheap (files read, one `git rev-parse`) and never fails a run: what cannot be
found (no git repository, no DVC repository, no Prefect flow run) is left out. mlflow is imported
lazily, and Prefect only when the process already imported it (the CLI never loads Prefect).

- `run_title`: "<dataset> · <run key> [· prefect:<flow run name>]", e.g.
  "digits · 3f2a9c1 · prefect:clever-fox". The run key is a short hash of the params, so runs of one
  configuration share it and a changed param shows at a glance.
- `start_tags`: MLflow's own source tags (the UI's Source column shows the git commit) and the
  Prefect flow run's URL.
- `data_tags`, `dataset_entity`: the prepared data as tags (`data.*`, `dvc.data_version`) and as
  the run's dataset input (the runs table's Dataset column), digest = our content hash.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganpipe.keys import json_sha256

if TYPE_CHECKING:
    from ganpipe.config import Params

# How MLflow's UI decides an experiment's view: the experiment tag `mlflow.experimentKind`
# ("custom_model_development" = the classic runs/model-training view, "genai_development" = traces).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# MLflow 3.17's UI takes the view from its sidebar switch instead (remembered by the browser,
# default "GenAI"), which a link overrides with this query parameter; see `ui_url`.
UI_QUERY = "workflowType=machine_learning"
SEP = " · "
# MLflow keeps dataset digests in a 36-character column.
DIGEST_CHARS = 16
GIT_SECONDS = 5


def dataset_name(params: Params) -> str:
    """The dataset a run uses: the source, or for a folder or CSV file its name."""
    data = params.data
    if data.source in ("folder", "csv") and data.path:
        return Path(data.path).stem or data.source
    return data.source


def run_key(params: Params) -> str:
    """A 7-character hash of the params but `tracking` (where a run is recorded is not what it
    is): equal for runs of one configuration."""
    return json_sha256(params.model_dump(mode="json", exclude={"tracking"}), 7)


def run_title(params: Params, label: str | None = None) -> str:
    """The run's name: "<dataset> · <run key>", or "<label> · <dataset>" (a sweep's), with
    " · prefect:<flow run name>" inside a Prefect flow run."""
    parts = [label, dataset_name(params)] if label else [dataset_name(params), run_key(params)]
    flow = prefect_flow_run()
    if flow is not None:
        parts.append(f"prefect:{flow['name']}")
    return SEP.join(parts)


def prefect_flow_run() -> dict[str, str] | None:
    """The flow run this code runs in ({"id", "name", "flow", "url"?}), or None. Looks only when
    Prefect is already imported: a process that never loaded it is not in a flow run."""
    if "prefect" not in sys.modules:
        return None
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if ctx is None or ctx.flow_run is None:
            return None
        run = ctx.flow_run
        out = {"id": str(run.id), "name": str(run.name), "flow": ctx.flow.name if ctx.flow else ""}
        from prefect.utilities.urls import url_for

        url = url_for(run)  # from PREFECT_UI_URL (or derived from PREFECT_API_URL); None without
        if url:
            out["url"] = url
        return out
    except Exception:  # a Prefect that changed its internals must not fail the run
        return None


def git_commit(where: Path | None = None) -> dict[str, str]:
    """{"commit", "branch"} of the git repository holding `where` (default: the working
    directory, the project whose params.yaml the run uses); {} outside one or without git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD", "--abbrev-ref", "HEAD"],
            cwd=where or Path.cwd(),
            capture_output=True,
            text=True,
            timeout=GIT_SECONDS,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    lines = out.stdout.split()
    if out.returncode != 0 or len(lines) != 2:
        return {}
    return {"commit": lines[0], "branch": lines[1]}


def start_tags(where: Path | None = None) -> dict[str, str]:
    """Tags a new run starts with: `mlflow.source.*` (name, type, git commit and branch: the UI's
    Source column) and, in a Prefect flow run, `prefect.flow_run_id`/`_name`/`_url`."""
    flow = prefect_flow_run()
    if flow is not None:
        source = f"prefect flow {flow['flow']}".strip()
    else:
        argv = [Path(sys.argv[0]).name, *sys.argv[1:2]] if sys.argv and sys.argv[0] else []
        source = " ".join(argv) or "ganpipe"
    tags = {"mlflow.source.name": source, "mlflow.source.type": "LOCAL"}
    git = git_commit(where)
    if git:
        tags["mlflow.source.git.commit"] = git["commit"]
        if git["branch"] != "HEAD":  # not a detached HEAD
            tags["mlflow.source.git.branch"] = git["branch"]
    if flow is not None:
        tags["prefect.flow_run_id"] = flow["id"]
        tags["prefect.flow_run_name"] = flow["name"]
        if "url" in flow:
            tags["prefect.flow_run_url"] = flow["url"]
    return tags


def ui_url(tracking_uri: str, route: str) -> str:
    """A page of the MLflow UI at `tracking_uri` (a server's) that opens in the model-training
    view: `route` is the part after "#/", e.g. "experiments/1/runs/<id>"."""
    return f"{tracking_uri.rstrip('/')}/#/{route}?{UI_QUERY}"


# ---- the data ------------------------------------------------------------------------------------


def data_tags(prepared_dir: Path, summary: dict[str, Any]) -> dict[str, str]:
    """`data.content_hash` and `data.source` (what promotion compares), and `dvc.data_version`
    when DVC vouches for this data (`dvc_data_version`)."""
    tags = {"data.content_hash": str(summary["content_hash"]), "data.source": summary["source"]}
    version = dvc_data_version(prepared_dir)
    if version:
        tags["dvc.data_version"] = version
    return tags


def dvc_data_version(prepared_dir: Path) -> str | None:
    """The md5 that the DVC repository's dvc.lock records for `prepared_dir`, if it describes the
    data there now: its summary.json (which holds the arrays' content hash) has the md5 listed for
    it in the DVC cache's manifest of that version. None outside a DVC repository, without a lock
    entry, or when the lock is stale (e.g. `ganpipe run` prepared other data since)."""
    prepared_dir = prepared_dir.resolve()
    root = next((d for d in prepared_dir.parents if (d / ".dvc").is_dir()), None)
    if root is None or not (root / "dvc.lock").is_file():
        return None
    try:
        import yaml

        lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
        rel = prepared_dir.relative_to(root).as_posix()
        md5 = next(
            (
                out.get("md5")
                for stage in (lock.get("stages") or {}).values()
                for out in stage.get("outs") or []
                if str(out.get("path", "")).rstrip("/") == rel
            ),
            None,
        )
        if not md5 or not md5.endswith(".dir"):
            return None
        manifest = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
        entries = {e["relpath"]: e["md5"] for e in json.loads(manifest.read_text())}
        summary_md5 = hashlib.md5((prepared_dir / "summary.json").read_bytes()).hexdigest()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return md5.removesuffix(".dir") if entries.get("summary.json") == summary_md5 else None


def dataset_entity(prepared_dir: Path, summary: dict[str, Any]) -> Any:
    """The prepared data as an MLflow `Dataset` entity: name = the dataset, digest = the start of
    our content hash of its arrays (not MLflow's own digest), schema = image and label tensors,
    profile = sample and class counts and the image shape."""
    import numpy as np
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.entities import Dataset
    from mlflow.types import Schema, TensorSpec

    shape = tuple(int(d) for d in summary["shape"])
    schema = TensorDatasetSchema(
        features=Schema([TensorSpec(np.dtype("uint8"), (-1, *shape), "image")]),
        targets=Schema([TensorSpec(np.dtype("int64"), (-1,), "label")]),
    )
    profile = {
        "num_train": summary["num_train"],
        "num_test": summary["num_test"],
        "num_classes": summary["num_classes"],
        "image_shape": list(shape),
        "content_hash": summary["content_hash"],
    }
    return Dataset(
        name=str(summary["source"]),
        digest=str(summary["content_hash"])[:DIGEST_CHARS],
        source_type="local",
        source=json.dumps({"uri": prepared_dir.resolve().as_uri()}),
        schema=json.dumps(schema.to_dict()),
        profile=json.dumps(profile),
    )
