"""Train your own model on the augmented export the way the utility stage judged it.

`data/augmented/train.npz` holds, beside `images`, `labels` and `is_synthetic`, per-image
`soft_labels` (N x K, rows sum to 1) and `weights` (N): the targets and loss weights augment's
teacher_mix / teacher_temperature / synthetic_weight chose (docs/augment.md), and
`synthetic_start` and `synthetic_stop`: the part of the training before the synthetic images join
(0: from the start) and after which they leave (1: never); train the epochs outside that window on
`synthetic=False`, the real images alone. An export written before those existed reads as one-hot
targets, weight 1, start 0 and stop 1.

- `load_augmented(path)`: the arrays, checked.
- `keras_dataset(path, ...)`: a `tf.data.Dataset` of (images, soft labels, weights) batches, which
  `model.fit` takes as (x, y, sample_weight): compile with a loss that accepts probability targets
  (`keras.losses.CategoricalCrossentropy`).
- `TorchDataset(path)`: a map-style dataset (`__len__`, `__getitem__`) of (image as C x H x W
  float32 in [0, 1], soft label, weight) that `torch.utils.data.DataLoader` batches into tensors;
  weight each example's loss with it: `(w * -(y * log_softmax(logits)).sum(1)).mean()`.
It needs no torch import here: DataLoader accepts any object with those two methods.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.errors import DataError
from ganpipe.io import read_npz


@dataclass(frozen=True)
class Augmented:
    """An augmented training split: uint8 N x H x W x C images and their per-image targets."""

    images: np.ndarray
    labels: np.ndarray
    soft_labels: np.ndarray
    weights: np.ndarray
    is_synthetic: np.ndarray
    # the part of the training before the synthetic images join (deferral; 0: from the start)
    synthetic_start: float = 0.0
    # the part after which they leave (fine-tuning on the real images; 1: never)
    synthetic_stop: float = 1.0

    def __len__(self) -> int:
        return len(self.labels)

    def real_only(self) -> Augmented:
        """The real images alone (the epochs outside [synthetic_start, synthetic_stop))."""
        keep = ~self.is_synthetic
        return Augmented(self.images[keep], self.labels[keep], self.soft_labels[keep],
                         self.weights[keep], self.is_synthetic[keep], self.synthetic_start,
                         self.synthetic_stop)  # fmt: skip

    def inputs(self, index: Any = slice(None)) -> np.ndarray:
        """float32 images in [0, 1] (N x H x W x C), the scale the utility stage trains on."""
        return self.images[index].astype(np.float32) / 255.0


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), num_classes), np.float32)
    out[np.arange(len(labels)), np.asarray(labels, np.int64)] = 1.0
    return out


def load_augmented(path: str | os.PathLike[str], num_classes: int | None = None) -> Augmented:
    """The arrays of an augmented `train.npz` (`path`: the file or its directory). `num_classes`
    only matters for an old export without soft labels (default: the largest label + 1).
    DataError naming the file when an array is missing or the shapes disagree."""
    path = Path(path)
    if path.is_dir():
        path = path / "train.npz"
    arrays = read_npz(path)
    for key in ("images", "labels"):
        if key not in arrays:
            raise DataError(f"{path}: no {key!r} array; not an augmented or prepared split")
    images, labels = arrays["images"], arrays["labels"].astype(np.int64)
    n = len(labels)
    k = num_classes or (int(labels.max()) + 1 if n else 0)
    soft = arrays.get("soft_labels")
    soft = one_hot(labels, k) if soft is None else soft.astype(np.float32)
    weights = arrays.get("weights")
    weights = np.ones(n, np.float32) if weights is None else weights.astype(np.float32)
    is_syn = arrays.get("is_synthetic")
    is_syn = np.zeros(n, bool) if is_syn is None else is_syn.astype(bool)
    if len(images) != n or soft.shape[0] != n or weights.shape != (n,) or is_syn.shape != (n,):
        raise DataError(
            f"{path}: {len(images)} images, {n} labels, {soft.shape[0]} soft labels, "
            f"{weights.shape[0]} weights, {is_syn.shape[0]} is_synthetic flags; they must match"
        )
    if n and not np.allclose(soft.sum(axis=1), 1.0, atol=1e-4):
        raise DataError(f"{path}: soft_labels rows must sum to 1")
    start = float(arrays["synthetic_start"]) if "synthetic_start" in arrays else 0.0
    stop = float(arrays["synthetic_stop"]) if "synthetic_stop" in arrays else 1.0
    if not 0.0 <= start < 1.0:
        raise DataError(f"{path}: synthetic_start {start} must be in [0, 1)")
    if not start < stop <= 1.0:
        raise DataError(f"{path}: synthetic_stop {stop} must be in ({start}, 1]")
    return Augmented(images, labels, soft, weights, is_syn, start, stop)


def _selected(path: str | os.PathLike[str], synthetic: bool) -> Augmented:
    data = load_augmented(path)
    return data if synthetic else data.real_only()


def keras_dataset(
    path: str | os.PathLike[str],
    batch_size: int = 128,
    shuffle: bool = True,
    seed: int = 0,
    synthetic: bool = True,
) -> Any:
    """A tf.data.Dataset of (images float32 in [0, 1], soft labels, weights) batches; reshuffled
    every epoch with `seed` when `shuffle`; the real images alone with `synthetic=False`. Needs
    TensorFlow (the cpu or cuda extra)."""
    import tensorflow as tf

    data = _selected(path, synthetic)
    ds = tf.data.Dataset.from_tensor_slices((data.images, data.soft_labels, data.weights))
    if shuffle:
        ds = ds.shuffle(len(data), seed=seed, reshuffle_each_iteration=True)
    scale = tf.constant(1.0 / 255.0)
    ds = ds.batch(batch_size).map(
        lambda x, y, w: (tf.cast(x, tf.float32) * scale, y, w),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


class TorchDataset:
    """A map-style dataset for torch.utils.data.DataLoader: item i is (image C x H x W float32 in
    [0, 1], soft label float32 K, weight float32), as NumPy arrays DataLoader turns into tensors;
    the real images alone with `synthetic=False`."""

    def __init__(self, path: str | os.PathLike[str], synthetic: bool = True) -> None:
        self.data = _selected(path, synthetic)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.float32]:
        image = np.ascontiguousarray(self.data.inputs(i).transpose(2, 0, 1))
        return image, self.data.soft_labels[i], np.float32(self.data.weights[i])
