"""The generated-samples contract, as generate writes it and augment, evaluate and the utility
stage read it.

`<synthetic_dir>/samples.npz` (images, labels: the prepared-data format) and its `summary.json`
(class names, generator version) are written by the generate stage, with the optional PNG tree
`images/<class dir>/<index:06d>.png` (`class_dir_names`, `write_png_tree`); `class_counts` says
how many samples it draws per class. `load_synthetic` checks them against the real data, and
`synthetic_counts` / `select_synthetic` draw per-class quotas from them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ganpipe.config import AugmentParams, GenerateParams
from ganpipe.data.prepared import Split, load_split
from ganpipe.data.sampling import is_long_tailed, largest_remainder
from ganpipe.errors import ConfigError, DataError
from ganpipe.io import file_sha256, read_json

SAMPLES_FILE = "samples.npz"
RERUN = "run `ganpipe train` and `ganpipe generate` again on this data"
PNG_CHANNELS = (1, 3, 4)  # grayscale, RGB, RGBA
# generate.headroom auto: balanced data, imbalanced data. On MNIST's long tail ADA drew one rare
# class on-label only 61% of the time (train.seed 1), and the off-label filter (on there by
# default) then left 900 of the 980 asked with 1.5 (docs/results.md).
HEADROOM = {False: 1.5, True: 2.0}


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


def pool_mode(real_counts: np.ndarray) -> str:
    """The mode augment.mode auto draws its pool with: balance on long-tailed data, else ratio."""
    return "balance" if is_long_tailed(real_counts) else "ratio"


def wanted_counts(
    params: AugmentParams,
    real_counts: np.ndarray,
    class_names: list[str],
    share: float | None = None,
) -> np.ndarray:
    """Synthetic samples augment.mode asks for, per class:
    ratio    round(synthetic_ratio x the class's real count);
    balance  up to target_per_class (default: the largest class's real count), never below 0;
    counts   augment.counts by class name (classes it does not name get none);
    auto     the pool (`pool_mode`'s counts), or with `share` (the utility study's choice; 0 when
             its verdict is not `helps`) round(share x the pool's count).
    ConfigError for a class name the data does not have."""
    real = np.asarray(real_counts, dtype=np.int64)
    if params.mode == "auto":
        pool_params = params.model_copy(update={"mode": pool_mode(real)})
        pool = wanted_counts(pool_params, real, class_names)
        return pool if share is None else np.floor(share * pool + 0.5).astype(np.int64)
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


# ---- what generate writes ------------------------------------------------------------------------


def headroom_of(params: GenerateParams, real_counts: np.ndarray) -> float:
    """generate.headroom, its auto resolved for the real training counts (HEADROOM)."""
    if params.headroom == "auto":
        return HEADROOM[is_long_tailed(real_counts)]
    return float(params.headroom)


def class_counts(
    params: GenerateParams,
    train_counts: list[int] | None,
    class_names: list[str],
    augment_params: AugmentParams | None = None,
) -> np.ndarray:
    """Samples per class for generate to draw.

    per_class auto: what `augment_params.mode` asks for per class times `headroom_of` (rounded up),
    at least `min_per_class`. A number: that many each, or with `proportional` that times the
    class count split in proportion to the real training counts by largest remainder (ties to
    the lower class index, so the total is exact); with `augment_params`, a DataError naming every
    class that would get fewer than augment needs.
    """
    num_classes = len(class_names)
    real = _real_counts(train_counts, num_classes, params)
    if params.per_class == "auto":
        if augment_params is None:
            raise DataError(
                "generate.per_class auto needs the augment params (the stage passes them)"
            )
        need = wanted_counts(augment_params, real, class_names)
        headroom = headroom_of(params, real)
        return np.maximum(np.ceil(need * headroom), params.min_per_class).astype(np.int64)
    if not params.proportional:
        counts = np.full(num_classes, params.per_class, dtype=np.int64)
    else:
        if real.sum() <= 0:
            raise DataError(f"generate.proportional: bad real train_counts {list(train_counts)}")
        counts = largest_remainder(real.astype(np.float64), params.per_class * num_classes)
    if augment_params is not None:
        need = wanted_counts(augment_params, real, class_names)
        short = [k for k in range(num_classes) if counts[k] < need[k]]
        if short:
            detail = "; ".join(
                f"class {class_names[k]!r}: needs {need[k]}, would get {counts[k]}" for k in short
            )
            raise DataError(
                f"generate.per_class={params.per_class} is too few for augment.mode="
                f"{augment_params.mode} ({detail}): set generate.per_class: auto (it generates "
                "what augment needs, with headroom for its filters) or a larger number"
            )
    return counts


def _real_counts(
    train_counts: list[int] | None, num_classes: int, params: GenerateParams
) -> np.ndarray:
    """The real training counts from the data summary (zeros when absent and not needed)."""
    needed = params.per_class == "auto" or params.proportional
    if train_counts is None or len(train_counts) != num_classes:
        if needed:
            raise DataError(
                "generate.per_class auto and generate.proportional need the real train_counts "
                "per class in the data summary.json (re-run `ganpipe prepare`)"
            )
        return np.zeros(num_classes, dtype=np.int64)
    real = np.asarray(train_counts, dtype=np.int64)
    if (real < 0).any():
        raise DataError(f"bad real train_counts {list(train_counts)} in the data summary.json")
    return real


def class_dir_names(class_names: list[str]) -> list[str]:
    """A safe, unique folder name per class (letters, digits, `.`, `_`, `-`; never `.`/`..`)."""
    used: set[str] = set()
    names = []
    for k, name in enumerate(class_names):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or f"class_{k}"
        candidate = safe
        if candidate.lower() in used:
            candidate = f"{safe}_{k}"
        while candidate.lower() in used:  # case-insensitive file systems
            candidate = f"{candidate}_"
        used.add(candidate.lower())
        names.append(candidate)
    return names


def _write_png(path: Path, image: np.ndarray) -> None:
    """One uint8 H x W x C image as a PNG (grayscale for C=1, RGB for C=3)."""
    channels = image.shape[-1]
    if channels not in PNG_CHANNELS:
        raise DataError(f"cannot write {channels}-channel images as PNG (set generate.write_png)")
    Image.fromarray(image[..., 0] if channels == 1 else image).save(path)


def write_png_tree(
    root: Path, images: np.ndarray, labels: np.ndarray, class_dirs: list[str]
) -> list[str]:
    """Each image as `root/images/<its class dir>/<row:06d>.png`; the files relative to `root`,
    in row order (manifest.csv's `file`)."""
    files = []
    for k in np.unique(labels):
        (root / "images" / class_dirs[k]).mkdir(parents=True, exist_ok=True)
    for i, (image, k) in enumerate(zip(images, labels, strict=True)):
        rel = f"images/{class_dirs[k]}/{i:06d}.png"
        _write_png(root / rel, image)
        files.append(rel)
    return files
