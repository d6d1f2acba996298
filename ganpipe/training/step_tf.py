"""The GAN train step on the TensorFlow backend: one `tf.function`, two gradient tapes.

The trainer knows nothing of TensorFlow beyond `make_train_step` (wrapped in its HostRunner);
`step_jax.py` has the JAX counterpart. Under mixed_float16 the optimizers are LossScaleOptimizers:
the losses are scaled before differentiation (`scale_loss`) and `apply_gradients` unscales.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

StepFn = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, float]]


def make_train_step(
    generator: keras.Model,
    discriminator: keras.Model,
    g_optimizer: keras.optimizers.Optimizer,
    d_optimizer: keras.optimizers.Optimizer,
) -> StepFn:
    """A function (real images float [-1, 1], labels int32, noise float32) -> losses as floats.

    Non-saturating GAN loss (the DCGAN tutorial's): D minimises BCE(real, 1) + BCE(fake, 0) and
    G minimises BCE(fake, 1), both from one generator pass. The fake batch uses the real batch's
    labels. `d_real` and `d_fake` are the mean sigmoid of D on each half.
    """

    @tf.function
    def step(real, labels, noise):
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake = generator([noise, labels], training=True)
            logits = discriminator(
                [tf.concat([tf.cast(real, fake.dtype), fake], 0), tf.concat([labels, labels], 0)],
                training=True,
            )
            real_logits, fake_logits = tf.split(tf.cast(logits, tf.float32), 2)
            d_loss = tf.reduce_mean(tf.nn.softplus(-real_logits)) + tf.reduce_mean(
                tf.nn.softplus(fake_logits)
            )
            g_loss = tf.reduce_mean(tf.nn.softplus(-fake_logits))
            d_scaled = d_optimizer.scale_loss(d_loss)  # the loss itself unless loss-scaling
            g_scaled = g_optimizer.scale_loss(g_loss)
        g_vars = generator.trainable_variables
        d_vars = discriminator.trainable_variables
        g_grads = g_tape.gradient(g_scaled, g_vars)
        d_grads = d_tape.gradient(d_scaled, d_vars)
        d_optimizer.apply_gradients(zip(d_grads, d_vars, strict=True))
        g_optimizer.apply_gradients(zip(g_grads, g_vars, strict=True))
        return tf.stack(
            [
                d_loss,
                g_loss,
                tf.reduce_mean(tf.sigmoid(real_logits)),
                tf.reduce_mean(tf.sigmoid(fake_logits)),
            ]
        )

    def run(real: np.ndarray, labels: np.ndarray, noise: np.ndarray) -> dict[str, float]:
        d_loss, g_loss, d_real, d_fake = step(real, labels, noise).numpy().tolist()
        return {"d_loss": d_loss, "g_loss": g_loss, "d_real": d_real, "d_fake": d_fake}

    return run
