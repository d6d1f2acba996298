"""One batched pass of the classifier over a set of images: features and class probabilities.

Every metric reads these arrays, so each image set goes through the network once (StyleGAN2-ADA's
shared feature pass). Needs no Keras import: the model is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ganpipe.data.prepared import to_float


@dataclass(frozen=True)
class FeatureSet:
    """What the metrics see of one image set."""

    features: np.ndarray  # float32, N x D: the classifier's penultimate ("features") layer
    probs: np.ndarray  # float32, N x K: softmax of its logits
    labels: np.ndarray  # int64, N: true (real) or conditioning (synthetic) labels

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def predictions(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def extract(model: Any, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(features, probs) of uint8 N x H x W x C `images` through a two-output extractor model
    (`ganpipe.models.classifier.feature_extractor`: [features, logits]).

    Runs in batches of `batch_size` (converted to [-1, 1] floats one batch at a time), writing into
    preallocated float32 outputs, so memory does not grow beyond them.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(images)
    feat_dim = int(model.outputs[0].shape[-1])
    num_classes = int(model.outputs[1].shape[-1])
    features = np.empty((n, feat_dim), dtype=np.float32)
    probs = np.empty((n, num_classes), dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        f, logits = model(to_float(images[start:stop]), training=False)
        features[start:stop] = np.asarray(f)
        probs[start:stop] = _softmax(np.asarray(logits))
    return features, probs


def feature_set(
    model: Any, images: np.ndarray, labels: np.ndarray, batch_size: int = 256
) -> FeatureSet:
    """`extract`, packaged with the labels the metrics compare against."""
    features, probs = extract(model, images, batch_size)
    return FeatureSet(features, probs, np.asarray(labels, dtype=np.int64))
