"""An exponential moving average of the generator's weights (`train.ema_decay`).

The EMA generator is a clone of the generator (same layers and names, so its `.keras` file is an
ordinary generator). Its trainable weights are the EMA state: updated after every optimizer step
inside the compiled step (tf.function / jax.jit), saved in checkpoints (group `g_ema`), so a resumed
run is exact. Its non-trainable weights (BatchNorm moving statistics) are not averaged: they are
copied from the live generator (`copy_statistics`) before it draws sample grids or is exported.

After step t (0-based): ema = d_t * ema + (1 - d_t) * weights, d_t = min(decay, (1 + t) / (10 + t)),
the warm-up keeping the average from clinging to the random initial weights early on.
"""

from __future__ import annotations

import keras
from keras import ops


def decay_at(decay: float, t):
    """min(decay, (1 + t) / (10 + t)) for the 0-based step t (a float32 scalar tensor)."""
    t = ops.cast(t, "float32")
    return ops.minimum(ops.cast(decay, "float32"), (1.0 + t) / (10.0 + t))


def updated(ema_values, live_values, decay_t) -> list:
    """The EMA values after one step: d * ema + (1 - d) * live, elementwise per variable."""
    return [
        e * ops.cast(decay_t, e.dtype) + ops.cast(v, e.dtype) * ops.cast(1.0 - decay_t, e.dtype)
        for e, v in zip(ema_values, live_values, strict=True)
    ]


def make_ema_generator(generator: keras.Model) -> keras.Model:
    """A clone of `generator` (same config, dtype policies and layer names), with its weights."""
    ema = keras.models.clone_model(generator)
    ema.set_weights(generator.get_weights())
    return ema


def copy_statistics(ema_generator: keras.Model, generator: keras.Model) -> None:
    """The live generator's non-trainable weights (BatchNorm moving statistics) into the EMA one."""
    for e, v in zip(
        ema_generator.non_trainable_variables, generator.non_trainable_variables, strict=True
    ):
        e.assign(v.value)
