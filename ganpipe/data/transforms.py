"""The prepare stage's array transforms: raw arrays to the prepared-data format, the stratified
train/test split, the per-class caps, the resize, and the checks every later stage relies on.

All in memory, nothing written; `ganpipe.stages.prepare` wires them between the source loaders
(`ganpipe.data.sources`) and the prepared-data writer (`ganpipe.data.prepared`).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from PIL import Image

from ganpipe.data.prepared import Split
from ganpipe.errors import ConfigError, DataError


def to_uint8_images(x: Any, what: str) -> np.ndarray:
    """Numeric N x H x W [x C] with values 0-255 -> uint8 N x H x W x C (C = 1 or 3)."""
    x = np.asarray(x)
    if x.dtype.kind not in "uif":
        raise DataError(f"{what}: expected numeric pixels, got dtype {x.dtype}")
    if x.ndim > 0 and len(x) == 0:
        raise DataError(f"{what}: no images (the array is empty, shape {x.shape})")
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{what}: expected N x H x W or N x H x W x C (C = 1 or 3), got {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{what}: contains NaN or infinite pixel values")
    lo, hi = x.min(), x.max()
    if lo < 0 or hi > 255:
        raise DataError(f"{what}: pixel values must lie in 0-255, found {lo}..{hi}")
    if x.dtype.kind == "f" and hi <= 1.0:
        warnings.warn(f"{what}: all pixel values are within 0-1; 0-255 is expected", stacklevel=3)
    return np.rint(x).astype(np.uint8) if x.dtype.kind == "f" else x.astype(np.uint8)


def to_labels(y: Any, n: int, k: int, what: str) -> np.ndarray:
    """Integer class indices 0..k-1 as int64 (an N x 1 column, as cifar10 has, is flattened)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{what}: expected {n} labels, got shape {y.shape}")
    if y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0):
        y = y.astype(np.int64)
    if y.dtype.kind not in "ui":
        raise DataError(f"{what}: expected integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= k:
        raise DataError(f"{what}: class indices must lie in 0..{k - 1}, found {y.min()}..{y.max()}")
    return y.astype(np.int64)


def stratified_split(
    labels: np.ndarray, names: list[str], test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled (train, test) indices holding `test_fraction` of each class (at least 1 each)."""
    train, test = [], []
    for c, name in enumerate(names):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < 2:
            raise DataError(
                f"class {name!r} has {len(idx)} image(s); at least 2 are needed "
                "to put one in each of train and test"
            )
        n_test = min(max(1, int(len(idx) * test_fraction + 0.5)), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    # Shuffle across classes: sources like mnist_5k arrive sorted by label.
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def cap_per_class(split: Split, max_per_class: int, rng: np.random.Generator) -> Split:
    """Keep a seeded random `max_per_class` images of each class, in their original order."""
    keep = [
        rng.permutation(np.flatnonzero(split.labels == c))[:max_per_class]
        for c in np.unique(split.labels)
    ]
    idx = np.sort(np.concatenate(keep))
    return Split(split.images[idx], split.labels[idx])


def class_cap_indices(
    class_caps: dict[str, int], names: list[str], origin: str = "<params>"
) -> dict[int, int]:
    """`data.class_caps` (class name -> cap) as class index -> cap; ConfigError naming the key and
    the known class names for a name the data does not have."""
    unknown = [name for name in class_caps if name not in names]
    if unknown:
        raise ConfigError(
            f"{origin}: data.class_caps names unknown class(es) {', '.join(map(repr, unknown))}; "
            f"the classes are {', '.join(map(repr, names))}"
        )
    return {names.index(name): cap for name, cap in class_caps.items()}


def cap_classes(split: Split, caps: dict[int, int], rng: np.random.Generator) -> Split:
    """Keep a seeded random `caps[c]` images of each capped class c (all of the others), in their
    original order. Classes are visited in index order, whatever the order of `caps`, so the same
    caps always keep the same images."""
    keep = [np.flatnonzero(~np.isin(split.labels, list(caps)))]
    for c in sorted(caps):
        keep.append(rng.permutation(np.flatnonzero(split.labels == c))[: caps[c]])
    idx = np.sort(np.concatenate(keep))
    return Split(split.images[idx], split.labels[idx])


def resize(split: Split, size: int) -> Split:
    """Bilinear resize to size x size (a no-op if already that size)."""
    if split.images.shape[1:3] == (size, size):
        return split
    gray = split.images.shape[-1] == 1
    out = np.stack(
        [
            np.asarray(
                Image.fromarray(img[..., 0] if gray else img).resize(
                    (size, size), Image.Resampling.BILINEAR
                )
            )
            for img in split.images
        ]
    )
    return Split(out[..., np.newaxis] if gray else out, split.labels)


def validate(train: Split, test: Split, names: list[str]) -> None:
    """The checks every later stage relies on."""
    if len(names) < 2:
        raise DataError(f"need at least 2 classes, found {len(names)} ({', '.join(names)})")
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(
            f"train images are {train.images.shape[1:]} but test images are "
            f"{test.images.shape[1:]}; set data.image_size to resize both"
        )
    k = len(names)
    empty = [names[c] for c in np.flatnonzero(np.bincount(train.labels, minlength=k) == 0)]
    if empty:
        raise DataError(f"no training images for class(es) {', '.join(map(repr, empty))}")
    missing = [names[c] for c in np.flatnonzero(np.bincount(test.labels, minlength=k) == 0)]
    if missing:
        warnings.warn(f"no test images for class(es) {', '.join(map(repr, missing))}", stacklevel=3)
