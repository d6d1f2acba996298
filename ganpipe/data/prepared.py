"""The prepared-data contract every later stage reads.

`<dir>/train.npz` and `<dir>/test.npz` hold `images` (uint8, N x H x W x C) and `labels` (int64, N);
`<dir>/summary.json` holds the shape, class names and counts, and the content hash that names this
dataset version (MLflow and the evaluator cache record it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.errors import DataError
from ganpipe.io import arrays_sha256, read_json, read_npz, save_npz, write_json


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, N x H x W x C
    labels: np.ndarray  # int64, N

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Prepared:
    train: Split
    test: Split
    summary: dict[str, Any]

    @property
    def class_names(self) -> list[str]:
        return list(self.summary["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.summary["class_names"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.summary["shape"])  # type: ignore[return-value]

    @property
    def content_hash(self) -> str:
        return str(self.summary["content_hash"])


def save_split(path: str | os.PathLike[str], split: Split) -> None:
    save_npz(path, images=split.images, labels=split.labels)


def load_split(path: str | os.PathLike[str]) -> Split:
    """One split's images and labels; DataError naming the file when it is missing, damaged or
    not a split (the caller says what to run to write it again)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: not found (run `ganpipe prepare` first)")
    arrays = read_npz(path, ("images", "labels"))
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(labels):
        raise DataError(f"{path}: expected uint8 N x H x W x C images and N labels")
    return Split(images, labels.astype(np.int64))


def make_summary(train: Split, test: Split, class_names: list[str], source: str) -> dict[str, Any]:
    k = len(class_names)
    return {
        "source": source,
        "shape": list(train.images.shape[1:]),
        "num_classes": k,
        "class_names": class_names,
        "train_counts": np.bincount(train.labels, minlength=k).tolist(),
        "test_counts": np.bincount(test.labels, minlength=k).tolist(),
        "num_train": len(train),
        "num_test": len(test),
        "content_hash": arrays_sha256(train.images, train.labels, test.images, test.labels),
    }


def save_prepared(out_dir: str | os.PathLike[str], prepared: Prepared) -> None:
    """Write both splits and the summary; summary.json goes last, so its presence means complete."""
    out = Path(out_dir)
    (out / "summary.json").unlink(missing_ok=True)
    save_split(out / "train.npz", prepared.train)
    save_split(out / "test.npz", prepared.test)
    write_json(out / "summary.json", prepared.summary)


def load_prepared(data_dir: str | os.PathLike[str]) -> Prepared:
    """The prepared data in `data_dir`; DataError naming the file that is missing or damaged."""
    d = Path(data_dir)
    summary = read_summary(d)
    for path in (d / "train.npz", d / "test.npz"):
        if not path.exists():
            raise DataError(f"{path}: not found (run `ganpipe prepare` first)")
    try:
        return Prepared(load_split(d / "train.npz"), load_split(d / "test.npz"), summary)
    except DataError as e:
        raise DataError(f"{e}; {AGAIN}") from None


AGAIN = "rerun `ganpipe prepare` to write it again"


def read_summary(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The prepared data's summary.json; DataError naming it when it is missing or damaged."""
    path = Path(data_dir) / "summary.json"
    if not path.exists():
        raise DataError(f"{path}: not found (run `ganpipe prepare` first)")
    try:
        summary = read_json(path)
        _ = summary["class_names"], summary["shape"], summary["content_hash"]
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise DataError(
            f"{path} is damaged (not a prepared-data summary: {e!r}); {AGAIN}"
        ) from None
    return summary


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1], the range the generator's tanh produces."""
    return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8 [0, 255]."""
    return np.clip(np.rint((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)
