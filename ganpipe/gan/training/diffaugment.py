"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"):
differentiable augmentations applied to every image the discriminator sees, real and fake, in the
D and the G loss alike (`train.diffaugment`).

Backend-neutral (keras.ops) and free of hidden randomness: every random choice is read from `u`, a
batch x `num_uniforms(policy)` array of Uniform[0, 1) draws that the caller makes from the step's
seeded RNG (on TensorFlow from default_rng([train.seed, step, 1]) on the host, on JAX from the
step's key inside the jitted step), so a resumed run augments exactly as an uninterrupted one.

Images are N x H x W x C in [-1, 1]. The transforms, in the order the policy lists them:
- color: brightness + (u - 0.5); saturation x (2u) around the per-pixel channel mean (a no-op for
  one channel); contrast x (u + 0.5) around the per-image mean. 3 draws.
- translation: a shift by up to round(H/8) rows and round(W/8) columns each way, zero padded. Done
  as two one-hot shift-matrix products (no gathers), so it differentiates like any matmul. 2 draws.
- cutout: a round(H/2) x round(W/2) square zeroed at a random centre (clipped at the borders, as in
  the reference implementation). 2 draws.
"""

from __future__ import annotations

from keras import ops

from ganpipe.config import DIFFAUGMENT_POLICIES, parse_diffaugment

# Uniform[0, 1) columns each transform reads from `u`.
DRAWS = {"color": 3, "translation": 2, "cutout": 2}
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5

assert set(DRAWS) == set(DIFFAUGMENT_POLICIES)

# "color, cutout" -> ("color", "cutout"). The one parser, the params validator's too: it lives in
# config.py, which validating params imports without Keras.
parse_policy = parse_diffaugment


def num_uniforms(policy: tuple[str, ...]) -> int:
    """Columns of `u` that `diff_augment(x, policy, u)` reads."""
    return sum(DRAWS[name] for name in policy)


def diff_augment(x, policy: tuple[str, ...], u):
    """`x` augmented by `policy`, reading its random choices from `u` (N x num_uniforms)."""
    u = ops.cast(u, x.dtype)
    col = 0
    for name in policy:
        k = DRAWS[name]
        x = _TRANSFORMS[name](x, u[:, col : col + k])
        col += k
    return x


def color(x, u):
    brightness = ops.reshape(u[:, 0] - 0.5, (-1, 1, 1, 1))
    x = x + brightness
    if x.shape[-1] > 1:
        mean = ops.mean(x, axis=-1, keepdims=True)
        x = (x - mean) * ops.reshape(u[:, 1] * 2.0, (-1, 1, 1, 1)) + mean
    mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * ops.reshape(u[:, 2] + 0.5, (-1, 1, 1, 1)) + mean


def _shift_matrix(size: int, shift, dtype):
    """N x size x size one-hot: out[n, i] = in[n, i + shift[n]], zero where that is outside."""
    i = ops.reshape(ops.arange(size, dtype="int32"), (1, size, 1))
    j = ops.reshape(ops.arange(size, dtype="int32"), (1, 1, size))
    return ops.cast(ops.equal(j, i + ops.reshape(shift, (-1, 1, 1))), dtype)


def _randint(u, low: int, high: int):
    """Integers in [low, high] from Uniform[0, 1) draws (clipped: u is never quite 1)."""
    n = high - low + 1
    value = ops.cast(ops.floor(ops.cast(u, "float32") * n), "int32") + low
    return ops.clip(value, low, high)


def translation(x, u):
    h, w = x.shape[1], x.shape[2]
    sh, sw = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy, dx = _randint(u[:, 0], -sh, sh), _randint(u[:, 1], -sw, sw)
    x = ops.einsum("nij,njwc->niwc", _shift_matrix(h, dy, x.dtype), x)
    return ops.einsum("nvj,nhjc->nhvc", _shift_matrix(w, dx, x.dtype), x)


def cutout(x, u):
    h, w = x.shape[1], x.shape[2]
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    # The reference: centre in [0, size + (1 - cut % 2)), the square from centre - cut // 2.
    cy = _randint(u[:, 0], 0, h - ch % 2)
    cx = _randint(u[:, 1], 0, w - cw % 2)
    rows = ops.reshape(ops.arange(h, dtype="int32"), (1, h))
    cols = ops.reshape(ops.arange(w, dtype="int32"), (1, w))
    top, left = ops.reshape(cy - ch // 2, (-1, 1)), ops.reshape(cx - cw // 2, (-1, 1))
    in_rows = ops.logical_and(rows >= top, rows < top + ch)  # N x H
    in_cols = ops.logical_and(cols >= left, cols < left + cw)  # N x W
    cut = ops.logical_and(in_rows[:, :, None], in_cols[:, None, :])  # N x H x W
    keep = 1.0 - ops.cast(cut, x.dtype)
    return x * keep[..., None]


_TRANSFORMS = {"color": color, "translation": translation, "cutout": cutout}
