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
) -> StepFn:
    """A function (real images float [-1, 1], labels int32, noise float32, aux=None) -> losses
    as floats. `aux`: {"t": float32 0-d step, "u": 2N x options.num_uniforms float32 Uniform[0, 1)}
    as far as the options need them (see HostRunner); nothing for the defaults.

    Both losses come from one generator and one discriminator pass (`losses.gan_losses`); the
    fake batch uses the real batch's labels. `d_real` and `d_fake` are the mean sigmoid of D on
    each half."""
    options = options or StepOptions()
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

    @tf.function
    def step(real, labels, noise, aux):
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake = generator([noise, labels], training=True)
            d_loss, g_loss, d_real, d_fake = gan_losses(
                options, real, fake, labels, aux.get("u"), d_forward
            )
            d_scaled = d_optimizer.scale_loss(d_loss)  # the loss itself unless loss-scaling
            g_scaled = g_optimizer.scale_loss(g_loss)
        g_vars = generator.trainable_variables
        d_vars = discriminator.trainable_variables
        g_grads = g_tape.gradient(g_scaled, g_vars)
        d_grads = d_tape.gradient(d_scaled, d_vars)
        d_optimizer.apply_gradients(zip(d_grads, d_vars, strict=True))
        g_optimizer.apply_gradients(zip(g_grads, g_vars, strict=True))
        if ema_generator is not None:
            ema_vars = ema_generator.trainable_variables
            new = ema.updated(ema_vars, g_vars, ema.decay_at(options.ema_decay, aux["t"]))
            for variable, value in zip(ema_vars, new, strict=True):
                variable.assign(value)
        return tf.stack([d_loss, g_loss, d_real, d_fake])

    def run(
        real: np.ndarray,
        labels: np.ndarray,
        noise: np.ndarray,
        aux: dict[str, Any] | None = None,
    ) -> dict[str, float]:
        d_loss, g_loss, d_real, d_fake = step(real, labels, noise, aux or {}).numpy().tolist()
        return {"d_loss": d_loss, "g_loss": g_loss, "d_real": d_real, "d_fake": d_fake}

    run.tf_function = step  # for tests: tracing counts
    return run
