"""What a run trains, as one object: `GanState`, built by `build_for_training`.

The models, their optimizers, the EMA generator (train.ema_decay), ADA's state (train.ada) and
the step options travel together, so the runners (step_tf.HostRunner, step_jax.DeviceRunner), the train steps and the
checkpoints all take the same thing instead of long argument lists that must be kept in order.
Nothing here imports TensorFlow or JAX.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from ganpipe.config import Params
from ganpipe.gan.models import build_models
from ganpipe.gan.training import ada, ema
from ganpipe.gan.training.losses import StepOptions


@dataclass(frozen=True)
class GanState:
    """Built models and optimizers, the EMA generator (exactly when options.ema_decay is set),
    ADA's state (ada.STATE's float32 scalar Variables, exactly when options.ada is set; both
    checked here, once) and what the step does besides the default (`options`)."""

    generator: keras.Model
    discriminator: keras.Model
    g_opt: keras.optimizers.Optimizer
    d_opt: keras.optimizers.Optimizer
    ema_generator: keras.Model | None = None
    options: StepOptions = StepOptions()
    ada_state: tuple[keras.Variable, ...] | None = None

    def __post_init__(self) -> None:
        if (self.options.ema_decay is None) != (self.ema_generator is None):
            raise ValueError("ema_generator is needed exactly when options.ema_decay is set")
        if (self.options.ada is None) != (self.ada_state is None):
            raise ValueError("ada_state is needed exactly when options.ada is set")
        if self.ada_state is not None and len(self.ada_state) != len(ada.STATE):
            raise ValueError(f"ada_state holds {ada.STATE}")

    @property
    def ada_p(self) -> float | None:
        """ADA's current probability (None with ADA off); current in the Keras variable only
        after the runner's sync_to_keras."""
        return None if self.ada_state is None else float(self.ada_state[0].numpy())

    @property
    def exported(self) -> keras.Model:
        """The generator that is sampled and saved: the EMA one when there is one."""
        return self.generator if self.ema_generator is None else self.ema_generator

    def variable_groups(self) -> dict[str, list[keras.Variable]]:
        """Everything a checkpoint holds, by group name (checkpoint.py): every variable of both
        models and both optimizers, the EMA generator's trainable weights (its BatchNorm
        statistics are the live generator's: ema.copy_statistics) and ADA's state."""
        groups = {
            "g": self.generator.variables,
            "d": self.discriminator.variables,
            "g_opt": self.g_opt.variables,
            "d_opt": self.d_opt.variables,
        }
        if self.ema_generator is not None:
            groups["g_ema"] = self.ema_generator.trainable_variables
        if self.ada_state is not None:
            groups["ada"] = list(self.ada_state)
        return groups


def make_optimizers(
    params: Params, generator: keras.Model, discriminator: keras.Model
) -> tuple[keras.optimizers.Optimizer, keras.optimizers.Optimizer]:
    """Built Adam optimizers for G and D; LossScaleOptimizer-wrapped under mixed_float16."""
    tp = params.train
    opts = []
    for lr, model in ((tp.g_learning_rate, generator), (tp.d_learning_rate, discriminator)):
        opt = keras.optimizers.Adam(lr, beta_1=tp.beta_1)
        if tp.precision == "mixed_float16":
            opt = keras.optimizers.LossScaleOptimizer(opt)
        opt.build(model.trainable_variables)
        opts.append(opt)
    return opts[0], opts[1]


def seed_everything(seed: int) -> None:
    """`keras.utils.set_random_seed`, minus its `tf.random.set_seed` off TensorFlow: it imports
    TensorFlow whenever it is installed, and the JAX path must not need (or load) it."""
    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)


def build_for_training(
    params: Params,
    image_shape: tuple[int, int, int],
    num_classes: int,
    strategy: Any = None,
    class_counts: Sequence[int] | None = None,
) -> GanState:
    """The seeded models and optimizers, built under the `train.precision` dtype policy (the global
    policy is restored afterwards; the layers keep theirs) and, given a tf.distribute `strategy`
    (distribute.tf_strategy), under its scope: mirrored variables. With train.ema_decay, the EMA
    generator too (a clone of the generator, which keeps its dtype policies); with train.ada,
    ADA's state (p = 0). `class_counts` (training images per class) weight gSR's classes."""
    seed_everything(params.train.seed)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(params.train.precision)

    def scope() -> Any:
        return strategy.scope() if strategy is not None else contextlib.nullcontext()

    try:
        with scope():
            generator, discriminator = build_models(image_shape, num_classes, params.model)
            g_opt, d_opt = make_optimizers(params, generator, discriminator)
    finally:
        keras.config.set_dtype_policy(previous)
    ema_generator = ada_state = None
    if params.train.ema_decay is not None:
        with scope():
            ema_generator = ema.make_ema_generator(generator)
    if params.train.ada is True:  # as AdaOptions.from_params: auto (unresolved) is off
        with scope():  # mirrored: the step updates them once, in cross-replica context
            ada_state = tuple(ada.make_state())
    options = StepOptions.from_params(params, class_counts)
    return GanState(generator, discriminator, g_opt, d_opt, ema_generator, options, ada_state)
