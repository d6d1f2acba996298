"""Data parallel training over the local devices (`train.distribute`).

`auto` (the default) is `data_parallel` when the backend sees more than one device of its default
kind (GPUs if any, else CPUs) and `none` otherwise; `none` trains on one device; `data_parallel`
uses every local device (one replica each; with a single device it is the same as `none`). The
global batch is `train.batch_size`, split evenly across the replicas (so it must be divisible by
their number: ConfigError otherwise), and every step is the global step: losses are means over the
global batch, gradients are summed across replicas from losses scaled by 1 / replicas, and one
optimizer update applies them everywhere. The noise, shuffle and DiffAugment draws are exactly what
a single-device run draws for the same global batch.

- TensorFlow: `tf.distribute.MirroredStrategy` over the devices. Models and optimizers are built
  under `strategy.scope()` (mirrored variables); the step (`step_tf`) runs with `strategy.run` on
  each replica's slice of the host batch, Keras's optimizer all-reduces (sums) the gradients, and
  the metrics are averaged over replicas. BatchNorm (the generator's) normalises with each
  replica's own batch statistics, as MirroredStrategy does, so a data-parallel step is the
  single-device step only where the replicas' slices have the same statistics; the moving
  statistics are the mean over replicas.
- JAX: a `jax.sharding.Mesh` over the devices with one axis, "batch". The training state, the
  training set and the permutation are replicated; the batch, labels and noise are sharded on the
  batch axis inside the jitted step (`with_sharding_constraint`), whose outputs are replicated.
  XLA partitions the computation, so every reduction, BatchNorm's batch statistics included, is over
  the global batch: a data-parallel step is the single-device step up to float summation order.

The replica count is part of the run key when above 1 (a checkpoint written by one replica count
is resumed only by the same count: the numerics differ, slightly on JAX, through BatchNorm on
TensorFlow). Multi-node training is not wired in; see docs/gpu.md, "Data parallel and multi-node".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ganpipe.config import Params

MODES = ("auto", "none", "data_parallel")


@dataclass(frozen=True)
class Plan:
    """How a run is spread: `mode` is "none" or "data_parallel" (auto resolved), `devices` the
    backend's device names used (one per replica)."""

    mode: str
    devices: tuple[str, ...]

    @property
    def replicas(self) -> int:
        return len(self.devices)

    @property
    def distributed(self) -> bool:
        return self.replicas > 1


def local_devices(backend: str) -> list[str]:
    """The names of the devices a data-parallel run on `backend` would use: TensorFlow's logical
    GPUs, else its logical CPUs; JAX's devices of its default platform."""
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [d.name for d in devices]


def plan(params: Params, backend: str, devices: list[str] | None = None) -> Plan:
    """Resolve `train.distribute` on `backend`; ConfigError (naming train.batch_size) if the
    batch cannot be split evenly across the replicas."""
    mode = params.train.distribute
    if mode == "none":
        return Plan("none", (local_devices(backend)[0],) if devices is None else devices[:1])
    devices = list(local_devices(backend) if devices is None else devices)
    if mode == "auto":
        mode = "data_parallel" if len(devices) > 1 else "none"
    if mode == "none":
        return Plan("none", tuple(devices[:1]))
    bs, n = params.train.batch_size, len(devices)
    if bs % n:
        raise params.error(
            "train.batch_size",
            f"{bs} does not split evenly across the {n} replicas of data parallel training "
            f"(train.distribute: {params.train.distribute}, devices {', '.join(devices)}); use a "
            f"multiple of {n}, or train.distribute: none",
        )
    return Plan("data_parallel", tuple(devices))


_STRATEGIES: dict[tuple[str, ...], Any] = {}


def tf_strategy(p: Plan) -> Any:
    """A MirroredStrategy over the plan's devices, or None when it has one replica. One per
    device set and process: a second MirroredStrategy's collective ops reuse the first one's
    instance keys, and a later run in the same process then fails with "Shape mismatch in the
    collective instance"."""
    if not p.distributed:
        return None
    if p.devices not in _STRATEGIES:
        import tensorflow as tf

        _STRATEGIES[p.devices] = tf.distribute.MirroredStrategy(devices=list(p.devices))
    return _STRATEGIES[p.devices]


def jax_mesh(p: Plan) -> Any:
    """A one-axis ("batch") Mesh over the plan's devices, or None when it has one replica."""
    if not p.distributed:
        return None
    import jax
    import numpy as np

    by_name = {str(d): d for d in jax.devices()}
    return jax.sharding.Mesh(np.array([by_name[name] for name in p.devices]), ("batch",))
