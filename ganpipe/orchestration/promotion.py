"""Champion promotion: move the registered model alias `champion` to a new generator only when it
scores better than the current champion, judged on the same data by the same evaluation.

The new run's metric (`tracking.champion_metric`, default `classifier_fd`, lower is better with
`tracking.champion_mode: min`) is compared with the metric of the run that produced the model version
holding the alias. The two numbers are only comparable when both were computed on the same prepared
data by the same evaluation (the cached domain classifier in `evaluator/` and the evaluate params):
each run carries the tag `evaluate.identity` (a hash of both) and `data.content_hash`. When they differ
(new data arrived since the champion was crowned) the champion's generator is downloaded from the
registry and re-evaluated on the current data with the current evaluator (`reevaluate_champion`), and
that number is compared instead. Without a re-evaluation function the decision is "kept": numbers
from different data versions are never compared.

Every decision is recorded on the new run as tags `promotion.*` (decision, reason, metric, the values,
the champion's version) and returned as a `Decision` for the Prefect report. The first model ever
registered is promoted.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganpipe.keys import json_sha256
from ganpipe.mlflow_adapter.tracking import load_keras_model, model_version_by_alias
from ganpipe.orchestration import Logger

if TYPE_CHECKING:
    from ganpipe.config import Params
    from ganpipe.mlflow_adapter.tracking import MlflowTracker
    from ganpipe.pipeline import Paths

log = logging.getLogger(__name__)

ALIAS = "champion"
IDENTITY_TAG = "evaluate.identity"
DATA_TAG = "data.content_hash"
# "name/version", set by ganpipe.mlflow_adapter.tracking.MlflowTracker.register_generator (evaluate stage)
MODEL_TAG = "registered_model"

# Given the champion's model URI ("models:/name/version"), its metrics on the current data.
Reevaluate = Callable[[str], dict[str, Any]]


@dataclass
class Decision:
    promoted: bool
    reason: str
    metric: str
    mode: str
    model_name: str
    version: str | None = None
    value: float | None = None
    champion_version: str | None = None
    champion_run_id: str | None = None
    champion_value: float | None = None
    # "logged" (the champion run's own metrics, same data and evaluation), "re-evaluated" (its
    # generator scored on the current data), or "" (no comparison made)
    basis: str = ""
    champion_metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def decision(self) -> str:
        return "promoted" if self.promoted else "kept"

    def tags(self) -> dict[str, str]:
        tags = {
            "promotion.decision": self.decision,
            "promotion.reason": self.reason,
            "promotion.metric": f"{self.metric} ({self.mode})",
            "promotion.basis": self.basis or "none",
        }
        if self.champion_version is not None:
            tags["promotion.champion_version"] = str(self.champion_version)
        if self.champion_value is not None:
            tags["promotion.champion_value"] = f"{self.champion_value:.6g}"
        return tags

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decision": self.decision}


def evaluation_identity(evaluator_dir: str | Path, evaluate_params: dict[str, Any]) -> str | None:
    """A short hash of what makes two evaluations comparable: the cached domain classifier's key
    (data hash, its params, architecture) and the evaluate params. None if no evaluator is cached."""
    meta = Path(evaluator_dir) / "meta.json"
    if not meta.exists():
        return None
    key = json.loads(meta.read_text()).get("key")
    # Compared with the tag on the champion's run, possibly written long ago: the hash must not
    # change (json_sha256 is the sha256 this always was), or every stored champion would look
    # "not comparable" once and be re-evaluated.
    return json_sha256({"evaluator": key, "evaluate": evaluate_params}, 16)


def better(new: float, old: float, mode: str) -> bool:
    """Strictly better: a tie keeps the champion, so the alias does not move without a gain."""
    return new < old if mode == "min" else new > old


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def decide(
    client: Any,
    run_id: str,
    metric: str = "classifier_fd",
    mode: str = "min",
    reevaluate: Reevaluate | None = None,
) -> Decision:
    """Compare run `run_id`'s registered generator with the champion; decide, without changing
    anything. `reevaluate` scores the champion on the current data when it was evaluated on other
    data or by another evaluation."""
    if mode not in ("min", "max"):
        raise ValueError(f"champion mode must be 'min' or 'max', got {mode!r}")
    run = client.get_run(run_id)
    registered = run.data.tags.get(MODEL_TAG, "")
    name, _, version = registered.rpartition("/")
    d = Decision(
        False, "", metric, mode, name, version or None, _number(run.data.metrics.get(metric))
    )
    if not name or not version:
        d.reason = f"run {run_id} has no registered model version (tag {MODEL_TAG!r})"
        return d
    if d.value is None:
        d.reason = f"run {run_id} has no finite metric {metric!r}"
        return d
    champ = model_version_by_alias(client, name, ALIAS)
    if champ is None:
        d.promoted = True
        d.reason = f"first model: {name} had no {ALIAS!r} alias"
        return d
    d.champion_version, d.champion_run_id = str(champ.version), champ.run_id
    if str(champ.version) == str(version):
        d.reason = f"version {version} already holds {ALIAS!r}"
        return d
    champ_run = client.get_run(champ.run_id) if champ.run_id else None
    champ_tags = champ_run.data.tags if champ_run else {}
    same_data = bool(champ_tags.get(DATA_TAG)) and champ_tags.get(DATA_TAG) == run.data.tags.get(
        DATA_TAG
    )
    ids = champ_tags.get(IDENTITY_TAG), run.data.tags.get(IDENTITY_TAG)
    same_eval = same_data and (None in ids or ids[0] == ids[1])
    if same_eval and champ_run is not None:
        d.basis = "logged"
        d.champion_metrics = dict(champ_run.data.metrics)
    elif reevaluate is not None:
        d.basis = "re-evaluated"
        d.champion_metrics = reevaluate(f"models:/{name}/{champ.version}")
    else:
        d.reason = (
            f"not comparable: champion v{champ.version} was evaluated on data "
            f"{champ_tags.get(DATA_TAG, '?')} / evaluation {ids[0] or '?'}, this run on "
            f"{run.data.tags.get(DATA_TAG, '?')} / {ids[1] or '?'}; alias unchanged"
        )
        return d
    d.champion_value = _number(d.champion_metrics.get(metric))
    if d.champion_value is None:
        d.promoted = True
        d.reason = f"champion v{champ.version} has no finite {metric!r} ({d.basis})"
        return d
    op = "<" if mode == "min" else ">"
    if better(d.value, d.champion_value, mode):
        d.promoted = True
        d.reason = (
            f"{metric} {d.value:.6g} {op} champion v{champ.version}'s {d.champion_value:.6g} "
            f"({d.basis})"
        )
    else:
        d.reason = (
            f"{metric} {d.value:.6g} is not {op} champion v{champ.version}'s "
            f"{d.champion_value:.6g} ({d.basis}); alias unchanged"
        )
    return d


def promote_if_better(
    client: Any,
    run_id: str,
    metric: str = "classifier_fd",
    mode: str = "min",
    reevaluate: Reevaluate | None = None,
) -> Decision:
    """`decide`, then move the alias when promoted and record the decision as tags on the run."""
    d = decide(client, run_id, metric, mode, reevaluate)
    if d.promoted:
        client.set_registered_model_alias(d.model_name, ALIAS, d.version)
    for k, v in d.tags().items():
        client.set_tag(run_id, k, v)
    log.info("promotion: %s: %s", d.decision, d.reason)
    return d


def reevaluate_champion(
    tracking_uri: str,
    model_uri: str,
    params: Params,
    prepared_dir: str | Path,
    evaluator_dir: str | Path,
) -> dict[str, Any]:
    """Score the registered generator at `model_uri` on the prepared data in `prepared_dir` with
    the cached evaluator in `evaluator_dir` (the same evaluation the new run got). Works in a
    temporary directory; logs nothing."""
    # The stages load TensorFlow: imported here, so deciding alone (`decide`) stays light.
    from ganpipe.stages.evaluate import evaluate
    from ganpipe.stages.generate import GENERATOR_FILE, generate

    model = load_keras_model(tracking_uri, model_uri)
    # The run's own params (generate.per_class auto asks augment's for its counts), without the
    # PNG tree nobody looks at here.
    params = params.model_copy(
        update={"generate": params.generate.model_copy(update={"write_png": False})}
    )
    with tempfile.TemporaryDirectory(prefix="ganpipe-champion-") as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        model.save(models / GENERATOR_FILE)
        generate(params, models, prepared_dir, Path(tmp) / "synthetic")
        # the same cached classifier and reference statistics as the new run's evaluation
        return evaluate(
            params, prepared_dir, Path(tmp) / "synthetic", Path(tmp) / "metrics", evaluator_dir
        )


def promote_run(
    tracker: MlflowTracker,
    params: Params,
    paths: Paths,
    logger: Logger = log,
) -> Decision:
    """Champion promotion for a finished pipeline run in `tracker`: tag the run with its evaluation
    identity, then `promote_if_better` by the params' champion metric and mode, re-evaluating the
    champion on this run's prepared data and evaluator when the logged numbers do not compare.
    `logger` receives the progress lines (the Prefect flow passes its run logger)."""
    identity = evaluation_identity(paths.evaluator, params.evaluate.model_dump())
    if identity:
        tracker.set_tags({IDENTITY_TAG: identity})

    def reevaluate(model_uri: str) -> dict[str, Any]:
        logger.info("re-evaluating the champion %s on the current data", model_uri)
        return reevaluate_champion(tracker.uri, model_uri, params, paths.prepared, paths.evaluator)

    decision = promote_if_better(
        tracker.client,
        tracker.run_id,
        params.tracking.champion_metric,
        params.tracking.champion_mode,
        reevaluate,
    )
    logger.info("champion: %s: %s", decision.decision, decision.reason)
    return decision
