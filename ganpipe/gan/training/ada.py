"""Adaptive discriminator augmentation (Karras et al. 2020, "Training Generative Adversarial
Networks with Limited Data"; `train.ada`): every image D sees, real and fake, in the D and the G
loss alike, gets each transform of `train.ada_policy` with probability p, and p follows how much D
overfits the real images.

The augmentation (`augment`): the transforms are DiffAugment's (diffaugment.py: color,
translation, cutout), in the policy's order. For each transform, one extra Uniform[0, 1) draw per
image decides whether it applies (u_apply < p); the transform itself reads its usual draws. It is
computed for every image and kept where it applies (`ops.where`), so p = 0 leaves the images
exactly as they were and p = 1 is DiffAugment with the same draws. All randomness comes from the
step's `u` array (as DiffAugment's: losses.step_uniforms on TensorFlow, step_jax.step_uniforms on
JAX), so a resumed run augments exactly as an uninterrupted one. Columns of `u`, per transform:
[apply, the transform's own draws] (`num_uniforms`).

The p rule (`updated`), as StyleGAN2-ADA's training_loop.py: the overfitting heuristic
r_t = E[sign(D(real))] (D's logits on the augmented real images, before the step's update) is
accumulated over `ada_interval` steps, as a sum of signs and a count. After step t (0-based) with
(t + 1) % interval == 0:
    p <- clip(p + sign(r_t - ada_target) * batch_size * interval / (ada_kimg * 1000), 0, 1)
and the accumulators restart. So p can move from 0 to 1 in ada_kimg thousand real images; it rises
while D is too sure of the reals (r_t above the target) and falls when it is not. p starts at 0.
The state (p, sum, count) is three float32 scalars, saved in checkpoints (group "ada"), updated
inside the compiled step: keras Variables on TensorFlow, entries of the donated state on JAX.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
from keras import ops

from ganpipe.gan.training import diffaugment

# The state's variables, in this order (GanState.ada_state, checkpoint group "ada").
STATE = ("p", "acc_sum", "acc_count")
# DiffAugment's transforms themselves: p = 1 is DiffAugment.
TRANSFORMS = {
    "color": diffaugment.color,
    "translation": diffaugment.translation,
    "cutout": diffaugment.cutout,
}
assert set(TRANSFORMS) == set(diffaugment.DRAWS)


@dataclass(frozen=True)
class AdaOptions:
    """What ADA does: its transforms, the target E[sign(D(real))], how often p moves (steps) and
    how fast (thousands of images for a change of 1), and the global batch size."""

    policy: tuple[str, ...]
    target: float = 0.6
    interval: int = 4
    kimg: float = 100.0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not self.policy:
            raise ValueError("ADA needs at least one transform")

    @property
    def adjust(self) -> float:
        """How far p moves at an interval boundary: batch_size * interval / (kimg * 1000)."""
        return self.batch_size * self.interval / (self.kimg * 1000.0)

    @classmethod
    def from_params(cls, params: Any) -> AdaOptions | None:
        """The options of `params.train`, or None when train.ada is off."""
        tp = params.train
        # `auto` is resolved from the data by the trainer (imbalance.resolve_auto); a step built
        # without data (benchmarks, tests) gets what auto is on balanced data: off.
        if tp.ada is not True:
            return None
        return cls(
            policy=diffaugment.parse_policy(tp.ada_policy),
            target=tp.ada_target,
            interval=tp.ada_interval,
            kimg=tp.ada_kimg,
            batch_size=tp.batch_size,
        )


def num_uniforms(policy: tuple[str, ...]) -> int:
    """Columns of `u` that `augment(x, policy, p, u)` reads: per transform, one for whether it
    applies and its own draws."""
    return sum(1 + diffaugment.DRAWS[name] for name in policy)


def augment(x, policy: tuple[str, ...], p, u):
    """`x` (N x H x W x C) with each transform of `policy` applied to each image with probability
    `p` (a scalar), reading every random choice from `u` (N x num_uniforms(policy))."""
    p = ops.cast(p, "float32")
    col = 0
    for name in policy:
        k = diffaugment.DRAWS[name]
        # The decision in float32, whatever x's dtype: a rounded u or p would bias it.
        apply = ops.cast(u[:, col], "float32") < p
        transformed = TRANSFORMS[name](x, ops.cast(u[:, col + 1 : col + 1 + k], x.dtype))
        x = ops.where(ops.reshape(apply, (-1, 1, 1, 1)), transformed, x)
        col += 1 + k
    return x


def updated(p, acc_sum, acc_count, batch_sign_sum, batch_count, t, options: AdaOptions) -> tuple:
    """(p, acc_sum, acc_count) after the 0-based step `t`, whose real logits' signs summed to
    `batch_sign_sum` over `batch_count` logits (see the module docstring). Pure and traceable: the
    interval boundary is an `ops.where`, not a Python branch. All float32 scalars."""
    p = ops.cast(p, "float32")
    acc_sum = ops.cast(acc_sum, "float32") + ops.cast(batch_sign_sum, "float32")
    acc_count = ops.cast(acc_count, "float32") + ops.cast(batch_count, "float32")
    # t as an integer: exact for any step count this trainer reaches (float32 t is exact to 2^24).
    step = ops.cast(t, "int32") + 1
    boundary = ops.equal(ops.mod(step, options.interval), 0)
    mean_sign = acc_sum / ops.maximum(acc_count, 1.0)  # the max only guards the unused branch
    moved = ops.clip(p + ops.sign(mean_sign - options.target) * options.adjust, 0.0, 1.0)
    zero = ops.zeros((), "float32")
    return (
        ops.where(boundary, moved, p),
        ops.where(boundary, zero, acc_sum),
        ops.where(boundary, zero, acc_count),
    )


def make_state() -> list[keras.Variable]:
    """The state as non-trainable float32 scalar Variables, all 0 (p starts at 0), named as
    STATE. Create it under a tf.distribute strategy's scope for mirrored variables."""
    return [
        keras.Variable(0.0, dtype="float32", trainable=False, autocast=False, name=f"ada_{name}")
        for name in STATE
    ]
