"""The JAX backend's runner and train step: stateless Keras calls, one `jax.jit` for G and D.

The whole training state (both models' trainable and non-trainable variables, both optimizers'
variables) is a tuple of lists of arrays threaded through the jitted step and donated, so XLA
updates it in place. The Keras variables are stale while training runs: `sync_to_keras()` writes
the state back (before a checkpoint, a sample grid and the final save).

Two ways in:
- `JaxGanStep.step(real, labels, noise)`: host (or device) arrays in, the metrics as a device array
  out, not fetched (tests and the data-parallel checks drive it directly).
- `DeviceRunner`, what the trainer uses: the training set lives on the device (uint8, uploaded
  once), each epoch's permutation is uploaded once, and the step counter lives on the device, so
  a step copies nothing from the host. The batch is gathered and the noise drawn inside the jitted
  step, from `fold_in(key(train.seed), step)`: a resumed run draws what an uninterrupted one would.
  A step's metrics stay on the device until the trainer fetches a batch of them (`fetch`: every
  LOG_EVERY steps and before every checkpoint and sample grid), so the host does not wait for each
  step to finish.

Losses: `losses.gan_losses` (shared with step_tf.py), from one generator and one discriminator
pass; `jax.vjp` of (d_loss, g_loss) is pulled back twice, once per optimizer (XLA drops the halves
of each pullback nobody uses). Loss scaling (mixed_float16: LossScaleOptimizer) multiplies the
cotangent by the optimizer's current scale; `stateless_apply` unscales and skips nonfinite steps.

Options (`losses.StepOptions`), all off by default (then the traced step is the plain one):
- wgan_gp: the penalty's gradient w.r.t. D's image input is `jax.grad` inside the loss function
  (the vjp differentiates through it).
- DiffAugment and wgan_gp's eps read `u`, 2N x k Uniform[0, 1) drawn from
  fold_in(fold_in(key(train.seed), step), 1): the noise's key stays what it always was.
- EMA: the EMA generator's trainable weights are a 7th state entry, updated in the jitted step.
- ADA: its state (p, acc_sum, acc_count: ada.py) is the last state entry, read and updated in the
  jitted step; p augments like DiffAugment from `u`, and the step reports the p it used.
- Spectral normalisation: keras.layers.SpectralNormalization assigns both its power-iteration
  vector u (non-trainable: `stateless_call` returns it) and the kernel itself (kernel / sigma: a
  *trainable* variable, whose assignment `stateless_call` drops). With such a layer in D, D is
  called in a StatelessScope of our own that returns the assigned trainable values too, and the
  optimizer updates those, as it does on TensorFlow (where the kernel variable really is
  overwritten). One difference remains: JAX differentiates through kernel / sigma (the paper's
  gradient), TensorFlow's tape takes the normalised kernel as the leaf.

Data parallel (`mesh`, a one-axis "batch" `jax.sharding.Mesh` from distribute.jax_mesh): the
state, the training set and the permutation are replicated over the mesh; the batch, labels and
noise are constrained to be sharded on the batch axis inside the jitted step, and its outputs are
replicated. XLA partitions the step (GSPMD), inserting the all-reduces: every mean, BatchNorm's
batch statistics included, is over the global batch, so the step computes what the one-device
step computes (up to float summation order), and the random draws are the same values.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import keras
import numpy as np

from ganpipe.gan.training import ada, ema, gsr
from ganpipe.gan.training.losses import METRICS, gan_losses
from ganpipe.gan.training.state import GanState

if TYPE_CHECKING:
    from ganpipe.config import Params

State = tuple[list[jax.Array], ...]


def _loss_scale(optimizer: keras.optimizers.Optimizer, opt_vars: list[jax.Array]) -> jax.Array:
    """The optimizer's current loss scale (1 unless it scales losses), read from `opt_vars`."""
    with keras.StatelessScope(state_mapping=list(zip(optimizer.variables, opt_vars, strict=True))):
        scale = optimizer.scale_loss(jnp.ones((), jnp.float32))
    return jnp.asarray(scale, jnp.float32)


def step_uniforms(step_key: jax.Array, rows: int, cols: int) -> jax.Array:
    """rows x cols float32 Uniform[0, 1) from fold_in(step_key, 1): DiffAugment's random choices
    and wgan_gp's eps (the noise is drawn from step_key itself). Traced inside the jitted step; the
    TensorFlow runner's host-side counterpart is losses.step_uniforms."""
    return jax.random.uniform(jax.random.fold_in(step_key, 1), (rows, cols), jnp.float32)


def _has_spectral_norm(model: keras.Model) -> bool:
    return any(
        isinstance(layer, keras.layers.SpectralNormalization) for layer in model._flatten_layers()
    )


def stateless_call_all(
    model: keras.Model, tv: list[Any], ntv: list[Any], inputs: Any, training: bool
) -> tuple[Any, list[Any], list[Any]]:
    """`model.stateless_call`, but also returning the values the call assigned to *trainable*
    variables (what SpectralNormalization does to its kernel): (outputs, new tv, new ntv)."""
    mapping = list(zip(model.trainable_variables, tv, strict=True)) + list(
        zip(model.non_trainable_variables, ntv, strict=True)
    )
    with keras.StatelessScope(state_mapping=mapping) as scope:
        outputs = model.call(inputs, training=training)
    return (
        outputs,
        [scope.get_current_value(v) for v in model.trainable_variables],
        [scope.get_current_value(v) for v in model.non_trainable_variables],
    )


class JaxGanStep:
    """Holds the training state of `state` (both models, both optimizers[, the EMA generator's
    trainable weights][, ADA's state]) as JAX arrays and advances it with a jitted, donated step.
    The optimizers must be built."""

    def __init__(self, state: GanState, mesh: jax.sharding.Mesh | None = None) -> None:
        generator, discriminator = state.generator, state.discriminator
        g_optimizer, d_optimizer, ema_generator = state.g_opt, state.d_opt, state.ema_generator
        self.generator, self.discriminator = generator, discriminator
        self.mesh = mesh
        if mesh is None:
            self.replicated = self.batch_sharding = None
        else:
            self.replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            self.batch_sharding = jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec("batch")
            )
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.options = state.options
        self._d_assigns_trainables = _has_spectral_norm(discriminator)
        self._has_ema = ema_generator is not None
        # gSR: the positions of G's class-conditional BatchNorm parameters in its trainables
        index = {id(v): i for i, v in enumerate(generator.trainable_variables)}
        found = gsr.class_bn_parameters(generator) if self.options.gsr else []
        self._gsr = [(index[id(v)], offset) for v, offset in found]
        self._keras_vars = (
            (
                generator.trainable_variables,
                generator.non_trainable_variables,
                discriminator.trainable_variables,
                discriminator.non_trainable_variables,
                g_optimizer.variables,
                d_optimizer.variables,
            )
            + ((ema_generator.trainable_variables,) if self._has_ema else ())
            + ((list(state.ada_state),) if state.ada_state is not None else ())
        )
        self.state: State = self._read_keras()
        self._step = jax.jit(self.update, donate_argnums=0, **self.out_shardings())

    def _read_keras(self) -> State:
        # Copies: the state is donated every step, and must never alias a Keras variable's buffer.
        state = tuple([jnp.array(v.value, copy=True) for v in vs] for vs in self._keras_vars)
        return state if self.mesh is None else self.replicate(state)

    def out_shardings(self) -> dict[str, Any]:
        """jax.jit's keyword for a step: every output replicated over the mesh (none without)."""
        return {} if self.mesh is None else {"out_shardings": self.replicated}

    def replicate(self, tree: Any) -> Any:
        """`tree` put on every device of the mesh (as is without one)."""
        return tree if self.mesh is None else jax.device_put(tree, self.replicated)

    def shard_batch(self, x: Any) -> Any:
        """Inside the step: `x` split on its first axis across the mesh (as is without one)."""
        if self.mesh is None or x is None:
            return x
        return jax.lax.with_sharding_constraint(x, self.batch_sharding)

    def sync_to_keras(self) -> None:
        """Write the current state into the Keras variables (one device->host transfer)."""
        for variables, values in zip(self._keras_vars, jax.device_get(self.state), strict=True):
            for v, value in zip(variables, values, strict=True):
                v.assign(value)

    def reload_from_keras(self) -> None:
        """Take the state from the Keras variables again (after they were changed outside)."""
        self.state = self._read_keras()

    def update(
        self,
        state: State,
        real: jax.Array,
        labels: jax.Array,
        noise: jax.Array,
        t: jax.Array | None = None,
        u: jax.Array | None = None,
    ) -> tuple[State, jax.Array]:
        """Pure: (state, batch) -> (new state, the metrics (losses.METRICS) float32).
        `t` (the 0-based step, for the EMA warm-up and ADA's interval) and `u` (2N x
        options.num_uniforms Uniform[0, 1)) only where the options need them."""
        g_tv, g_ntv, d_tv, d_ntv, g_ov, d_ov, *extra = state
        ema_tv = extra[0] if self._has_ema else None
        ada_state = extra[-1] if self.options.ada is not None else None
        ada_p = ada_state[0] if ada_state is not None else None
        g, d, options = self.generator, self.discriminator, self.options
        real, labels, noise = (self.shard_batch(x) for x in (real, labels, noise))
        assigns = self._d_assigns_trainables

        def losses(g_tv, d_tv):
            fake, new_g_ntv = g.stateless_call(g_tv, g_ntv, [noise, labels], training=True)
            new_d: dict[str, Any] = {}  # D's assigned variables, set by d_forward

            def call_d(images, d_labels):
                if assigns:
                    return stateless_call_all(d, d_tv, d_ntv, [images, d_labels], training=True)
                logits, ntv = d.stateless_call(d_tv, d_ntv, [images, d_labels], training=True)
                return logits, None, ntv

            def d_forward(images, d_labels, gp_rows):
                if not gp_rows:
                    logits, new_d["tv"], new_d["ntv"] = call_d(images, d_labels)
                    return logits, None

                def target(images):
                    logits, tv, ntv = call_d(images, d_labels)
                    return jnp.sum(logits[-gp_rows:].astype(jnp.float32)), (logits, tv, ntv)

                # The new variable values leave jax.grad as its aux (no leaked tracers).
                grads, (logits, new_d["tv"], new_d["ntv"]) = jax.grad(target, has_aux=True)(images)
                return logits, grads

            d_loss, g_loss, d_real, d_fake, real_signs = gan_losses(
                options, real, fake, labels, u, d_forward, ada_p
            )
            g_loss = gsr.add_penalty(g_loss, options.gsr, [g_tv[i] for i, _ in self._gsr],
                                     [offset for _, offset in self._gsr],
                                     options.gsr_class_weights)  # fmt: skip
            # The trainable values D's call assigned (spectral norm): what the optimizer updates.
            d_base = [jax.lax.stop_gradient(x) for x in new_d["tv"]] if assigns else None
            stats = (d_real, d_fake, real_signs)
            return (d_loss, g_loss), (new_g_ntv, new_d["ntv"], d_base, stats)

        (d_loss, g_loss), pullback, (new_g_ntv, new_d_ntv, d_base, stats) = jax.vjp(
            losses, g_tv, d_tv, has_aux=True
        )
        d_real, d_fake, real_signs = stats
        zero = jnp.zeros((), jnp.float32)
        _, d_grads = pullback((_loss_scale(self.d_optimizer, d_ov), zero))
        g_grads, _ = pullback((zero, _loss_scale(self.g_optimizer, g_ov)))
        new_d_tv, new_d_ov = self.d_optimizer.stateless_apply(
            d_ov, d_grads, d_base if assigns else d_tv
        )
        new_g_tv, new_g_ov = self.g_optimizer.stateless_apply(g_ov, g_grads, g_tv)
        p_used = ada_p if ada_p is not None else jnp.zeros((), jnp.float32)
        metrics = jnp.stack([d_loss, g_loss, d_real, d_fake, p_used]).astype(jnp.float32)
        new_state = (
            list(new_g_tv),
            list(new_g_ntv),
            list(new_d_tv),
            list(new_d_ntv),
            list(new_g_ov),
            list(new_d_ov),
        )
        if ema_tv is not None:
            decay_t = ema.decay_at(options.ema_decay, t)
            new_state += (ema.updated(ema_tv, new_g_tv, decay_t),)
        if ada_state is not None:
            # real.shape[0]: the global batch (under a mesh too: real is the whole sharded batch).
            new_ada = ada.updated(*ada_state, real_signs, real.shape[0], t, options.ada)
            new_state += (list(new_ada),)
        return new_state, metrics

    def step(self, real: Any, labels: Any, noise: Any, t: Any = None, u: Any = None) -> jax.Array:
        """One step on this batch; returns the metrics as a device array (not fetched)."""
        self.state, metrics = self._step(self.state, real, labels, noise, t, u)
        return metrics


class DeviceRunner:
    """The trainer's JAX runner (trainer.Runner): data, permutation, step counter and noise all on
    the device.

    `begin_epoch(perm)` uploads the epoch's permutation; `step(step)` runs one training step and
    returns its metrics as a device array, not fetched; `fetch(handles)` brings a list of them to
    the host in one transfer (k x len(METRICS) float64); `sync_to_keras()` writes the state into
    the Keras variables."""

    def __init__(
        self,
        state: GanState,
        params: Params,
        images_uint8: np.ndarray,
        labels: np.ndarray,
        start_step: int,
        mesh: jax.sharding.Mesh | None = None,
    ) -> None:
        self.inner = JaxGanStep(state, mesh)
        put = self.inner.replicate
        k = self.inner.options.num_uniforms
        batch_size, latent_dim = params.train.batch_size, params.model.latent_dim
        ema_generator, ada_on = state.ema_generator, state.ada_state is not None
        self.batch_size = batch_size
        self.steps_per_epoch = len(labels) // batch_size
        self._images = put(jax.device_put(np.ascontiguousarray(images_uint8, np.uint8)))
        self._labels = put(jax.device_put(np.asarray(labels, np.int32)))
        self._perm: jax.Array | None = None
        self._counter = put(jax.device_put(np.int32(start_step)))
        self._host_step = start_step
        key = jax.random.key(params.train.seed)
        bs, spe, inner = batch_size, self.steps_per_epoch, self.inner

        def device_step(state, counter, images, all_labels, perm):
            b = counter % spe
            idx = jax.lax.dynamic_slice(perm, (b * bs,), (bs,))
            real = jnp.take(images, idx, axis=0).astype(jnp.float32) / 127.5 - 1.0
            labels = jnp.take(all_labels, idx, axis=0)
            step_key = jax.random.fold_in(key, counter)
            noise = jax.random.normal(step_key, (bs, latent_dim), jnp.float32)
            u = step_uniforms(step_key, 2 * bs, k) if k else None
            with_t = ema_generator is not None or ada_on
            t = counter.astype(jnp.float32) if with_t else None
            state, metrics = inner.update(state, real, labels, noise, t, u)
            return state, counter + 1, metrics

        self._device_step = jax.jit(device_step, donate_argnums=(0, 1), **inner.out_shardings())

    def begin_epoch(self, perm: np.ndarray) -> None:
        self._perm = self.inner.replicate(jax.device_put(np.asarray(perm, np.int32)))

    def step(self, step: int) -> jax.Array:
        if step != self._host_step:
            raise RuntimeError(f"DeviceRunner is at step {self._host_step}, asked for {step}")
        if self._perm is None:
            raise RuntimeError("begin_epoch() first")
        self.inner.state, self._counter, metrics = self._device_step(
            self.inner.state, self._counter, self._images, self._labels, self._perm
        )
        self._host_step += 1
        return metrics

    def fetch(self, handles: list[jax.Array]) -> np.ndarray:
        if not handles:
            return np.zeros((0, len(METRICS)))
        return np.asarray(jax.device_get(handles), np.float64)  # one batched transfer

    def sync_to_keras(self) -> None:
        self.inner.sync_to_keras()
