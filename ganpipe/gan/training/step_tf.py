"""The TensorFlow backend's runner and train step: `HostRunner` around one `tf.function` with two
gradient tapes (`make_train_step`).

The trainer knows nothing of TensorFlow beyond `HostRunner`; `step_jax.py` has the JAX
counterpart. `HostRunner` gathers each batch from NumPy arrays on the host, draws the noise from
default_rng([train.seed, step]) and gets the losses back as floats from every step (its `.numpy()`
waits for the step to finish), so unlike JAX's runner there is nothing left to fetch in batches.
The loss math is `losses.gan_losses`, shared with JAX.
Under mixed_float16 the optimizers are LossScaleOptimizers: the losses are scaled before
differentiation (`scale_loss`) and `apply_gradients` unscales.

Options (`losses.StepOptions`): wgan_gp's gradient penalty takes the gradient of D w.r.t. its
image input with a GradientTape nested in the two outer ones (they differentiate through it);
DiffAugment and eps read `aux["u"]`, drawn on the host by the runner from the step's seeded RNG
(`losses.step_uniforms`); the EMA generator's weights are updated in the same tf.function after
the optimizer steps, with the warm-up read from `aux["t"]` (the 0-based step); ADA reads its p from
its Variable (the p the step reports as `ada_p`), augments from `aux["u"]` like DiffAugment, and
updates p and its accumulators (ada.updated, at `aux["t"]`) in the same tf.function. With everything
off, `aux` is empty and the traced step is the plain one.

Spectral normalisation (keras.layers.SpectralNormalization) works as Keras made it: in a training
call it overwrites the kernel variable with kernel / sigma and updates its power-iteration vector
u, and the gradient is taken w.r.t. that normalised kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from ganpipe.config import Params
from ganpipe.data.prepared import to_float
from ganpipe.gan.training import ada, ema, gsr
from ganpipe.gan.training.losses import METRICS, gan_losses, step_uniforms
from ganpipe.gan.training.state import GanState

StepFn = Callable[..., dict[str, float]]


class HostRunner:
    """The trainer's TensorFlow runner (trainer.Runner): batches gathered from NumPy arrays on the
    host, noise from default_rng([train.seed, step]); what the options need besides goes in the
    step's `aux`: "t" (the step, for the EMA warm-up and ADA's interval) and "u" (2N x
    options.num_uniforms Uniform[0, 1), `losses.step_uniforms`, for DiffAugment, ADA and wgan_gp's
    eps). Nothing for the defaults. Each step returns its losses as floats: `fetch` only stacks them."""

    def __init__(
        self,
        state: GanState,
        params: Params,
        images_uint8: np.ndarray,
        labels: np.ndarray,
        strategy: tf.distribute.Strategy | None = None,
    ) -> None:
        self.step_fn = make_train_step(state, strategy)
        self.images, self.labels = to_float(images_uint8), labels.astype(np.int32)
        self.batch_size, self.seed = params.train.batch_size, params.train.seed
        self.latent_dim = params.model.latent_dim
        self.steps_per_epoch = len(labels) // self.batch_size
        self.perm: np.ndarray | None = None
        self.uniforms = state.options.num_uniforms
        self.with_step = state.options.ema_decay is not None or state.options.ada is not None

    def begin_epoch(self, perm: np.ndarray) -> None:
        self.perm = perm

    def step(self, step: int) -> tuple[float, ...]:
        bs, b = self.batch_size, step % self.steps_per_epoch
        idx = self.perm[b * bs : (b + 1) * bs]
        noise = np.random.default_rng([self.seed, step]).standard_normal(
            (bs, self.latent_dim), dtype=np.float32
        )
        aux = {}
        if self.with_step:
            aux["t"] = np.asarray(step, np.float32)  # an array: no retracing per value
        if self.uniforms:
            aux["u"] = step_uniforms(self.seed, step, 2 * bs, self.uniforms)
        out = self.step_fn(self.images[idx], self.labels[idx], noise, *([aux] if aux else []))
        return tuple(out[k] for k in METRICS)

    def fetch(self, handles: list[tuple[float, ...]]) -> np.ndarray:
        return np.asarray(handles, np.float64).reshape(len(handles), len(METRICS))

    def sync_to_keras(self) -> None:
        pass  # the step trains the Keras variables themselves


def make_train_step(state: GanState, strategy: tf.distribute.Strategy | None = None) -> StepFn:
    """A function (real images float [-1, 1], labels int32, noise float32, aux=None) -> the
    metrics (losses.METRICS) as floats, training `state`'s models (and ADA's state) in place. `aux`: {"t": float32 0-d step, "u": 2N x
    options.num_uniforms float32 Uniform[0, 1)} as far as the options need them (see
    HostRunner); nothing for the defaults.

    Both losses come from one generator and one discriminator pass (`losses.gan_losses`); the
    fake batch uses the real batch's labels. `d_real` and `d_fake` are the mean sigmoid of D on
    each half.

    With a tf.distribute `strategy` (data parallel; the models and optimizers built under its
    scope), the host batch is the global batch: each replica gets its slice (and its rows of
    `aux["u"]`, whose two halves follow the real and the fake images), its losses are scaled by
    1 / replicas so that the gradients Keras's optimizer sums across replicas are those of the
    global mean, and the metrics are averaged over replicas. The EMA update runs once, in
    cross-replica context, after the optimizer steps; so does ADA's, from the real logits' signs
    summed over the replicas (the global batch's)."""
    generator, discriminator, options = state.generator, state.discriminator, state.options
    g_optimizer, d_optimizer, ema_generator = state.g_opt, state.d_opt, state.ema_generator
    ada_state = state.ada_state
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    gsr_params = gsr.class_bn_parameters(generator) if options.gsr else []
    gsr_offsets = [offset for _, offset in gsr_params]

    def d_forward(images, labels, gp_rows):
        if not gp_rows:
            return discriminator([images, labels], training=True), None
        with tf.GradientTape() as inner:
            inner.watch(images)
            logits = discriminator([images, labels], training=True)
            target = tf.reduce_sum(tf.cast(logits[-gp_rows:], tf.float32))
        return logits, inner.gradient(target, images)

    def optimize(real, labels, noise, u, ada_p):
        """The optimizer steps on this (replica's) batch; returns the 4 loss metrics and [the sum
        of sign(D(real)), the number of real images] (ADA's statistic)."""
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake = generator([noise, labels], training=True)
            d_loss, g_loss, d_real, d_fake, real_signs = gan_losses(
                options, real, fake, labels, u, d_forward, ada_p
            )
            g_loss = gsr.add_penalty(g_loss, options.gsr, [v.value for v, _ in gsr_params],
                                     gsr_offsets, options.gsr_class_weights)  # fmt: skip
            # The loss itself unless loss-scaling (and / replicas under data parallel).
            d_scaled = d_optimizer.scale_loss(d_loss / replicas if replicas > 1 else d_loss)
            g_scaled = g_optimizer.scale_loss(g_loss / replicas if replicas > 1 else g_loss)
        g_vars = generator.trainable_variables
        d_vars = discriminator.trainable_variables
        g_grads = g_tape.gradient(g_scaled, g_vars)
        d_grads = d_tape.gradient(d_scaled, d_vars)
        d_optimizer.apply_gradients(zip(d_grads, d_vars, strict=True))
        g_optimizer.apply_gradients(zip(g_grads, g_vars, strict=True))
        count = tf.cast(tf.shape(real)[0], tf.float32)
        return tf.stack([d_loss, g_loss, d_real, d_fake]), tf.stack([real_signs, count])

    def update_ema(aux):
        g_vars = generator.trainable_variables
        ema_vars = ema_generator.trainable_variables
        new = ema.updated(ema_vars, g_vars, ema.decay_at(options.ema_decay, aux["t"]))
        for variable, value in zip(ema_vars, new, strict=True):
            variable.assign(value)

    def update_ada(p, signs, aux):
        new = ada.updated(p, *ada_state[1:], signs[0], signs[1], aux["t"], options.ada)
        for variable, value in zip(ada_state, new, strict=True):
            variable.assign(value)

    @tf.function
    def step(real, labels, noise, aux):
        # The p this step uses, read before anything updates it (None: ADA off).
        p = tf.identity(ada_state[0].value) if ada_state is not None else None
        args = (real, labels, noise, aux.get("u"), p)
        if strategy is None:
            metrics, signs = optimize(*args)
        else:
            per_metrics, per_signs = strategy.run(optimize, args=args)
            metrics = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_metrics, axis=None)
            if ada_state is not None:  # no extra all-reduce with ADA off
                signs = strategy.reduce(tf.distribute.ReduceOp.SUM, per_signs, axis=None)
        if ema_generator is not None:
            update_ema(aux)
        if ada_state is not None:
            update_ada(p, signs, aux)
        return tf.concat([metrics, [p if p is not None else tf.zeros((), tf.float32)]], 0)

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
        return dict(zip(METRICS, step(real, labels, noise, aux).numpy().tolist(), strict=True))

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
