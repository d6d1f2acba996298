"""Losses, gradient penalty, DiffAugment, EMA and spectral norm, checked by hand on the TensorFlow
backend (the math is keras.ops, shared with JAX: tests/test_train_jax.py runs it there too)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ganpipe.config import ModelParams, Params, TrainParams, load_params
from ganpipe.errors import ConfigError
from ganpipe.gan.models import build_models
from ganpipe.gan.training import checkpoint, diffaugment, ema, step_tf
from ganpipe.gan.training.checkpoint import run_key
from ganpipe.gan.training.losses import (
    StepOptions,
    adversarial_losses,
    gan_losses,
    gradient_penalty,
    interpolate,
    step_uniforms,
)
from ganpipe.gan.training.state import GanState, build_for_training, make_optimizers

REAL = np.array([[2.0], [-1.0], [0.5], [0.0]], np.float32)
FAKE = np.array([[-3.0], [1.5], [0.0], [-0.5]], np.float32)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def softplus(x):
    return np.log1p(np.exp(x))


@pytest.mark.parametrize(
    ("loss", "d_expected", "g_expected"),
    [
        (
            "bce",
            np.mean(softplus(-REAL)) + np.mean(softplus(FAKE)),
            np.mean(softplus(-FAKE)),
        ),
        # relu(1 - r) = [0, 2, 0.5, 1] -> 0.875; relu(1 + f) = [0, 2.5, 1, 0.5] -> 1.0
        ("hinge", 0.875 + 1.0, 0.5),
        # mean(f) = -0.5, mean(r) = 0.375
        ("wgan_gp", -0.5 - 0.375, 0.5),
    ],
)
def test_losses_against_hand_computed_values(loss, d_expected, g_expected):
    d_loss, g_loss = adversarial_losses(loss, tf.constant(REAL), tf.constant(FAKE))
    assert float(d_loss) == pytest.approx(d_expected, rel=1e-6)
    assert float(g_loss) == pytest.approx(g_expected, rel=1e-6)


def test_bce_by_hand_number():
    # softplus(-2) + ... spelled out once: BCE(sigmoid(2), 1) = log(1 + e^-2) = 0.126928
    d_loss, _ = adversarial_losses("bce", tf.constant([[2.0]]), tf.constant([[-2.0]]))
    assert float(d_loss) == pytest.approx(2 * 0.126928, abs=1e-6)


def test_eps_is_uniform_on_0_1():
    draws = np.concatenate([step_uniforms(0, s, 64, 1).ravel() for s in range(200)])
    assert draws.dtype == np.float32 and draws.size == 12800
    assert draws.min() >= 0.0 and draws.max() < 1.0
    assert draws.mean() == pytest.approx(0.5, abs=0.01)
    assert draws.var() == pytest.approx(1 / 12, abs=0.005)  # normal(0, 1) would give ~1
    assert (draws < 0.1).mean() == pytest.approx(0.1, abs=0.015)
    # Seeded by (seed, step): the same draws again, other ones for another step.
    np.testing.assert_array_equal(step_uniforms(3, 7, 4, 2), step_uniforms(3, 7, 4, 2))
    assert not np.array_equal(step_uniforms(3, 7, 4, 2), step_uniforms(3, 8, 4, 2))


def test_interpolate_lies_between_real_and_fake():
    rng = np.random.default_rng(0)
    real, fake = rng.uniform(-1, 1, (2, 5, 3, 3, 1)).astype(np.float32)
    eps = np.array([0.0, 1.0, 0.25, 0.5, 0.9], np.float32)
    x_hat = _np(interpolate(tf.constant(real), tf.constant(fake), tf.constant(eps)))
    np.testing.assert_allclose(x_hat[0], fake[0])
    np.testing.assert_allclose(x_hat[1], real[1])
    np.testing.assert_allclose(x_hat[2], 0.25 * real[2] + 0.75 * fake[2], rtol=1e-6)


def test_gradient_penalty_by_hand():
    grads = np.zeros((2, 2, 2, 1), np.float32)
    grads[0, 0, 0, 0], grads[0, 1, 1, 0] = 3.0, 4.0  # norm 5 -> (5 - 1)^2 = 16
    grads[1, 0, 1, 0] = 0.5  # norm 0.5 -> 0.25
    assert float(gradient_penalty(tf.constant(grads))) == pytest.approx((16 + 0.25) / 2, rel=1e-5)


def linear_d_forward(w, calls):
    """A tiny linear discriminator D(x) = <w, x> (label ignored) as the TF step calls D: the
    gradient w.r.t. x is w for every sample, so the penalty is (||w|| - 1)^2."""

    def forward(images, labels, gp_rows):
        calls.append((tuple(images.shape), tuple(labels.shape), gp_rows))
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = tf.reduce_sum(images * w, axis=(1, 2, 3))[:, None]
            target = tf.reduce_sum(logits[-gp_rows:]) if gp_rows else None
        return logits, tape.gradient(target, images) if gp_rows else None

    return forward


def test_wgan_gp_on_a_linear_discriminator():
    rng = np.random.default_rng(1)
    n = 4
    real, fake = rng.uniform(-1, 1, (2, n, 2, 2, 1)).astype(np.float32)
    w = rng.normal(size=(1, 2, 2, 1)).astype(np.float32)
    labels = np.arange(n, dtype=np.int32)
    u = step_uniforms(0, 0, 2 * n, 1)
    calls = []
    opts = StepOptions(loss="wgan_gp", gp_weight=10.0)
    d_loss, g_loss, d_real, d_fake, real_signs = gan_losses(
        opts, tf.constant(real), tf.constant(fake), tf.constant(labels), tf.constant(u),
        linear_d_forward(tf.constant(w), calls),
    )  # fmt: skip
    assert calls == [((3 * n, 2, 2, 1), (3 * n,), n)]  # one D pass: real, fake, x_hat
    r = (real * w).sum(axis=(1, 2, 3))
    f = (fake * w).sum(axis=(1, 2, 3))
    gp = (np.linalg.norm(w) - 1) ** 2
    assert float(d_loss) == pytest.approx(f.mean() - r.mean() + 10 * gp, rel=1e-5)
    assert float(g_loss) == pytest.approx(-f.mean(), rel=1e-5)
    assert float(d_real) == pytest.approx(np.mean(1 / (1 + np.exp(-r))), rel=1e-5)
    assert float(d_fake) == pytest.approx(np.mean(1 / (1 + np.exp(-f))), rel=1e-5)
    assert float(real_signs) == np.sign(r).sum()


def test_gradient_penalty_gradient_matches_finite_differences():
    """d(GP)/dw for D(x) = <w, x>: the penalty (||w|| - 1)^2 differentiated through the nested
    tape (second order), against central differences."""
    w0 = np.array([[[[0.3]], [[-1.2]]], [[[0.7]], [[0.4]]]], np.float32).reshape(1, 2, 2, 1)
    x = tf.constant(np.random.default_rng(2).uniform(-1, 1, (3, 2, 2, 1)).astype(np.float32))

    def penalty(w):
        with tf.GradientTape() as inner:
            inner.watch(x)
            target = tf.reduce_sum(x * w)
        return gradient_penalty(inner.gradient(target, x))

    w = tf.Variable(w0)
    with tf.GradientTape() as outer:
        value = penalty(w)
    grad = outer.gradient(value, w).numpy()
    h = 1e-3
    numeric = np.zeros_like(w0)
    for idx in np.ndindex(w0.shape):
        plus, minus = w0.copy(), w0.copy()
        plus[idx] += h
        minus[idx] -= h
        numeric[idx] = (float(penalty(plus)) - float(penalty(minus))) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-2, atol=1e-3)
    norm = np.linalg.norm(w0)
    np.testing.assert_allclose(grad, 2 * (norm - 1) * w0 / norm, rtol=1e-4)


# --- DiffAugment ---

POLICY = ("color", "translation", "cutout")


def images(n=6, h=8, w=8, c=1, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, h, w, c)).astype(np.float32)


@pytest.mark.parametrize("c", [1, 3])
def test_diffaugment_shapes_determinism_and_change(c):
    x = images(c=c)
    k = diffaugment.num_uniforms(POLICY)
    assert k == 7
    u = step_uniforms(0, 5, len(x), k)
    out = _np(diffaugment.diff_augment(tf.constant(x), POLICY, tf.constant(u)))
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_array_equal(
        out, _np(diffaugment.diff_augment(tf.constant(x), POLICY, tf.constant(u)))
    )
    other = _np(
        diffaugment.diff_augment(tf.constant(x), POLICY, tf.constant(step_uniforms(0, 6, 6, k)))
    )
    assert not np.allclose(out, other)


def test_translation_shifts_with_zero_padding():
    x = images(n=2)
    # u -> integer shift floor(u * 3) - 1 (8 * 1/8 = 1 pixel at most): 0.9 -> +1, 0.0 -> -1.
    u = np.array([[0.9, 0.5], [0.5, 0.0]], np.float32)
    out = _np(diffaugment.translation(tf.constant(x), tf.constant(u)))
    # sample 0: rows shifted up by one (out[i] = x[i + 1]), the last row zero padded
    np.testing.assert_array_equal(out[0, :-1], x[0, 1:])
    np.testing.assert_array_equal(out[0, -1], 0)
    # sample 1: columns shifted right (out[:, j] = x[:, j - 1]), the first column zero
    np.testing.assert_array_equal(out[1, :, 1:], x[1, :, :-1])
    np.testing.assert_array_equal(out[1, :, 0], 0)
    # u in the middle: no shift at all
    same = _np(diffaugment.translation(tf.constant(x), tf.constant(np.full((2, 2), 0.5, "f4"))))
    np.testing.assert_array_equal(same, x)


def test_cutout_zeroes_a_half_size_square():
    x = images(n=3) + 2.0  # no zeros of its own
    u = np.array([[0.5, 0.5], [0.0, 0.0], [0.99, 0.3]], np.float32)
    out = _np(diffaugment.cutout(tf.constant(x), tf.constant(u)))
    zeros = (out == 0).sum(axis=(1, 2, 3))
    assert zeros[0] == 16  # a 4x4 square fully inside (centre 4, 4 -> rows/cols 2..5)
    assert (out[0, 2:6, 2:6] == 0).all()
    assert 0 < zeros[1] < 16 and 0 < zeros[2] <= 16  # clipped at the borders
    kept = out != 0
    np.testing.assert_array_equal(out[kept], x[kept])


def test_color_saturation_is_a_no_op_for_one_channel():
    x = images(n=2)
    u = np.array([[0.5, 0.0, 0.5], [0.5, 0.9, 0.5]], np.float32)  # brightness 0, contrast 1
    np.testing.assert_allclose(_np(diffaugment.color(tf.constant(x), tf.constant(u))), x, atol=1e-6)
    rgb = images(n=2, c=3)
    gray = _np(diffaugment.color(tf.constant(rgb), tf.constant(u)))  # saturation 0 for sample 0
    np.testing.assert_allclose(gray[0], np.repeat(rgb[0].mean(-1, keepdims=True), 3, -1), atol=1e-6)


def test_diffaugment_is_differentiable():
    x = tf.Variable(images(c=3))
    u = tf.constant(step_uniforms(1, 1, 6, 7))
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(diffaugment.diff_augment(x, POLICY, u) ** 2)
    grad = tape.gradient(y, x)
    assert grad is not None
    assert np.isfinite(grad.numpy()).all() and np.abs(grad.numpy()).sum() > 0


def test_policy_parsing():
    assert diffaugment.parse_policy("") == ()
    assert diffaugment.parse_policy("color, cutout") == ("color", "cutout")
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        diffaugment.parse_policy("colour")


# --- EMA ---


def test_ema_decay_warm_up_and_update():
    assert float(ema.decay_at(0.999, 0)) == pytest.approx(0.1)
    assert float(ema.decay_at(0.999, 10)) == pytest.approx(11 / 20)
    assert float(ema.decay_at(0.999, 10**6)) == pytest.approx(0.999)
    (new,) = ema.updated([tf.constant([1.0, 2.0])], [tf.constant([3.0, 6.0])], 0.75)
    np.testing.assert_allclose(_np(new), [1.5, 3.0])


# --- params ---


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.diffaugment=color,zoom", "train.diffaugment: Value error, unknown DiffAugment"),
        ("train.diffaugment=color,color", "train.diffaugment: Value error, lists a DiffAugment"),
        ("train.loss=wgan", "train.loss: Input should be"),
        ("train.ema_decay=1.0", "train.ema_decay: Input should be less than 1"),
        ("train.gp_weight=0", "train.gp_weight: Input should be greater than 0"),
        ("model.spectral_norm=maybe", "model.spectral_norm: Input should be a valid boolean"),
    ],
)
def test_new_params_are_validated(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_params(None, [override])


def test_new_params_in_the_run_key(monkeypatch):
    def key(**kw):
        """The key of a run on balanced data: the trainer names it after resolving the `auto`
        defaults (imbalance.resolve_auto), which balanced data turns off."""
        model = {k: kw.pop(k) for k in list(kw) if k in ModelParams.model_fields}
        train = {"diffaugment": "", "class_balance": False, "ada": False} | kw
        return run_key(Params.model_validate({"model": model, "train": train}), "h", "tensorflow")

    base = key()
    variants = [
        key(loss="hinge"), key(loss="wgan_gp"), key(loss="wgan_gp", gp_weight=5.0),
        key(ema_decay=None), key(ema_decay=0.99), key(diffaugment="color"), key(diffaugment="color,cutout"),
        key(spectral_norm=True), key(class_bn=True), key(arch="resnet"), key(embed_noise=0.1),
        key(shared_lowres=True), key(class_bn=True, class_bn_gsr=0.5), key(ada=True),
    ]  # fmt: skip
    assert len({base, *variants}) == 1 + len(variants)
    assert key(gp_weight=5.0) == base  # only wgan_gp uses it
    assert key(diffaugment="color, cutout") == key(diffaugment="color,cutout")
    assert load_params(None, ["train.diffaugment= color , cutout"]).train.diffaugment == (
        "color,cutout"
    )
    # The defaults add nothing to what the key hashes (checkpoint.ADDED_LATER). (This once pinned
    # the default run's key to its value from before these params; with the training code in the
    # key, every edit to the trainer changes it, on purpose.)
    hashed = []
    monkeypatch.setattr(checkpoint, "json_sha256", lambda obj, length: hashed.append(obj) or "k")
    key()
    assert TrainParams().loss == "bce"
    added = {"loss", "gp_weight", "ema_decay", "diffaugment", "ada", "ada_policy", "ada_target"}
    assert not added & hashed[0]["train"].keys()
    assert "spectral_norm" not in hashed[0]["model"] and "latent_dim" in hashed[0]["model"]
    assert "embed_noise" not in hashed[0]["model"] and "shared_lowres" not in hashed[0]["model"]
    assert "class_bn_gsr" not in hashed[0]["model"]


# --- spectral norm ---


@pytest.mark.parametrize(
    ("arch", "shape"), [("conditional", (8, 8, 1)), ("dcgan_tutorial", (28, 28, 1))]
)
def test_spectral_norm_discriminator_saves_and_loads(tmp_path, arch, shape):
    params = ModelParams(arch=arch, spectral_norm=True, filters=16, latent_dim=8, embed_dim=4)
    _, d = build_models(shape, 3, params)
    wrapped = [layer for layer in d.layers if isinstance(layer, keras.layers.SpectralNormalization)]
    # conditional: label embedding and dense, 2 convolutions, the projection's dense and embedding;
    # dcgan_tutorial: 2 convolutions and the dense
    assert len(wrapped) == {"conditional": 6, "dcgan_tutorial": 3}[arch]
    x = np.random.default_rng(0).uniform(-1, 1, (4, *shape)).astype(np.float32)
    labels = np.array([0, 1, 2, 0], np.int32)
    d([x, labels], training=True)  # a training call normalises the kernels and moves u
    d.save(tmp_path / "d.keras")
    loaded = keras.models.load_model(tmp_path / "d.keras", safe_mode=True)
    np.testing.assert_array_equal(
        _np(d([x, labels], training=False)), _np(loaded([x, labels], training=False))
    )
    for a, b in zip(d.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(_np(a), _np(b))


def test_spectral_norm_in_the_tf_step_normalises_the_kernel():
    params = Params.model_validate(
        {
            "model": {"spectral_norm": True, "filters": 16, "latent_dim": 8, "embed_dim": 4},
            "train": {"d_learning_rate": 1e-12, "g_learning_rate": 1e-12},
        }
    )
    g, d = build_models((8, 8, 1), 3, params.model)
    g_opt, d_opt = make_optimizers(params, g, d)
    sn = d.get_layer("d_down1_sn")
    kernel_before, u_before = sn.kernel.numpy(), sn.vector_u.numpy()
    expected_u, expected_kernel = (_np(v) for v in sn.normalized_weights())
    step = step_tf.make_train_step(GanState(g, d, g_opt, d_opt))
    x = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32)
    noise = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
    out = step(x, np.array([0, 1, 2, 0], np.int32), noise)
    assert all(math.isfinite(v) for v in out.values())
    assert not np.allclose(sn.vector_u.numpy(), u_before)
    np.testing.assert_allclose(sn.vector_u.numpy(), expected_u, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sn.kernel.numpy(), expected_kernel, rtol=1e-4, atol=1e-7)
    assert not np.allclose(sn.kernel.numpy(), kernel_before)


def test_gsr_in_the_tf_step_shrinks_the_class_conditional_spread():
    """model.class_bn_gsr: one TensorFlow step with a large weight lowers the penalty of G's
    class-conditional BatchNorm parameters; without it the same step does not lower it as much.
    The grouping and the power iteration match NumPy's SVD."""
    from ganpipe.gan.training import gsr
    from tests.train_fixtures import gsr_effect

    def one_step(state, images, labels, noise):
        step_tf.make_train_step(state)(images, labels, noise)

    effect = gsr_effect(one_step)
    assert effect["parameters"] == 2  # gamma and beta of the 8x8 generator's one ClassBatchNorm
    # Adam's first step moves each parameter by about the learning rate (2e-4 here) against its
    # gradient's sign. At weight 1000 the penalty's gradient decides every sign, so the moves add
    # up (measured: -0.0138); at 0 the adversarial gradient's signs are unrelated to the penalty
    # and mostly cancel (measured: +0.0002 on TensorFlow)
    drop, chance = (
        effect["before"] - effect["after_1000"],
        abs(effect["before"] - effect["after_0"]),
    )
    assert drop > 0.005 and drop > 10 * chance
    assert gsr.group_shape(64) == (8, 8) and gsr.group_shape(128) == (8, 16)
    assert gsr.group_shape(7) == (1, 7)
    w = np.random.default_rng(0).standard_normal((5, 8, 16)).astype(np.float32)
    exact = np.linalg.svd(w, compute_uv=False)[:, 0]
    # power iteration from a fixed start: a lower bound that is close after POWER_ITERATIONS
    # steps on matrices whose top two singular values are this far apart (float32 rounding: 1e-5)
    estimate = _np(gsr.largest_singular_values(w))
    assert np.all(estimate <= exact * (1 + 1e-5)) and np.all(estimate >= 0.99 * exact)
    with pytest.raises(ValueError, match="class_bn_gsr needs the class-conditional BatchNorm"):
        ModelParams(class_bn_gsr=0.5)
    ModelParams(class_bn_gsr=0.5, arch="resnet")


def test_gsr_is_the_papers_penalty_with_its_class_weights():
    """The penalty is gSR's (val-iisc/gSRGAN): over the layers, the class-weighted mean of each
    class's largest grouped singular value squared, gain's (gamma - 1) plus bias's; the weights
    are inversely proportional to the classes' effective numbers, average 1, and reach the step
    only from the training counts and only with gSR on."""
    from ganpipe.gan.training import gsr

    long_tail = gsr.class_weights([1000] * 5 + [20] * 5)
    assert long_tail[:5] == pytest.approx([0.308] * 5, abs=1e-3)
    assert long_tail[5:] == pytest.approx([1.692] * 5, abs=1e-3)
    assert gsr.class_weights([400] * 10) == pytest.approx([1.0] * 10)
    assert np.mean(gsr.class_weights([5, 0, 3])) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    # two layers of 3 classes x 128 channels (8 x 16 groups): gamma (offset 1), beta (offset 0)
    values = [rng.standard_normal((3, 128)).astype(np.float32) for _ in range(4)]
    offsets = [1.0, 0.0, 1.0, 0.0]
    weights = (0.5, 1.0, 1.5)
    sigma = [
        np.linalg.svd((v - o).reshape(3, 8, 16), compute_uv=False)[:, 0]
        for v, o in zip(values, offsets, strict=True)
    ]
    expected = sum(np.mean(np.asarray(weights) * s**2) for s in sigma) / 2
    # the power iteration's estimate is within 1% of SVD's (the test above), so its square 2%
    got = float(_np(gsr.penalty(values, offsets, weights)))
    assert got == pytest.approx(expected, rel=0.02)
    equal = float(_np(gsr.penalty(values, offsets)))
    assert equal == pytest.approx(sum(np.mean(s**2) for s in sigma) / 2, rel=0.02)
    params = Params.model_validate({"model": {"class_bn": True, "class_bn_gsr": 0.5}})
    counts = [1000] * 5 + [20] * 5
    assert StepOptions.from_params(params, counts).gsr_class_weights == long_tail
    assert StepOptions.from_params(params).gsr_class_weights == ()
    off = Params.model_validate({"model": {"class_bn": True}})
    assert StepOptions.from_params(off, counts).gsr_class_weights == ()
    tiny = Params.model_validate(
        {"model": {"class_bn": True, "class_bn_gsr": 0.5, "filters": 16, "latent_dim": 8}}
    )
    state = build_for_training(tiny, (8, 8, 1), 3, class_counts=[50, 50, 5])
    assert state.options.gsr_class_weights == gsr.class_weights([50, 50, 5])


def test_spectral_norm_keeps_float32_master_kernels_under_mixed_precision():
    """Keras's wrapper under a mixed policy would normalise the kernel autocast to bfloat16 and
    assign that back, rounding the float32 weights every step; ours computes in float32."""
    import ml_dtypes

    params = Params.model_validate(
        {
            "model": {"spectral_norm": True, "filters": 16, "latent_dim": 8, "embed_dim": 4},
            "train": {"precision": "mixed_bfloat16"},
        }
    )
    state = build_for_training(params, (8, 8, 1), 3)
    g, d = state.generator, state.discriminator
    sn = d.get_layer("d_down1_sn")
    assert sn.compute_dtype == "float32" and sn.layer.compute_dtype == "bfloat16"
    x = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)).astype(np.float32)
    d([x, np.array([0, 1], np.int32)], training=True)
    k = sn.kernel.numpy()
    assert not np.array_equal(k, k.astype(ml_dtypes.bfloat16).astype(np.float32))
    # The EMA clone keeps the generator's name, layer names and dtype policies.
    clone = ema.make_ema_generator(g)
    assert clone.name == g.name and [x.name for x in clone.layers] == [x.name for x in g.layers]
    assert clone.get_layer("g_dense").compute_dtype == "bfloat16"
    for a, b in zip(clone.weights, g.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
