"""The GAN losses, in one backend-neutral place (keras.ops) that both train steps call, so the
TensorFlow and JAX steps cannot drift apart (`train.loss`, `train.gp_weight`,
`train.diffaugment`, `train.ada`).

With r = D(real) and f = D(fake) as logits:
- bce (default; the DCGAN tutorial's non-saturating loss):
  D: mean(softplus(-r)) + mean(softplus(f)) = BCE(r, 1) + BCE(f, 0); G: mean(softplus(-f)).
- hinge: D: mean(relu(1 - r)) + mean(relu(1 + f)); G: -mean(f).
- wgan_gp: D: mean(f) - mean(r) + gp_weight * mean((||grad_x D(x_hat)||_2 - 1)^2), with
  x_hat = eps * real + (1 - eps) * fake and eps ~ Uniform[0, 1] per sample; G: -mean(f).
  The gradient is taken per sample w.r.t. the image input (the label input goes along unchanged);
  the step supplies it (a nested GradientTape on TensorFlow, `jax.grad` on JAX) through
  `d_forward`. D is called once, on [real, fake, x_hat] stacked: one spectral-norm update and one
  dropout mode per step. That is only right because no discriminator here has BatchNorm (whose
  batch statistics would mix the samples, and which the gradient penalty's per-sample gradient
  assumes away): keep it that way, or use LayerNorm, if a discriminator is added.
  The generator gets no gradient from the penalty. One D step per G step (no n_critic).

`d_real`/`d_fake` (history.csv) are the mean sigmoid of the logits whatever the loss: D's
"probability" of real under bce, a squashed score under hinge and wgan_gp.

DiffAugment or ADA (`train.ada`, ada.py; never both), when on, transforms real and fake before D
(once, in the one D pass both losses share); under wgan_gp x_hat interpolates the augmented
images. ADA applies each transform with the probability p the step passes in; `gan_losses` also
returns sum(sign(real logits)), the statistic p follows (ada.updated), and the step reports the p
it used as `ada_p` (0 with ADA off).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from keras import ops

from ganpipe.gan.training import ada as ada_augment
from ganpipe.gan.training import diffaugment, gsr

LOSSES = ("bce", "hinge", "wgan_gp")
# What every step returns, in this order; history.csv's columns after the step. `ada_p`: the ADA
# probability the step used (0 with ADA off).
METRICS = ("d_loss", "g_loss", "d_real", "d_fake", "ada_p")


def step_uniforms(seed: int, step: int, rows: int, cols: int) -> np.ndarray:
    """rows x cols float32 Uniform[0, 1) for step `step`, drawn on the host: the `u` the TensorFlow
    runner (step_tf.HostRunner) passes, from a stream of its own (default_rng([seed, step, 1]); the
    noise's is default_rng([seed, step])). The JAX runner draws its `u` inside the jitted step
    from its step key instead (step_jax.step_uniforms)."""
    return np.random.default_rng([seed, step, 1]).random((rows, cols), dtype=np.float32)


@dataclass(frozen=True)
class StepOptions:
    """What a train step does besides the default (bce, no DiffAugment, no EMA, no ADA)."""

    loss: str = "bce"
    gp_weight: float = 10.0
    diffaugment: tuple[str, ...] = ()
    ema_decay: float | None = None
    ada: ada_augment.AdaOptions | None = None
    # gSR: this weight x the group spectral penalty of G's class-conditional BatchNorm (gsr.py),
    # each class weighted by gsr_class_weights (gsr.class_weights of the training counts; empty:
    # equal)
    gsr: float = 0.0
    gsr_class_weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; known: {LOSSES}")
        if self.diffaugment and self.ada is not None:
            raise ValueError("DiffAugment and ADA cannot both be on")

    @classmethod
    def from_params(cls, params: Any, class_counts: Sequence[int] | None = None) -> StepOptions:
        """The options of `params`; `class_counts` (training images per class) set gSR's class
        weights (without them every class counts the same)."""
        tp = params.train
        # The trainer resolves `auto` from the data first (imbalance.resolve_auto); a step built
        # without data (benchmarks, tests) gets what auto is on balanced data: off.
        policy = "" if tp.diffaugment == "auto" else tp.diffaugment
        return cls(
            loss=tp.loss,
            gp_weight=tp.gp_weight,
            diffaugment=diffaugment.parse_policy(policy),
            ema_decay=tp.ema_decay,
            ada=ada_augment.AdaOptions.from_params(params),
            gsr=params.model.class_bn_gsr,
            gsr_class_weights=gsr.class_weights(class_counts)
            if params.model.class_bn_gsr and class_counts is not None
            else (),
        )

    @property
    def augment_uniforms(self) -> int:
        """Columns of `u` the augmentation reads: DiffAugment's or ADA's (only one is ever on)."""
        if self.ada is not None:
            return ada_augment.num_uniforms(self.ada.policy)
        return diffaugment.num_uniforms(self.diffaugment)

    @property
    def num_uniforms(self) -> int:
        """Columns of the per-step 2N x k Uniform[0, 1) array `u` the step reads: DiffAugment's or
        ADA's, then (wgan_gp) one for eps (its first N rows). 0: the step takes no `u`."""
        return self.augment_uniforms + (1 if self.loss == "wgan_gp" else 0)


def adversarial_losses(loss: str, real_logits, fake_logits):
    """(d_loss, g_loss) without the gradient penalty; logits float32, any shape."""
    if loss == "bce":
        d_loss = ops.mean(ops.softplus(-real_logits)) + ops.mean(ops.softplus(fake_logits))
        return d_loss, ops.mean(ops.softplus(-fake_logits))
    if loss == "hinge":
        d_loss = ops.mean(ops.relu(1.0 - real_logits)) + ops.mean(ops.relu(1.0 + fake_logits))
        return d_loss, -ops.mean(fake_logits)
    if loss == "wgan_gp":
        return ops.mean(fake_logits) - ops.mean(real_logits), -ops.mean(fake_logits)
    raise ValueError(f"unknown loss {loss!r}")


def interpolate(real, fake, eps):
    """x_hat = eps * real + (1 - eps) * fake, eps: N values in [0, 1], one per sample."""
    eps = ops.reshape(ops.cast(eps, real.dtype), (-1,) + (1,) * (len(real.shape) - 1))
    return eps * real + (1.0 - eps) * fake


def gradient_penalty(grads):
    """mean over samples of (||grad||_2 - 1)^2, the norm over all but the batch axis (float32).
    A 1e-12 under the square root keeps its own gradient finite at a zero gradient."""
    g = ops.cast(grads, "float32")
    norms = ops.sqrt(ops.sum(ops.square(g), axis=tuple(range(1, len(g.shape)))) + 1e-12)
    return ops.mean(ops.square(norms - 1.0))


# d_forward(images, labels, gp_rows) -> (logits, gradient of sum(logits[-gp_rows:]) w.r.t. images,
# or None when gp_rows is 0); the step's way of calling D (stateless on JAX).
DForward = Callable[[Any, Any, int], tuple[Any, Any]]


class Losses(NamedTuple):
    """One step's losses and statistics (float32 scalars), as `gan_losses` returns them."""

    d_loss: Any
    g_loss: Any
    d_real: Any  # mean sigmoid(D(real))
    d_fake: Any  # mean sigmoid(D(fake))
    real_signs: Any  # sum of sign(D(real)) over the batch: ADA's statistic (ada.updated)


def gan_losses(
    options: StepOptions, real, fake, labels, u, d_forward: DForward, ada_p=None
) -> Losses:
    """The losses of one step, from one D pass.

    `real` and `fake`: N x H x W x C (real is cast to fake's dtype); `labels`: N (the fake batch
    uses the real batch's labels); `u`: 2N x options.num_uniforms Uniform[0, 1) draws (None when
    that is 0); `ada_p`: ADA's current probability (a float32 scalar; None with ADA off)."""
    n = real.shape[0]
    both = ops.concatenate([ops.cast(real, fake.dtype), fake], 0)
    both_labels = ops.concatenate([labels, labels], 0)
    if options.diffaugment:
        both = diffaugment.diff_augment(both, options.diffaugment, u[:, : options.augment_uniforms])
    if options.ada is not None:
        both = ada_augment.augment(
            both, options.ada.policy, ada_p, u[:, : options.augment_uniforms]
        )
    penalty = None
    if options.loss == "wgan_gp":
        eps = u[:n, options.augment_uniforms]
        x_hat = interpolate(both[:n], both[n:], eps)
        logits, grads = d_forward(
            ops.concatenate([both, x_hat], 0), ops.concatenate([both_labels, labels], 0), n
        )
        logits = logits[: 2 * n]
        penalty = gradient_penalty(grads[2 * n :])
    else:
        logits, _ = d_forward(both, both_labels, 0)
    logits = ops.cast(logits, "float32")
    real_logits, fake_logits = logits[:n], logits[n:]
    d_loss, g_loss = adversarial_losses(options.loss, real_logits, fake_logits)
    if penalty is not None:
        d_loss = d_loss + options.gp_weight * penalty
    return Losses(
        d_loss,
        g_loss,
        ops.mean(ops.sigmoid(real_logits)),
        ops.mean(ops.sigmoid(fake_logits)),
        # No gradient flows into p's statistic: it only steers p.
        ops.sum(ops.sign(ops.stop_gradient(real_logits))),
    )
