"""Generator and discriminator: shapes, range, conditioning, save/load; the PNG grid writer."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from ganpipe.config import ModelParams
from ganpipe.gan.models import (
    ARCHS,
    build_discriminator,
    build_generator,
    build_models,
    check_shape,
    upsamplings,
)
from ganpipe.images import grid, readable_scale, save_grid

TINY = ModelParams(latent_dim=8, embed_dim=4, filters=16)
ARCH_NAMES = tuple(ARCHS)
# The architectures that build for any shape with a layout (dcgan_tutorial is 28x28x1 only).
ANY_SHAPE = ("conditional", "mlp", "mlp_convd", "resnet")
ISSUE_SHAPES = [(8, 8, 1), (28, 28, 1), (32, 32, 3), (64, 64, 3)]


def _inputs(n: int, num_classes: int, latent_dim: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent_dim)).astype(np.float32)
    labels = (np.arange(n) % num_classes).astype(np.int32)
    return z, labels


@pytest.mark.parametrize(
    ("shape", "k"),
    [((28, 28, 1), 2), ((8, 8, 1), 1), ((32, 32, 3), 3), ((64, 48, 3), 4), ((12, 12, 1), 2),
     ((4, 4, 1), 1), ((6, 10, 1), 1)],
)  # fmt: skip
def test_upsampling_rule(shape, k):
    assert upsamplings(shape) == k


@pytest.mark.parametrize("shape", [(7, 7, 1), (27, 28, 1), (2, 2, 1), (28, 28, 0)])
def test_sizes_without_a_layout_are_refused(shape):
    with pytest.raises(ValueError, match="image"):
        upsamplings(shape)


@pytest.mark.parametrize("shape", [(28, 28, 1), (8, 8, 1), (32, 32, 3)])
def test_shapes_and_range(shape):
    g = build_generator(shape, 10, TINY)
    d = build_discriminator(shape, 10, TINY)
    z, labels = _inputs(6, 10)
    images = keras.ops.convert_to_numpy(g([z, labels], training=False))
    assert images.shape == (6, *shape)
    assert images.dtype == np.float32
    assert np.all(images >= -1) and np.all(images <= 1)
    logits = keras.ops.convert_to_numpy(d([images, labels], training=False))
    assert logits.shape == (6, 1)
    assert np.all(np.isfinite(logits))


def test_labels_condition_both_models():
    shape = (8, 8, 1)
    g = build_generator(shape, 3, TINY)
    d = build_discriminator(shape, 3, TINY)
    z, _ = _inputs(3, 3)
    z = np.repeat(z[:1], 3, axis=0)  # same noise, three labels
    labels = np.arange(3, dtype=np.int32)
    images = keras.ops.convert_to_numpy(g([z, labels], training=False))
    assert not np.allclose(images[0], images[1]) and not np.allclose(images[1], images[2])
    same = np.repeat(images[:1], 3, axis=0)
    logits = keras.ops.convert_to_numpy(d([same, labels], training=False))[:, 0]
    assert len(set(np.round(logits, 6).tolist())) == 3


def test_embed_noise_is_on_in_training_only_and_needs_an_embedding():
    shape = (8, 8, 1)
    noisy = build_generator(shape, 3, TINY.model_copy(update={"embed_noise": 0.5}))
    z, labels = _inputs(3, 4)
    run = lambda training: keras.ops.convert_to_numpy(noisy([z, labels], training=training))  # noqa: E731
    # sampling: the clean embedding (equal up to float reordering between calls)
    np.testing.assert_allclose(run(False), run(False), rtol=1e-5, atol=1e-6)
    assert not np.allclose(run(True), run(True))  # training: a fresh draw per call
    for bad in ({"class_bn": True}, {"arch": "resnet"}):
        with pytest.raises(ValueError, match="embed_noise needs"):
            ModelParams(embed_noise=0.5, **bad)


def test_shared_lowres_keeps_the_label_out_of_the_first_layer(tmp_path):
    """model.shared_lowres: the dense layer sees z alone (shared by every class), the label still
    conditions the image (through the upsamplings), and the model saves and loads."""
    shape = (28, 28, 1)
    params = TINY.model_copy(update={"shared_lowres": True, "embed_noise": 0.1})
    g = build_generator(shape, 3, params)
    assert g.get_layer("g_dense").kernel.shape[0] == TINY.latent_dim
    plain = build_generator(shape, 3, TINY)
    assert plain.get_layer("g_dense").kernel.shape[0] == TINY.latent_dim + TINY.embed_dim
    z, _ = _inputs(3, 3)
    z = np.repeat(z[:1], 3, axis=0)  # same noise, three labels
    labels = np.arange(3, dtype=np.int32)
    images = keras.ops.convert_to_numpy(g([z, labels], training=False))
    assert images.shape == (3, *shape)
    assert not np.allclose(images[0], images[1]) and not np.allclose(images[1], images[2])
    g.save(tmp_path / "g.keras")
    again = keras.models.load_model(tmp_path / "g.keras")
    # the same weights and inputs: equal up to float reordering between the two models' calls
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(again([z, labels], training=False)), images, atol=1e-5
    )
    for bad in ({"class_bn": True}, {"arch": "resnet"}):
        with pytest.raises(ValueError, match="shared_lowres needs"):
            ModelParams(shared_lowres=True, **bad)


def test_default_models_load_without_custom_objects(tmp_path):
    shape = (28, 28, 1)
    g = build_generator(shape, 10, TINY)
    d = build_discriminator(shape, 10, TINY)
    g.save(tmp_path / "generator.keras")
    d.save(tmp_path / "discriminator.keras")
    g2 = keras.models.load_model(tmp_path / "generator.keras")
    d2 = keras.models.load_model(tmp_path / "discriminator.keras")
    z, labels = _inputs(5, 10)
    a = keras.ops.convert_to_numpy(g([z, labels], training=False))
    b = keras.ops.convert_to_numpy(g2([z, labels], training=False))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(d([a, labels], training=False)),
        keras.ops.convert_to_numpy(d2([a, labels], training=False)),
    )


def test_grid_layout_and_png(tmp_path):
    images = np.arange(7 * 8 * 8 * 1, dtype=np.uint32).reshape(7, 8, 8, 1).astype(np.uint8)
    g = grid(images, rows=2, pad=2, scale=3)
    # 2 rows, ceil(7/2) = 4 columns of 24-pixel images with 2-pixel gaps around them.
    assert g.shape == (2 * (24 + 2) + 2, 4 * (24 + 2) + 2, 1)
    np.testing.assert_array_equal(g[2:26, 2:26, 0], images[0, :, :, 0].repeat(3, 0).repeat(3, 1))
    save_grid(tmp_path / "gray.png", images, rows=2, scale=3)
    with Image.open(tmp_path / "gray.png") as im:
        assert im.mode == "L" and im.size == (g.shape[1], g.shape[0])
    rgb = np.zeros((4, 5, 6, 3), np.uint8)
    save_grid(tmp_path / "rgb.png", rgb, rows=4, pad=1)
    with Image.open(tmp_path / "rgb.png") as im:
        assert im.mode == "RGB" and im.size == (1 * (6 + 1) + 1, 4 * (5 + 1) + 1)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind
    with pytest.raises(ValueError, match="uint8"):
        grid(images.astype(np.float32), rows=1)
    assert readable_scale((8, 8, 1)) == 4 and readable_scale((28, 28, 1)) == 1


def test_tutorial_arch_has_the_tutorial_layers():
    params = ModelParams(arch="dcgan_tutorial", latent_dim=100, embed_dim=8)
    g, d = build_models((28, 28, 1), 10, params)
    shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in g.layers}
    assert shapes["g_concat"] == (108,)  # z + label embedding
    assert shapes["g_dense"] == (7 * 7 * 256,)
    assert shapes["g_reshape"] == (7, 7, 256)
    assert shapes["g_up1"] == (7, 7, 128) and shapes["g_up2"] == (14, 14, 64)
    assert shapes["image"] == (28, 28, 1)
    convs = [g.get_layer(n) for n in ("g_up1", "g_up2", "image")]
    assert [c.kernel_size for c in convs] == [(5, 5)] * 3
    assert [c.strides for c in convs] == [(1, 1), (2, 2), (2, 2)]
    assert not any(c.use_bias for c in convs) and not g.get_layer("g_dense").use_bias
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in g.layers) == 3

    shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in d.layers}
    assert shapes["d_concat"] == (28, 28, 2)  # image + label plane
    assert shapes["d_down1"] == (14, 14, 64) and shapes["d_down2"] == (7, 7, 128)
    assert [d.get_layer(f"d_down{i}_dropout").rate for i in (1, 2)] == [0.3, 0.3]
    assert shapes["d_flatten"] == (7 * 7 * 128,) and shapes["logits"] == (1,)

    z, labels = _inputs(3, 10, latent_dim=100)
    images = keras.ops.convert_to_numpy(g([z, labels], training=False))
    assert images.shape == (3, 28, 28, 1) and np.all(np.abs(images) <= 1)
    assert keras.ops.convert_to_numpy(d([images, labels], training=False)).shape == (3, 1)


@pytest.mark.parametrize("shape", [(8, 8, 1), (28, 28, 3), (32, 32, 1)])
def test_tutorial_arch_is_28x28x1_only(shape):
    params = ModelParams(arch="dcgan_tutorial")
    with pytest.raises(ValueError, match="28x28x1 images only"):
        check_shape(shape, params)
    with pytest.raises(ValueError, match="28x28x1 images only"):
        build_models(shape, 10, params)


def test_mixed_precision_keeps_outputs_float32():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        for arch in ARCH_NAMES:
            params = ModelParams(arch=arch, filters=16, spectral_norm=True, class_bn=True)
            g, d = build_models((28, 28, 1), 10, params)
            assert g.get_layer("g_dense").compute_dtype == "bfloat16"
            z, labels = _inputs(2, 10, 64)
            fake = keras.ops.convert_to_numpy(g([z, labels], training=True))
            logits = d([fake, labels], training=True)
            assert keras.ops.convert_to_numpy(logits).dtype == np.float32
            assert g.output.dtype == "float32" and d.output.dtype == "float32"
    finally:
        keras.config.set_dtype_policy(previous)


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("arch", ANY_SHAPE)
@pytest.mark.parametrize("shape", ISSUE_SHAPES)
def test_every_arch_builds_for_the_issue_shapes(arch, shape):
    params = TINY.model_copy(update={"arch": arch, "spectral_norm": True, "class_bn": True})
    check_shape(shape, params)
    g, d = build_models(shape, 10, params)
    z, labels = _inputs(4, 10)
    images = _np(g([z, labels], training=True))
    assert images.shape == (4, *shape) and images.dtype == np.float32
    assert np.all(np.abs(images) <= 1)
    logits = _np(d([images, labels], training=True))
    assert logits.shape == (4, 1) and np.all(np.isfinite(logits))


@pytest.mark.parametrize("arch", ANY_SHAPE)
def test_labels_condition_every_arch(arch):
    shape, params = (8, 8, 1), TINY.model_copy(update={"arch": arch, "class_bn": True})
    g, d = build_models(shape, 3, params)
    for layer in d.layers:  # the projection embedding starts near 0: make the label matter
        if layer.name.startswith("d_proj_embed"):
            layer.set_weights([w + 1.0 for w in layer.get_weights()])
    z = np.repeat(_inputs(1, 3)[0], 3, axis=0)  # same noise, three labels
    labels = np.arange(3, dtype=np.int32)
    if arch == "resnet" or params.class_bn and arch == "conditional":
        # class BatchNorm starts at gain 1, bias 0 for every class: give each its own bias
        for layer in g.layers:
            if type(layer).__name__ == "ClassBatchNorm":
                gamma, beta = layer.get_weights()[:2]
                layer.set_weights([gamma, beta + np.arange(3)[:, None]] + layer.get_weights()[2:])
    images = _np(g([z, labels], training=False))
    assert not np.allclose(images[0], images[1]) and not np.allclose(images[1], images[2])
    same = np.repeat(images[:1], 3, axis=0)
    logits = _np(d([same, labels], training=False))[:, 0]
    assert len(set(np.round(logits, 6).tolist())) == 3


def _weighted_layers(model: keras.Model) -> list:
    """The innermost layers with a kernel or an embedding matrix, with their wrapper (or None)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.SpectralNormalization):
            found.append((layer.layer, layer))
        elif hasattr(layer, "kernel") or hasattr(layer, "embeddings"):
            found.append((layer, None))
    return found


@pytest.mark.parametrize("arch", ["conditional", "mlp", "mlp_convd", "resnet"])
def test_spectral_norm_covers_every_discriminator_layer(arch):
    params = TINY.model_copy(update={"arch": arch, "spectral_norm": True})
    _, d = build_models((28, 28, 1), 10, params)
    layers = _weighted_layers(d)
    assert layers and all(wrapper is not None for _, wrapper in layers), [
        inner.name for inner, wrapper in layers if wrapper is None
    ]
    names = {inner.name for inner, _ in layers}
    assert "d_proj_embed" in names  # the projection's class embedding too (Miyato & Koyama)
    # A few training calls run the power iteration: every matrix's top singular value -> 1.
    images, labels = np.zeros((2, 28, 28, 1), np.float32), np.array([0, 1], np.int32)
    for _ in range(30):
        out = d([images, labels], training=True)
    assert _np(out).dtype == np.float32
    for inner, _ in layers:
        w = _np(inner.embeddings if hasattr(inner, "embeddings") else inner.kernel)
        sigma = np.linalg.svd(w.reshape(-1, w.shape[-1]), compute_uv=False)[0]
        assert sigma == pytest.approx(1.0, abs=0.05), inner.name


def test_class_batch_norm_is_batch_norm_with_a_gain_and_bias_per_class():
    from ganpipe.gan.models.layers import ClassBatchNorm

    layer = ClassBatchNorm(3, epsilon=1e-6)
    x = np.random.default_rng(0).normal(2.0, 3.0, (6, 4, 4, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2], np.int32)
    layer.build([x.shape, labels.shape])
    gamma = np.array([[1.0] * 5, [2.0] * 5, [0.5] * 5], np.float32)
    beta = np.array([[0.0] * 5, [1.0] * 5, [-1.0] * 5], np.float32)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    out = _np(layer([x, labels], training=True))
    normed = (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-6)
    expected = normed * gamma[labels][:, None, None, :] + beta[labels][:, None, None, :]
    np.testing.assert_allclose(out, expected, atol=1e-4)
    moving = _np(layer.norm.moving_mean)
    assert np.all(moving != 0)  # a training call updated the moving statistics


# Class BatchNorm, the spectrally normalised embeddings and both archs that use them.
CROSS_BACKEND_ARCHS = ("conditional", "resnet")


def save_models(folder: Path) -> None:
    """Build, run (moving statistics and SN vectors off their initial values) and save G and D of
    CROSS_BACKEND_ARCHS with every model option on, with their inputs and outputs beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    for arch in CROSS_BACKEND_ARCHS:
        params = ModelParams(arch=arch, latent_dim=8, filters=16, spectral_norm=True, class_bn=True)
        g, d = build_models((28, 28, 1), 10, params)
        z, y = _inputs(5, 10)
        d([_np(g([z, y], training=True)), y], training=True)
        images = _np(g([z, y], training=False))
        logits = _np(d([images, y], training=False))
        g.save(folder / f"{arch}_g.keras")
        d.save(folder / f"{arch}_d.keras")
        np.savez(folder / f"{arch}.npz", z=z, y=y, images=images, logits=logits)


def load_models(folder: Path) -> None:
    """Load what save_models wrote, with safe_mode on, and check the outputs are the same."""
    for arch in CROSS_BACKEND_ARCHS:
        ref = np.load(folder / f"{arch}.npz")
        g = keras.models.load_model(folder / f"{arch}_g.keras", safe_mode=True)
        d = keras.models.load_model(folder / f"{arch}_d.keras", safe_mode=True)
        images = _np(g([ref["z"], ref["y"]], training=False))
        np.testing.assert_allclose(images, ref["images"], atol=1e-5)
        logits = _np(d([ref["images"], ref["y"]], training=False))
        np.testing.assert_allclose(logits, ref["logits"], atol=1e-4)


def test_saved_models_load_with_safe_mode_across_backends(tmp_path):
    """Saved here (TensorFlow), loaded in a fresh JAX process that imported ganpipe, which saves
    its own; those load here: same outputs both ways."""
    import subprocess
    import sys

    from tests.helpers import has_jax, quiet_env

    if not has_jax() or keras.backend.backend() != "tensorflow":
        pytest.skip("needs jax installed and this session on TensorFlow")
    save_models(tmp_path / "tf")
    code = (
        "import sys; from pathlib import Path; import keras; "
        "from tests.test_models import load_models, save_models; "
        "load_models(Path(sys.argv[1])); save_models(Path(sys.argv[2])); "
        "print('ok', keras.backend.backend())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "tf"), str(tmp_path / "jax")],
        env=quiet_env(KERAS_BACKEND="jax"),
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ok jax" in done.stdout
    load_models(tmp_path / "jax")
