"""The generated-samples contract, as augment, evaluate and the utility stage read it.

`<synthetic_dir>/samples.npz` (images, labels: the prepared-data format) and its `summary.json`
(class names, generator version) are written by the generate stage; `load_synthetic` checks them
against the real data, and `synthetic_counts` / `select_synthetic` draw per-class quotas from them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.config import AugmentParams
from ganpipe.data.prepared import Split, load_split
from ganpipe.errors import ConfigError, DataError
from ganpipe.io import file_sha256, read_json

SAMPLES_FILE = "samples.npz"
RERUN = "run `ganpipe train` and `ganpipe generate` again on this data"


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(int(s)) for s in shape)


def load_synthetic(
    synthetic_dir: str | os.PathLike[str],
    class_names: list[str],
    image_shape: tuple[int, ...],
) -> tuple[Split, dict[str, Any]]:
    """The generated samples, checked against the real data's classes and image shape, and where
    they came from (directory, file hash, generator version, seed). DataError says what to run."""
    synthetic_dir = Path(synthetic_dir)
    path = synthetic_dir / SAMPLES_FILE
    if not path.exists():
        raise DataError(f"{path}: not found (run `ganpipe generate` first)")
    try:
        split = load_split(path)
    except DataError as e:
        raise DataError(f"{e} -- regenerate it with `ganpipe generate`") from None
    source: dict[str, Any] = {"dir": str(synthetic_dir), "samples_sha256": file_sha256(path)}
    summary_path = synthetic_dir / "summary.json"
    if summary_path.exists():
        summary = read_json(summary_path)
        names = summary.get("class_names")
        if names is not None and list(names) != list(class_names):
            raise DataError(
                f"{summary_path}: synthetic classes {names} differ from the real classes "
                f"{class_names}: {RERUN}"
            )
        source["generator_version"] = summary.get("generator_version")
        source["seed"] = summary.get("seed")
    if tuple(split.images.shape[1:]) != tuple(image_shape):
        raise DataError(
            f"{path}: synthetic images are {_shape(split.images.shape[1:])} but the prepared data "
            f"is {_shape(image_shape)}; the generator was trained on other data ({RERUN})"
        )
    bad = (split.labels < 0) | (split.labels >= len(class_names))
    if bad.any():
        raise DataError(
            f"{path}: labels must be in 0..{len(class_names) - 1}, found "
            f"{int(split.labels[bad][0])} ({RERUN})"
        )
    return split, source


def synthetic_counts(ratio: float, real_counts: np.ndarray) -> np.ndarray:
    """Synthetic samples wanted per class: round(ratio * real count), halves rounded up."""
    return np.floor(ratio * np.asarray(real_counts, dtype=np.float64) + 0.5).astype(np.int64)


def wanted_counts(
    params: AugmentParams, real_counts: np.ndarray, class_names: list[str]
) -> np.ndarray:
    """Synthetic samples augment.mode asks for, per class:
    ratio    round(synthetic_ratio x the class's real count);
    balance  up to target_per_class (default: the largest class's real count), never below 0;
    counts   augment.counts by class name (classes it does not name get none).
    ConfigError for a class name the data does not have."""
    real = np.asarray(real_counts, dtype=np.int64)
    if params.mode == "ratio":
        return synthetic_counts(params.synthetic_ratio, real)
    if params.mode == "balance":
        target = params.target_per_class or int(real.max(initial=0))
        return np.maximum(target - real, 0)
    unknown = sorted(set(params.counts or {}) - set(class_names))
    if unknown:
        raise ConfigError(
            f"augment.counts: unknown class {', '.join(map(repr, unknown))}; the classes are "
            f"{', '.join(map(repr, class_names))}"
        )
    return np.asarray([(params.counts or {}).get(n, 0) for n in class_names], dtype=np.int64)


def select_synthetic(
    labels: np.ndarray,
    wanted: np.ndarray,
    rng: np.random.Generator,
    class_names: list[str],
    rejected: np.ndarray | None = None,
    remedy: str | None = None,
) -> np.ndarray:
    """Row indices: `wanted[k]` distinct rows of class k each, chosen with `rng`; a DataError
    listing every class that has too few. `rejected`: per-class counts already filtered out of
    `labels`; `remedy`: what the message tells the user to do (default: the augment stage's)."""
    available = np.bincount(labels, minlength=len(wanted))[: len(wanted)]
    short = [k for k in range(len(wanted)) if wanted[k] > available[k]]
    if short:
        detail = "; ".join(
            f"class {class_names[k]!r}: needs {wanted[k]}, has {available[k]}"
            + (f" ({rejected[k]} more dropped by the filters)" if rejected is not None else "")
            for k in short
        )
        if remedy is None:
            remedy = (
                "generate more (generate.per_class: auto with a larger generate.headroom, or a "
                "larger number) and re-run `ganpipe generate`, or ask for fewer (augment.mode "
                "and its synthetic_ratio / target_per_class / counts)"
            )
            if rejected is not None:
                remedy += ", or loosen the filters"
        raise DataError(f"not enough synthetic samples ({detail}): {remedy}")
    picks = [
        rng.choice(np.flatnonzero(labels == k), size=int(wanted[k]), replace=False)
        for k in range(len(wanted))
    ]
    return np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, np.int64)
