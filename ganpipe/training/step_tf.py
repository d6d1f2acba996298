"""The GAN train step on the TensorFlow backend: one `tf.function`, two gradient tapes.

The trainer knows nothing of TensorFlow beyond `make_train_step` (wrapped in its HostRunner);
`step_jax.py` has the JAX counterpart. The loss math is `losses.gan_losses`, shared with it. Under
mixed_float16 the optimizers are LossScaleOptimizers: the losses are scaled before differentiation
(`scale_loss`) and `apply_gradients` unscales.

Options (`losses.StepOptions`): wgan_gp's gradient penalty takes the gradient of D w.r.t. its
image input with a GradientTape nested in the two outer ones (they differentiate through it);
DiffAugment and eps read `aux["u"]`, drawn on the host by the runner from the step's seeded RNG; the
EMA generator's weights are updated in the same tf.function after the optimizer steps, with the
warm-up read from `aux["t"]` (the 0-based step). With everything off, `aux` is empty and the traced
step is the plain one.

Spectral normalisation (keras.layers.SpectralNormalization) works as Keras made it: in a training
call it overwrites the kernel variable with kernel / sigma and updates its power-iteration vector
u, and the gradient is taken w.r.t. that normalised kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ganpipe.training import ema
from ganpipe.training.losses import StepOptions, gan_losses

StepFn = Callable[..., dict[str, float]]


def make_train_step(
    generator: keras.Model,
    discriminator: keras.Model,
    g_optimizer: keras.optimizers.Optimizer,
    d_optimizer: keras.optimizers.Optimizer,
    options: StepOptions | None = None,
    ema_generator: keras.Model | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> StepFn:
    """A function (real images float [-1, 1], labels int32, noise float32, aux=None) -> losses
    as floats. `aux`: {"t": float32 0-d step, "u": 2N x options.num_uniforms float32 Uniform[0, 1)}
    as far as the options need them (see HostRunner); nothing for the defaults.

    Both losses come from one generator and one discriminator pass (`losses.gan_losses`); the
    fake batch uses the real batch's labels. `d_real` and `d_fake` are the mean sigmoid of D on
    each half.

    With a tf.distribute `strategy` (data parallel; the models and optimizers built under its
    scope), the host batch is the global batch: each replica gets its slice (and its rows of
    `aux["u"]`, whose two halves follow the real and the fake images), its losses are scaled by
    1 / replicas so that the gradients Keras's optimizer sums across replicas are those of the
    global mean, and the metrics are averaged over replicas. The EMA update runs once, in
    cross-replica context, after the optimizer steps."""
    options = options or StepOptions()
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if (options.ema_decay is None) != (ema_generator is None):
        raise ValueError("ema_generator is needed exactly when options.ema_decay is set")

    def d_forward(images, labels, gp_rows):
        if not gp_rows:
            return discriminator([images, labels], training=True), None
        with tf.GradientTape() as inner:
            inner.watch(images)
            logits = discriminator([images, labels], training=True)
            target = tf.reduce_sum(tf.cast(logits[-gp_rows:], tf.float32))
        return logits, inner.gradient(target, images)

    def optimize(real, labels, noise, u):
        """The optimizer steps on this (replica's) batch; returns the 4 metrics."""
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake = generator([noise, labels], training=True)
            d_loss, g_loss, d_real, d_fake = gan_losses(options, real, fake, labels, u, d_forward)
            # The loss itself unless loss-scaling (and / replicas under data parallel).
            d_scaled = d_optimizer.scale_loss(d_loss / replicas if replicas > 1 else d_loss)
            g_scaled = g_optimizer.scale_loss(g_loss / replicas if replicas > 1 else g_loss)
        g_vars = generator.trainable_variables
        d_vars = discriminator.trainable_variables
        g_grads = g_tape.gradient(g_scaled, g_vars)
        d_grads = d_tape.gradient(d_scaled, d_vars)
        d_optimizer.apply_gradients(zip(d_grads, d_vars, strict=True))
        g_optimizer.apply_gradients(zip(g_grads, g_vars, strict=True))
        return tf.stack([d_loss, g_loss, d_real, d_fake])

    def update_ema(aux):
        g_vars = generator.trainable_variables
        ema_vars = ema_generator.trainable_variables
        new = ema.updated(ema_vars, g_vars, ema.decay_at(options.ema_decay, aux["t"]))
        for variable, value in zip(ema_vars, new, strict=True):
            variable.assign(value)

    @tf.function
    def step(real, labels, noise, aux):
        if strategy is None:
            metrics = optimize(real, labels, noise, aux.get("u"))
        else:
            per_replica = strategy.run(optimize, args=(real, labels, noise, aux.get("u")))
            metrics = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)
        if ema_generator is not None:
            update_ema(aux)
        return metrics

    def run(
        real: np.ndarray,
        labels: np.ndarray,
        noise: np.ndarray,
        aux: dict[str, Any] | None = None,
    ) -> dict[str, float]:
        aux = aux or {}
        if strategy is not None:
            real, labels, noise, u = split_batch(strategy, real, labels, noise, aux.get("u"))
            aux = aux | ({"u": u} if u is not None else {})
        d_loss, g_loss, d_real, d_fake = step(real, labels, noise, aux).numpy().tolist()
        return {"d_loss": d_loss, "g_loss": g_loss, "d_real": d_real, "d_fake": d_fake}

    run.tf_function = step  # for tests: tracing counts
    return run


def split_batch(
    strategy: tf.distribute.Strategy,
    real: np.ndarray,
    labels: np.ndarray,
    noise: np.ndarray,
    u: np.ndarray | None = None,
) -> tuple[Any, Any, Any, Any]:
    """The global host batch as per-replica values: replica r gets rows [r * n, (r + 1) * n) of
    real, labels and noise (n = batch / replicas), and of `u` (2 x batch rows: one half for the
    real images, one for the fake) those same rows of each half."""
    replicas = strategy.num_replicas_in_sync
    n = len(labels) // replicas

    def rows(r: int, array: np.ndarray) -> np.ndarray:
        return array[r * n : (r + 1) * n]

    def u_rows(r: int) -> np.ndarray:
        half = len(labels)
        return np.concatenate([u[r * n : (r + 1) * n], u[half + r * n : half + (r + 1) * n]])

    def per_replica(fn):
        return strategy.experimental_distribute_values_from_function(
            lambda ctx: fn(ctx.replica_id_in_sync_group)
        )

    return (
        per_replica(lambda r: rows(r, real)),
        per_replica(lambda r: rows(r, labels)),
        per_replica(lambda r: rows(r, noise)),
        per_replica(u_rows) if u is not None else None,
    )
