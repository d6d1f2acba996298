"""Everything MLflow lives here, so every stage also runs with tracking off.

Stages receive a `Tracker`. With tracking off they get `NULL_TRACKER`, whose methods do nothing.
`MlflowTracker` talks to the store through `MlflowClient` and an explicit run id rather than the
fluent API's thread-local "active run": Prefect runs tasks in worker threads, where the flow's active
run is invisible.

One MLflow run per pipeline run: `ganpipe run` and the Prefect flow open one and pass it to every
stage; under `dvc repro`, where each stage is its own process, the train stage opens it and leaves its
id in `<model_dir>/mlflow_run.json`, and the later stages log into the same run. Whoever opens a run
does so with `tracked_run`, so every run ends FINISHED, FAILED or KILLED, never left RUNNING.

The model registry only sees runs that got through evaluate: train logs the generator as the run's
logged model, and the evaluate stage, once its metrics are logged, registers it
(`MlflowTracker.register_generator`). Names, source tags and the dataset input: ganpipe.mlflow_adapter.runinfo.

This module and ganpipe.mlflow_adapter.runinfo are the only ones that import mlflow (lazily: `ganpipe
prepare` never loads it). Promotion and sweeps reach the registry through the functions at the end
of this file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ganpipe.config import Params, TrackingParams
from ganpipe.errors import DataError
from ganpipe.mlflow_adapter import runinfo
from ganpipe.tracker import (  # noqa: F401  (re-exported for the callers above the stages)
    NULL_TRACKER,
    RUN_FILE,
    Tracker,
    TrackingError,
    TrackingLost,
    save_run_file,
)

log = logging.getLogger(__name__)
# MLflow retries an HTTP request 7 times with a doubling backoff (minutes against a dead server);
# a few seconds are enough to tell a hiccup from a server that is gone.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
PROBE_SECONDS = 10.0


def resolve_uri(params: TrackingParams) -> str:
    """The tracking URI: the param, else $MLFLOW_TRACKING_URI, else an absolute SQLite file in the
    working directory (`default_store_dir`: queued DVC experiments record into the repository's)."""
    if params.uri:
        return params.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{default_store_dir() / 'mlflow.db'}"


def default_store_dir(cwd: Path | None = None) -> Path:
    """Where the default SQLite store lives: the working directory, except in a queued DVC
    experiment, which runs in a temporary copy `<repo>/.dvc/tmp/exps/<tmp>/` that DVC deletes when
    it ends (with a store inside it, the run would go too): there it is the repository's."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 3, 0, -1):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def _artifact_root(uri: str) -> str | None:
    """Beside a local SQLite store, keep artifacts in `mlartifacts/` next to the database file."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def check_reachable(uri: str, seconds: float = PROBE_SECONDS) -> None:
    """For a server URI, one quick request before any work: a server that is down stops the run
    now, naming the URI, instead of after an hour of training. Any HTTP answer counts as up."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=seconds).close()
    except urllib.error.HTTPError:
        return  # it answered (some servers have no /health)
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"the MLflow tracking server {uri} is not reachable ({reason}); nothing was run. "
            "Start it (`ganpipe serve`, or `mlflow server`), point tracking.uri or "
            "$MLFLOW_TRACKING_URI at one that is up, or run without tracking: "
            "--set tracking.enabled=false"
        ) from None


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextmanager
def store_setup_lock(uri: str) -> Iterator[None]:
    """Serialise the first touches of a SQLite store across processes (`<db>.lock`, an flock).

    MLflow creates and migrates a SQLite store on first use; two processes doing it at once both
    crash in alembic and leave the store half-migrated for every later run (measured with two
    `ganpipe run` one second apart). Later writes are SQLite's own business (it locks the file)."""
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # waits for the process that is creating the store
        yield


def _open_store(client_class: Any, uri: str) -> Any:
    """An MlflowClient on `uri` whose tracking and registry stores are created and migrated (a
    store left half-migrated by an older crash is repaired first). Call under `store_setup_lock`."""

    def open_() -> Any:
        client = client_class(tracking_uri=uri)  # creates and migrates the tracking store
        client.search_registered_models(max_results=1)  # and the registry's
        return client

    try:
        return open_()
    except Exception as e:
        db = _sqlite_file(uri)
        if db is None or not _repair_half_migrated(db):
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TrackingError(
                f"the MLflow tracking store {uri} cannot be opened ({first}). If it is a SQLite "
                "file damaged by a crash, move it aside to start a new one."
            ) from None
        log.warning("repaired %s, left half-migrated by an earlier crash", db)
        return open_()


def _experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment `name`, created on first use and marked as a model-training experiment
    (`runinfo.EXPERIMENT_KIND`; a kind a user chose in the UI is left alone). Call under
    `store_setup_lock`."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        exp_id = client.create_experiment(
            name, artifact_location=_artifact_root(uri), tags=runinfo.EXPERIMENT_KIND
        )
        return str(exp_id)
    if not set(runinfo.EXPERIMENT_KIND) <= set(exp.tags):
        for key, value in runinfo.EXPERIMENT_KIND.items():
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def _repair_half_migrated(db: Path) -> bool:
    """Drop the `_alembic_tmp_<table>` copies an interrupted migration left beside an intact
    `<table>` (alembic rebuilds SQLite tables through such a copy), so the migration can run again.
    True if there was anything to drop; a copy whose original is gone is left for a human."""
    import sqlite3

    con = sqlite3.connect(db)
    try:
        try:
            rows = con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        except sqlite3.DatabaseError:  # not a SQLite file at all: nothing this can repair
            return False
        tables = {r[0] for r in rows}
        leftovers = [t for t in tables if t.startswith("_alembic_tmp_")]
        if not leftovers or any(t.removeprefix("_alembic_tmp_") not in tables for t in leftovers):
            return False
        for t in leftovers:
            con.execute(f'DROP TABLE "{t}"')
        con.commit()
        return True
    finally:
        con.close()


class MlflowTracker(Tracker):
    """Records into one MLflow run. If the store stops answering mid-stage (a server that went
    away), the tracker notes it, warns once and drops further records, so the stage finishes and
    keeps its outputs; `run_stage` then raises TrackingLost (`raise_if_lost`)."""

    def __init__(
        self,
        params: TrackingParams,
        run_id: str | None = None,
        run_name: str = "",
        start_tags: dict[str, str] | None = None,
    ) -> None:
        from mlflow import MlflowClient

        self.params = params
        self.uri = resolve_uri(params)
        self.lost: str | None = None
        check_reachable(self.uri)
        with store_setup_lock(self.uri):
            self.client = _open_store(MlflowClient, self.uri)
            exp_id = _experiment_id(self.client, params.experiment, self.uri)
            if run_id is None:
                run = self.client.create_run(exp_id, run_name=run_name or None, tags=start_tags)
                run_id = run.info.run_id
            else:
                self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def _record(self, what: str, call: Any, *args: Any, **kwargs: Any) -> None:
        """Make one call to the store, unless it is lost; a failure marks it lost (warned once)."""
        if self.lost:
            return
        try:
            call(*args, **kwargs)
        except Exception as e:  # the server went away (MlflowException, requests' errors, ...)
            self.lost = (
                f"{what}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            )
            log.warning(
                "MLflow at %s stopped answering (%s); carrying on without recording, the "
                "stage's outputs are kept",
                self.uri,
                self.lost,
            )

    def raise_if_lost(self, stage: str) -> None:
        if self.lost:
            raise TrackingLost(
                f"the MLflow tracking store {self.uri} stopped answering during the {stage} "
                f"stage ({self.lost}). The stage's outputs are kept and the pipeline stopped "
                "after it; once the server is back, rerun the same command: finished stages are "
                "redone quickly and training resumes from its last checkpoint."
            )

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        def log() -> None:
            existing = self.client.get_run(self.run_id).data.params
            # A resumed run already has the params; MLflow refuses to change a logged value.
            new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
            for i in range(0, len(new), 100):
                self.client.log_batch(self.run_id, params=new[i : i + 100], synchronous=True)

        self._record("log_params", log)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self._record(
            "log_metrics", self.client.log_batch, self.run_id, metrics=batch, synchronous=True
        )

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._record(
                "log_artifacts", self.client.log_artifacts, self.run_id, str(path), artifact_path
            )
        elif path.exists():
            self._record(
                "log_artifact", self.client.log_artifact, self.run_id, str(path), artifact_path
            )

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._record("set_tag", self.client.set_tag, self.run_id, k, str(v))

    def log_generator(self, model_path: str | os.PathLike[str]) -> None:
        self._record("log_generator", self._log_generator, model_path)

    def _log_generator(self, model_path: str | os.PathLike[str]) -> None:
        import keras
        import mlflow
        from mlflow.models import Model

        import ganpipe.gan.models.layers  # noqa: F401  (registers the layers a saved generator may use)

        model = keras.models.load_model(model_path, compile=False, safe_mode=True)
        mlflow.set_tracking_uri(self.uri)
        # Explicit requirements: MLflow's inference reloads the model in a subprocess (slow).
        reqs = [f"keras=={keras.__version__}"]
        with mlflow.start_run(run_id=self.run_id):
            Model.log(
                artifact_path=None,  # MLflow 3: logged models are named, not placed
                name="generator",
                flavor=_KerasFlavor,
                model=model,
                signature=generator_signature(model),
                input_example=generator_input_example(model),
                validate_serving_input=False,  # it reloads the model: +5 s on the tiny config
                pip_requirements=reqs,
            )
        self.client.update_run(self.run_id, status="RUNNING")

    def register_generator(self) -> str | None:
        """After evaluate: register the generator this run logged as a new version of
        `tracking.model_name` and tag the run `registered_model` = "name/version" (what promotion
        reads). Once per run: a run already tagged keeps its version (evaluate rerun under `dvc
        repro`); a run that logged no generator (train skipped by DVC in the flow) registers none."""
        if not self.params.register_model or self.lost:
            return None
        found: list[str] = []

        def register() -> None:
            tags = self.client.get_run(self.run_id).data.tags
            if tags.get("registered_model"):
                found.append(tags["registered_model"])
            elif (model_id := _logged_generator(self, self.run_id)) is None:
                log.info("run %s logged no generator; nothing to register", self.run_id)
            else:
                name = self.params.model_name
                found.append(register_generator(self, self.run_id, name, model_id))
                self.client.set_tag(self.run_id, "registered_model", found[0])

        self._record("register_generator", register)
        return found[0] if found else None

    def log_data(self, prepared_dir: str | os.PathLike[str]) -> None:
        from ganpipe.data.prepared import read_summary

        prepared_dir = Path(prepared_dir)
        try:
            summary = read_summary(prepared_dir)
        except DataError:  # missing or damaged data is the stage's error to report, not the store's
            return
        self._record("log_data", self._log_data, prepared_dir, summary)

    def _log_data(self, prepared_dir: Path, summary: dict[str, Any]) -> None:
        from mlflow.entities import DatasetInput, InputTag, RunTag

        dataset = runinfo.dataset_entity(prepared_dir, summary)
        run = self.client.get_run(self.run_id)
        logged = run.inputs.dataset_inputs if run.inputs else []
        if any(d.dataset.digest == dataset.digest for d in logged):
            return  # train, or an earlier attempt of this run, logged it and its tags
        tags = [RunTag(k, v) for k, v in runinfo.data_tags(prepared_dir, summary).items()]
        self.client.log_batch(self.run_id, tags=tags, synchronous=True)
        context = InputTag("mlflow.data.context", "training")
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags=[context])])

    def run_url(self) -> str | None:
        """The MLflow UI's page of the run, when the tracking URI is a server's."""
        if not self.uri.startswith(("http://", "https://")):
            return None
        exp = self.client.get_run(self.run_id).info.experiment_id
        return runinfo.ui_url(self.uri, f"experiments/{exp}/runs/{self.run_id}")

    def run_record(self) -> dict[str, str] | None:
        return {"run_id": str(self.run_id), "tracking_uri": self.uri}

    def finish(self, status: str = "FINISHED") -> None:
        if self.lost and status == "FINISHED":
            status = "FAILED"  # not all of it was recorded
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as e:  # still unreachable: the run stays RUNNING there; say so
            log.warning(
                "could not mark MLflow run %s %s at %s: %s", self.run_id, status, self.uri, e
            )


def start_tracker(
    params: Params, run_name: str | None = None, resume_from: Path | None = None
) -> Tracker:
    """A tracker for `params.tracking`: NULL_TRACKER when off; else a new MLflow run, or the run
    recorded in `resume_from` (a run file written by `save_run_file`) when it names this store.
    A new run is named `run_name`, by default `runinfo.run_title(params)` (dataset, run key,
    Prefect flow run), and tagged with where it comes from (`runinfo.start_tags`)."""
    if not params.tracking.enabled:
        return NULL_TRACKER
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)
    run_id = None
    if resume_from is not None and Path(resume_from).exists():
        saved = json.loads(Path(resume_from).read_text())
        if saved.get("tracking_uri") == resolve_uri(params.tracking):
            run_id = saved.get("run_id")
    tracker = MlflowTracker(
        params.tracking,
        run_id=run_id,
        run_name=run_name or runinfo.run_title(params),
        start_tags=runinfo.start_tags() if run_id is None else None,
    )
    if run_id is None:
        tracker.log_params(params.flat())
    return tracker


@contextmanager
def tracked_run(
    params: Params, run_name: str | None = None, resume_from: Path | None = None
) -> Iterator[Tracker]:
    """`start_tracker(...)` for the body of a `with`: the run ends FINISHED when the body returns,
    KILLED on Ctrl-C (KeyboardInterrupt), FAILED on any other exception, which is re-raised. The one
    place a run's lifecycle is handled, so no caller can leave it RUNNING."""
    tracker = start_tracker(params, run_name=run_name, resume_from=resume_from)
    try:
        yield tracker
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException as e:
        # Prefect raises TerminationSignal in a flow run that is cancelled (SIGTERM from its worker)
        tracker.finish("KILLED" if type(e).__name__ == "TerminationSignal" else "FAILED")
        raise
    tracker.finish()


# ---- the model registry, for promotion and sweeps ---------------------------------------------


def model_version_by_alias(client: Any, name: str, alias: str) -> Any | None:
    """The `ModelVersion` of registered model `name` holding `alias`, or None when the model or the
    alias does not exist (the first model ever registered has no champion yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def load_keras_model(tracking_uri: str, model_uri: str) -> Any:
    """The Keras model at `model_uri` (e.g. "models:/name/3") in the store at `tracking_uri`,
    uncompiled (generators are only sampled)."""
    import mlflow
    import mlflow.keras

    import ganpipe.gan.models.layers  # noqa: F401  (registers the layers a saved generator may use)

    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.keras.load_model(
        model_uri, load_model_kwargs={"compile": False, "safe_mode": True}
    )


def register_generator(
    tracker: MlflowTracker, run_id: str, model_name: str, model_id: str | None = None
) -> str:
    """Register the generator logged by run `run_id` (in `tracker`'s store) as a new version of
    `model_name`; return "name/version". The generator is the run's logged model `model_id`, by
    default the one named "generator" (MLflow 3), else found by its run-relative path."""
    import mlflow

    logged = model_id or _logged_generator(tracker, run_id)
    mlflow.set_tracking_uri(tracker.uri)
    uri = f"models:/{logged}" if logged else f"runs:/{run_id}/generator"
    version = mlflow.register_model(uri, model_name)
    return f"{model_name}/{version.version}"


def _logged_generator(tracker: MlflowTracker, run_id: str) -> str | None:
    """The model id of the logged model "generator" of run `run_id`, or None."""
    import mlflow

    mlflow.set_tracking_uri(tracker.uri)
    experiment = tracker.client.get_run(run_id).info.experiment_id
    logged = mlflow.search_logged_models(
        experiment_ids=[experiment],
        filter_string=f"source_run_id = '{run_id}' AND name = 'generator'",
        output_format="list",
    )
    return logged[0].model_id if logged else None


class _KerasFlavor:
    """mlflow.keras for `Model.log`, working around MLflow 3.17's Keras `save_model`, which writes
    the input example into the model folder before it creates that folder (FileNotFoundError), and
    which would not accept `validate_serving_input`."""

    __name__ = "mlflow.keras"  # what the logged model records as its flavor

    @staticmethod
    def save_model(path: str, validate_serving_input: bool = True, **kwargs: Any) -> None:
        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def generator_input_example(model: Any) -> dict[str, Any]:
    """Two samples of the generator's inputs: noise `z` and class `label` (0 and 1), by name."""
    import numpy as np

    example: dict[str, Any] = {}
    for t in model.inputs:
        shape = (2, *(int(d) for d in t.shape[1:]))
        if np.issubdtype(np.dtype(str(t.dtype)), np.integer):
            example[t.name] = np.arange(2, dtype=str(t.dtype)).reshape(shape)
        else:
            example[t.name] = np.random.default_rng(0).standard_normal(shape).astype(str(t.dtype))
    return example


def generator_signature(model: Any) -> Any:
    """The MLflow signature of a Keras generator: its named inputs (e.g. noise `z` float32
    [-1, latent_dim] and `label` int32 [-1]) and its output images [-1, h, w, c]. Given
    explicitly, MLflow neither warns "Model logged without a signature" nor runs the model to
    infer one."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def spec(tensor: Any, name: str | None = None) -> Any:
        shape = (-1, *(int(d) for d in tensor.shape[1:]))
        return TensorSpec(np.dtype(str(tensor.dtype)), shape, name)

    inputs = Schema([spec(t, t.name) for t in model.inputs])
    return ModelSignature(inputs=inputs, outputs=Schema([spec(model.outputs[0])]))
