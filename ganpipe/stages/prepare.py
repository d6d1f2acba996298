"""The `prepare` stage: load the configured source, validate, split, write the prepared dataset.

Everything is built and checked in memory first, then written into a temporary directory that
replaces `out_dir` as a whole: a failure leaves any previous output untouched.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.config import DataParams, Params
from ganpipe.data.prepared import Prepared, Split, make_summary, save_prepared
from ganpipe.data.sources import KERAS_CLASS_NAMES, NPZ_KEYS, load_source
from ganpipe.data.transforms import (
    cap_classes,
    cap_per_class,
    class_cap_indices,
    resize,
    stratified_split,
    to_labels,
    to_uint8_images,
    validate,
)
from ganpipe.errors import ConfigError, DataError
from ganpipe.io import atomic_dir
from ganpipe.paths import Paths
from ganpipe.tracker import Tracker

OUTPUT_FILES = {"train.npz", "test.npz", "summary.json"}
ARRAYS = ("images", "labels", "test images", "test labels")


def run(params: Params, paths: Paths, tracker: Tracker, progress: bool = True) -> dict[str, Any]:
    """The stage: `data.source` -> `paths.prepared`."""
    return prepare(params.data, paths.prepared, origin=params.origin)


def prepare(params: DataParams, out_dir: str | Path, origin: str = "<params>") -> dict[str, Any]:
    """Write `<out_dir>/train.npz`, `test.npz` and `summary.json`; return the summary.

    `origin` names the params file in ConfigError messages. Raises ConfigError or DataError
    before anything is written.
    """
    out = Path(out_dir)
    _check_replaceable(out)
    prepared = build_prepared(params, origin)
    with atomic_dir(out) as tmp:
        save_prepared(tmp, prepared)
    return prepared.summary


def build_prepared(params: DataParams, origin: str = "<params>") -> Prepared:
    """Load, convert, split, cap, resize and validate, all in memory."""
    if params.path and params.source in ("mnist_5k", "digits"):
        warnings.warn(f"data.path is ignored for data.source {params.source!r}", stacklevel=2)
    src = load_source(params, origin)
    names = src.class_names
    where = _source_name(params)
    x_name, y_name, x_test_name, y_test_name = _array_names(params)
    images = to_uint8_images(src.images, x_name)
    labels = to_labels(src.labels, len(images), len(names), y_name)
    rng = np.random.default_rng(params.seed)
    if src.test is None:
        try:
            train_idx, test_idx = stratified_split(labels, names, params.test_fraction, rng)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        train = Split(images[train_idx], labels[train_idx])
        test = Split(images[test_idx], labels[test_idx])
    else:
        test_images = to_uint8_images(src.test[0], x_test_name)
        test_labels = to_labels(src.test[1], len(test_images), len(names), y_test_name)
        train, test = Split(images, labels), Split(test_images, test_labels)
    if params.max_per_class is not None:
        train = cap_per_class(train, params.max_per_class, rng)
    if params.class_caps:
        train = cap_classes(train, class_cap_indices(params.class_caps, names, origin), rng)
    if params.image_size is not None:
        train, test = resize(train, params.image_size), resize(test, params.image_size)
    try:
        validate(train, test, names)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    summary = make_summary(train, test, names, params.source)
    if params.class_caps:
        summary["class_caps"] = dict(params.class_caps)
    return Prepared(train, test, summary)


def _source_name(params: DataParams) -> str:
    """The data as messages name it: its file or folder, else the source."""
    return params.path or f"data.source {params.source}"


def _array_names(params: DataParams) -> list[str]:
    """Train images, labels, test images, test labels as messages name them: the file and its key
    for an .npz, so the user knows which array to fix."""
    keys = NPZ_KEYS if params.source in KERAS_CLASS_NAMES and params.path else ARRAYS
    return [f"{_source_name(params)}: {key}" for key in keys]


def _check_replaceable(out: Path) -> None:
    # atomic_dir replaces the whole directory, so never point it at one holding anything else.
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"{out}: output path exists and is not a directory")
    others = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES)
    if others:
        raise ConfigError(
            f"{out}: output directory holds files other than a prepared dataset "
            f"({', '.join(others[:3])}); refusing to replace it"
        )
