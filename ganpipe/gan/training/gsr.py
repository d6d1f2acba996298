"""Group spectral regularisation (gSR, Rangwani et al. 2022) of the generator's class-conditional
BatchNorm parameters: `model.class_bn_gsr` x the penalty below is added to G's loss.

Why. With a long tail, the class-specific gains and biases of the rare classes grow into a few
large directions (the paper's "spectral explosion"), and their samples collapse onto the class's
few training images. gSR reshapes each class's gain vector (and bias vector) of every
ClassBatchNorm into a g x C/g matrix of channel groups and penalises its largest singular value
squared, which keeps the class-specific part spread over many directions, as the common classes'
are.

The penalty is the paper's (its code, val-iisc/gSRGAN): the mean over ClassBatchNorm layers and
classes of lambda_y x (sigma_gain^2 + sigma_bias^2), where lambda_y is inversely proportional to
the class's effective number of training images (1 - beta^n) / (1 - beta), beta 0.99 as in the
paper's BigGAN configs, scaled to average 1 over the classes: on MNIST with 20 images in five
classes and 1,000 in the others the rare classes weigh 1.69 and the common ones 0.31, and on
balanced data every class weighs 1. Squared, the penalty's pull vanishes near 0 and grows with
the explosion; the first version here penalised sigma itself, summed over layers, with equal
weights, and at the paper's 0.5 that pulled every class's part to 0 until G ignored the label
(docs/results.md).

Here the gain regularised is gamma - 1 (ClassBatchNorm's gamma starts at 1: BigGAN's gain is
1 + a class-specific part, which is what gSR regularises), the biases as they are. The largest
singular value comes from POWER_ITERATIONS steps of power iteration from a fixed start, the
singular vectors held constant for the gradient (as spectral normalisation does): deterministic,
so training stays exactly resumable, and the same keras.ops code on TensorFlow and JAX.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from keras import ops

POWER_ITERATIONS = 10
# The effective number's beta (Cui et al. 2019), as the gSR paper's BigGAN configs set it.
EFFECTIVE_NUMBER_BETA = 0.99


def class_weights(counts: Sequence[int], beta: float = EFFECTIVE_NUMBER_BETA) -> tuple[float, ...]:
    """Each class's lambda_y / lambda: inversely proportional to its effective number of training
    images (1 - beta^n) / (1 - beta), averaging 1 (a class without images counts as one image)."""
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    inverse = (1.0 - beta) / (1.0 - beta**n)
    return tuple(float(w) for w in inverse * len(n) / inverse.sum())


def group_shape(channels: int) -> tuple[int, int]:
    """(g, channels / g): the most square grouping, g the largest divisor of `channels` that is at
    most its square root (64 -> 8 x 8, 128 -> 8 x 16, 7 -> 1 x 7)."""
    g = max(d for d in range(1, math.isqrt(channels) + 1) if channels % d == 0)
    return g, channels // g


def class_bn_parameters(model: Any) -> list[tuple[Any, float]]:
    """(variable, offset) of every ClassBatchNorm's gamma (offset 1) and beta (offset 0) in
    `model`, in its trainable_variables' order."""
    from ganpipe.gan.models.layers import ClassBatchNorm

    found = {}
    for layer in model.layers:
        if isinstance(layer, ClassBatchNorm):
            found[id(layer.gamma)], found[id(layer.beta)] = 1.0, 0.0
    return [(v, found[id(v)]) for v in model.trainable_variables if id(v) in found]


def largest_singular_values(matrices: Any) -> Any:
    """K x g x c -> K: each matrix's largest singular value by power iteration (a fixed start;
    the vectors carry no gradient, so d sigma / dW = u v^T)."""
    w = ops.cast(matrices, "float32")
    v = ops.ones((w.shape[0], w.shape[2]), "float32") / math.sqrt(w.shape[2])
    u = None
    for _ in range(POWER_ITERATIONS):
        u = ops.stop_gradient(normalized(ops.einsum("kgc,kc->kg", w, v)))
        v = ops.stop_gradient(normalized(ops.einsum("kgc,kg->kc", w, u)))
    return ops.einsum("kg,kgc,kc->k", u, w, v)


def normalized(x: Any) -> Any:
    return x / (ops.sqrt(ops.sum(x * x, axis=-1, keepdims=True)) + 1e-12)


def add_penalty(
    g_loss: Any,
    weight: float,
    values: list[Any],
    offsets: list[float],
    class_weights: Sequence[float] = (),
) -> Any:
    """G's loss plus `weight` x the penalty (unchanged with no parameters or weight 0)."""
    if not weight or not values:
        return g_loss
    return g_loss + ops.cast(weight * penalty(values, offsets, class_weights), g_loss.dtype)


def penalty(values: list[Any], offsets: list[float], class_weights: Sequence[float] = ()) -> Any:
    """The gSR penalty of the ClassBatchNorm parameters `values` (each K x C, a gamma and a beta
    per layer; `offsets` what each starts at): over the layers, the mean of the class-weighted mean
    (`class_weights`, K of them averaging 1; empty: equal) of the grouped matrices' largest
    singular values squared, gain's plus bias's."""
    total = ops.zeros((), "float32")
    for value, offset in zip(values, offsets, strict=True):
        k, c = value.shape
        g, rest = group_shape(int(c))
        grouped = ops.reshape(ops.cast(value, "float32") - offset, (int(k), g, rest))
        squared = ops.square(largest_singular_values(grouped))
        if class_weights:
            squared = squared * ops.convert_to_tensor(np.asarray(class_weights, np.float32))
        total = total + ops.mean(squared)
    return total / (len(values) / 2)  # a gamma and a beta per layer
