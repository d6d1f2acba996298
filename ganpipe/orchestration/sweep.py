"""Sweeps: their definition (a grid or an explicit list of params overrides, expanded into named
configs), and running one, minus Prefect.

A sweep file is YAML with either `grid` (every combination of the listed values) or `configs` (a list
of override mappings), plus optional `fixed` overrides applied to every config and the metric that
picks the best one:

    metric: classifier_fd      # a key of metrics/eval.json (default classifier_fd)
    mode: min                  # min or max (default min)
    fixed: {train.epochs: 5}   # optional, applied to every config
    grid:
      train.g_learning_rate: [1.0e-4, 2.0e-4]
      model.filters: [32, 64]

Keys are `section.key` as in `--set`; unknown ones stop here with a ConfigError naming the file and the
key. Values are validated by `load_params` when each config's params are built. The definition is
pure: no I/O beyond reading the file in `load_sweep`.

Running a sweep is here too, so `flows/sweep.py` only wires it into Prefect tasks: `plan_runs` lays
out where each config writes and which configs share prepared data, `run_shared` and `run_config`
run the stages of one task, `pick_best` judges the results, and `record_best` writes the verdict on
the sweep's MLflow parent run. Only `plan_runs` and the judging are pure.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ganpipe.config import Params, TrackingParams, load_params, read_yaml
from ganpipe.errors import ConfigError
from ganpipe.keys import json_sha256
from ganpipe.mlflow_adapter.tracking import (
    NULL_TRACKER,
    MlflowTracker,
    Tracker,
    register_generator,
    resolve_uri,
    tracked_run,
)
from ganpipe.orchestration import Logger
from ganpipe.pipeline import Paths, run_stages
from ganpipe.registry import CONFIG_STAGES, SHARED_STAGES

log = logging.getLogger(__name__)

DEFAULT_METRIC = "classifier_fd"
# ganpipe.registry: SHARED_STAGES (prepare, classifier) run once per distinct data/evaluate params,
# into <sweep>/_shared/<key>/; CONFIG_STAGES (train, generate, evaluate) per configuration. augment
# is left out: a sweep compares generators, and augment's output feeds nothing downstream.
_TOP_KEYS = {"metric", "mode", "fixed", "grid", "configs"}


@dataclass(frozen=True)
class SweepConfig:
    """One configuration of a sweep: a directory-safe unique name and its overrides."""

    name: str
    overrides: dict[str, Any]

    def override_args(self) -> list[str]:
        """The overrides as `section.key=value` strings for `load_params` (values as JSON, which
        YAML reads back unchanged)."""
        return [f"{k}={json.dumps(v)}" for k, v in self.overrides.items()]


@dataclass(frozen=True)
class Sweep:
    configs: list[SweepConfig]
    metric: str = DEFAULT_METRIC
    mode: Literal["min", "max"] = "min"
    origin: str = "<sweep>"
    fixed: dict[str, Any] = field(default_factory=dict)

    def params(self, config: SweepConfig, params_file: str | os.PathLike[str] | None) -> Params:
        """The params of one config: `params_file` plus `fixed` plus the config's overrides."""
        try:
            return load_params(params_file, config.override_args())
        except ConfigError as e:
            raise ConfigError(f"{self.origin}: config {config.name}: {e}") from None

    def base_params(self, params_file: str | os.PathLike[str] | None) -> Params:
        """`params_file` plus `fixed`: what every config shares (the parent run logs these)."""
        return load_params(params_file, [f"{k}={json.dumps(v)}" for k, v in self.fixed.items()])

    def best(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        """The result (a dict with `metrics`) with the best `metric`; ties go to the first."""
        scored = [r for r in results if isinstance(r["metrics"].get(self.metric), int | float)]
        if not scored:
            raise ConfigError(f"{self.origin}: metric: no config reported {self.metric!r}")
        sign = 1.0 if self.mode == "min" else -1.0
        return min(scored, key=lambda r: sign * float(r["metrics"][self.metric]))


def check_key(key: Any, origin: str) -> str:
    """`key` must be `section.key` of a real param; else a ConfigError naming it."""
    if not isinstance(key, str) or key.count(".") != 1 or not all(key.split(".")):
        raise ConfigError(f"{origin}: {key}: expected section.key, e.g. train.epochs")
    section, name = key.split(".")
    sections = Params.model_fields
    if section not in sections:
        raise ConfigError(
            f"{origin}: {key}: unknown section {section!r}; sections are {', '.join(sections)}"
        )
    if name not in sections[section].annotation.model_fields:
        raise ConfigError(f"{origin}: {key}: unknown key")
    return key


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text) or "x"


def config_name(index: int, overrides: dict[str, Any]) -> str:
    """`03-g_learning_rate=0.0001-filters=64`: the index keeps names unique, the rest readable."""
    parts = [f"{k.split('.')[1]}={_slug(v)}" for k, v in overrides.items()]
    return "-".join([f"{index:02d}", *parts])[:80]


def expand_grid(grid: dict[str, list[Any]], origin: str = "<sweep>") -> list[dict[str, Any]]:
    """The cartesian product of `grid`'s value lists, first key varying slowest."""
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{origin}: grid: expected a mapping of section.key to a list of values")
    for key, values in grid.items():
        check_key(key, origin)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{origin}: grid.{key}: expected a non-empty list of values")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def expand_list(configs: list[dict[str, Any]], origin: str = "<sweep>") -> list[dict[str, Any]]:
    """An explicit list of override mappings, checked."""
    if not isinstance(configs, list) or not configs:
        raise ConfigError(f"{origin}: configs: expected a non-empty list of override mappings")
    for i, item in enumerate(configs):
        if not isinstance(item, dict):
            raise ConfigError(f"{origin}: configs[{i}]: expected a mapping of section.key: value")
        for key in item:
            check_key(key, origin)
    return [dict(item) for item in configs]


def make_sweep(spec: dict[str, Any], origin: str = "<sweep>") -> Sweep:
    """A Sweep from a parsed sweep file (see the module docstring)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{origin}: expected a mapping with `grid` or `configs`")
    unknown = set(spec) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"{origin}: {sorted(unknown)[0]}: unknown key; use {sorted(_TOP_KEYS)}")
    if ("grid" in spec) == ("configs" in spec):
        raise ConfigError(f"{origin}: give exactly one of `grid` and `configs`")
    mode = spec.get("mode", "min")
    if mode not in ("min", "max"):
        raise ConfigError(f"{origin}: mode: expected min or max (got {mode!r})")
    metric = spec.get("metric", DEFAULT_METRIC)
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{origin}: metric: expected a metric name (got {metric!r})")
    fixed = spec.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{origin}: fixed: expected a mapping of section.key: value")
    for key in fixed:
        check_key(key, origin)
    if "grid" in spec:
        combos = expand_grid(spec["grid"], origin)
    else:
        combos = expand_list(spec["configs"], origin)
    configs = [
        SweepConfig(config_name(i, combo), {**fixed, **combo}) for i, combo in enumerate(combos)
    ]
    return Sweep(configs=configs, metric=metric, mode=mode, origin=origin, fixed=dict(fixed))


def load_sweep(path: str | os.PathLike[str]) -> Sweep:
    """Read and expand a sweep file; ConfigError naming the file on any problem."""
    return make_sweep(read_yaml(path, "sweep file"), str(path))


# ---- running a sweep: planning, judging, recording ----------------------------------------------


def new_sweep_id() -> str:
    """`20250101-120000-1a2b3c`: sortable, and unique across concurrent sweeps."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def child_params(params: Params) -> Params:
    """A config's params as a worker must see them: the tracking URI resolved here (a worker's
    working directory may differ), and no model registration per config (the sweep registers the
    best)."""
    tracking = params.tracking.model_copy(
        update={"uri": resolve_uri(params.tracking), "register_model": False}
    )
    out = params.model_copy(update={"tracking": tracking})
    out._origin = params.origin
    return out


def shared_key(params: Params) -> str:
    """Configs with equal data and evaluate params share their prepared data and domain classifier,
    in `<sweep>/_shared/<key>/`."""
    return json_sha256([params.data.model_dump(), params.evaluate.model_dump()], 10)


def plan_runs(
    configs: list[tuple[SweepConfig, Params]],
    out: Path,
    sweep_id: str,
    parent_run_id: str | None,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Where everything goes. Returns (shared, jobs): `shared` maps each shared key to the arguments
    of its prepare+classifier job (`params`, `paths` under `out/_shared/<key>/`); `jobs` holds one
    argument dict per config (`name`, `params`, `paths` under `out/<name>/` but reading the shared
    prepared data and evaluator, `sweep_id`, `parent_run_id`, and `shared_key`, the job it waits
    for). Configs and concurrent sweeps never share a directory they write."""
    shared: dict[str, dict[str, Any]] = {}
    jobs = []
    for config, params in configs:
        key = shared_key(params)
        common = Paths.under(out / "_shared" / key)
        shared.setdefault(key, {"params": child_params(params), "paths": common})
        paths = replace(
            Paths.under(out / config.name), prepared=common.prepared, evaluator=common.evaluator
        )
        jobs.append(
            {
                "name": config.name,
                "params": child_params(params),
                "paths": paths,
                "sweep_id": sweep_id,
                "parent_run_id": parent_run_id,
                "shared_key": key,
            }
        )
    return shared, jobs


def config_result(
    name: str,
    paths: Paths,
    run_id: str | None = None,
    metrics: dict[str, Any] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """One configuration's entry in a sweep's results, which `pick_best`, `record_best` and the
    report read: its name and output folder, then its MLflow run and metrics, or its `error`."""
    if error is not None:
        return {"name": name, "root": str(paths.models.parent), "error": error}
    return {"name": name, "root": str(paths.models.parent), "run_id": run_id, "metrics": metrics}


def failed_result(job: dict[str, Any], shared_state: Any, state: Any) -> dict[str, Any]:
    """The result of a config whose task did not complete, from its job (`plan_runs`) and the
    final states (Prefect `State`s: `is_completed()`, `message`, `name`) of its shared task and its
    own. When the shared prepare/classifier failed, the config never ran: that is the reason."""
    if not shared_state.is_completed():
        error = f"prepare/classifier: {shared_state.message}"
    else:
        error = state.message or state.name
    return config_result(job["name"], job["paths"], error=error)


def run_shared(params: Params, paths: Paths, logger: Logger = log) -> dict[str, Any]:
    """prepare and classifier, once per distinct data/evaluate params: every generator of a dataset
    is then judged by the same domain classifier, so the configs' metrics compare."""
    key = paths.prepared.parent.parent.name
    run_stages(SHARED_STAGES, params, paths, progress=False,
               on_stage=lambda stage: logger.info("shared %s: stage %s", key, stage))  # fmt: skip
    return {"prepared": str(paths.prepared), "evaluator": str(paths.evaluator)}


def run_config(
    name: str,
    params: Params,
    paths: Paths,
    sweep_id: str,
    parent_run_id: str | None,
    logger: Logger = log,
) -> dict[str, Any]:
    """One configuration (train, generate, evaluate) on the shared prepared data, as a child run of
    `parent_run_id` (none without one); its `config_result`. Meant for a worker process: the MLflow
    run is opened here because a tracker's client does not cross process boundaries."""
    run = nullcontext(NULL_TRACKER) if parent_run_id is None else tracked_run(params, name)
    with run as tracker:
        tags = {"mlflow.parentRunId": parent_run_id, "sweep.id": sweep_id, "sweep.config": name}
        tracker.set_tags(tags)
        results = run_stages(CONFIG_STAGES, params, paths, tracker, progress=False,
                             on_stage=lambda stage: logger.info("%s: stage %s", name, stage))  # fmt: skip
        metrics = results[CONFIG_STAGES[-1]]
    return config_result(name, paths, tracker.run_id, metrics)


def describe_parent(
    parent: Tracker, sweep: Sweep, sweep_file: str | os.PathLike[str], sweep_id: str, out: Path
) -> None:
    """Tag the sweep's parent run with what it is, and keep the sweep file beside it."""
    parent.set_tags({"sweep.id": sweep_id, "sweep.file": str(sweep_file), "sweep.root": str(out)})
    parent.log_params(
        {
            "sweep.metric": sweep.metric,
            "sweep.mode": sweep.mode,
            "sweep.n_configs": len(sweep.configs),
        }
    )
    parent.log_artifact(sweep_file, "sweep")


def pick_best(
    sweep: Sweep,
    sweep_id: str,
    results: list[dict[str, Any]],
    logger: Logger = log,
) -> dict[str, Any]:
    """The best of the configs that succeeded (each failure is logged as a warning); RuntimeError
    when every config failed, since a sweep without a result must not look like one."""
    for r in results:
        if "error" in r:
            logger.warning("config %s failed: %s", r["name"], r["error"])
    ok = [r for r in results if "error" not in r]
    if not ok:
        raise RuntimeError(f"sweep {sweep_id}: every config failed: {results[0]['error']}")
    return sweep.best(ok)


def record_best(
    parent: Tracker,
    sweep: Sweep,
    results: list[dict[str, Any]],
    best: dict[str, Any],
    tracking: TrackingParams,
) -> None:
    """Write the verdict on the parent run: `best_<metric>`, the best config's name, run, outputs
    and overrides, the failed configs; and register the best config's generator as a version of
    `tracking.model_name` if `tracking.register_model` (the configs register nothing themselves).
    No-op with tracking off."""
    if not isinstance(parent, MlflowTracker):
        return
    parent.log_metrics({f"best_{sweep.metric}": float(best["metrics"][sweep.metric])})
    overrides = next(c for c in sweep.configs if c.name == best["name"]).overrides
    tags = {
        "best_config": best["name"],
        "best_run_id": best["run_id"],
        "best_root": best["root"],
        "best_overrides": json.dumps(overrides),
    }
    failed = [r["name"] for r in results if "error" in r]
    if failed:
        tags["failed_configs"] = ", ".join(failed)
    if tracking.register_model:
        tags["registered_model"] = register_generator(parent, best["run_id"], tracking.model_name)
    parent.set_tags(tags)
