"""Batched passes of a network over a set of images, into preallocated outputs.

Every metric reads these arrays, so each image set goes through the networks once (StyleGAN2-ADA's
shared feature pass). Which network gives the features is `ganpipe.evaluation.metrics.extractors`' business;
this module needs no Keras import: the models are passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ganpipe.data.prepared import to_float


@dataclass(frozen=True)
class FeatureSet:
    """What the metrics see of one image set."""

    features: np.ndarray  # float32, N x D: the extractor's features
    probs: np.ndarray  # float32, N x K: the domain classifier's softmax
    labels: np.ndarray  # int64, N: true (real) or conditioning (synthetic) labels

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def predictions(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def run_batched(
    fn: Callable[[np.ndarray], Sequence[Any]],
    images: np.ndarray,
    dims: Sequence[int | None],
    batch_size: int = 256,
) -> list[np.ndarray]:
    """Apply `fn` to `images` (uint8, N x ...) `batch_size` at a time; one N x dims[i] float32 array
    per output of `fn`, each output flattened per sample.

    The outputs are allocated once (at the first batch, when a dimension is None), so memory does
    not grow with N beyond them; `fn` sees one batch at a time (it converts and preprocesses).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(images)
    outs: list[np.ndarray] | None = None
    if all(d is not None for d in dims):
        outs = [np.empty((n, int(d)), dtype=np.float32) for d in dims]  # type: ignore[arg-type]
    elif n == 0:
        raise ValueError("output dimensions unknown and no images to infer them from")
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        results = [np.asarray(r).reshape(stop - start, -1) for r in fn(images[start:stop])]
        if len(results) != len(dims):
            raise ValueError(f"expected {len(dims)} outputs per batch, got {len(results)}")
        if outs is None:
            outs = [np.empty((n, r.shape[1]), dtype=np.float32) for r in results]
        for out, r in zip(outs, results, strict=True):
            if r.shape[1] != out.shape[1]:
                raise ValueError(f"output width changed from {out.shape[1]} to {r.shape[1]}")
            out[start:stop] = r
    assert outs is not None
    return outs


def extract(model: Any, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(features, probs) of uint8 N x H x W x C `images` through a two-output extractor model
    (`ganpipe.evaluation.domain_net.feature_extractor`: [features, logits]).

    Runs in batches of `batch_size` (converted to [-1, 1] floats one batch at a time), writing into
    preallocated float32 outputs, so memory does not grow beyond them.
    """
    feat_dim = int(model.outputs[0].shape[-1])
    num_classes = int(model.outputs[1].shape[-1])

    def batch(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f, logits = model(to_float(x), training=False)
        return np.asarray(f), softmax(np.asarray(logits))

    features, probs = run_batched(batch, images, (feat_dim, num_classes), batch_size)
    return features, probs


def feature_set(
    model: Any, images: np.ndarray, labels: np.ndarray, batch_size: int = 256
) -> FeatureSet:
    """`extract`, packaged with the labels the metrics compare against."""
    features, probs = extract(model, images, batch_size)
    return FeatureSet(features, probs, np.asarray(labels, dtype=np.int64))
