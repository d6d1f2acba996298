"""Sweep definitions: a grid or an explicit list of params overrides, expanded into named configs.

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
key. Values are validated by `load_params` when each config's params are built. Pure: no I/O beyond
reading the file in `load_sweep`.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ganpipe.config import Params, load_params, read_yaml
from ganpipe.errors import ConfigError

DEFAULT_METRIC = "classifier_fd"
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
