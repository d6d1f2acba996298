"""A small class-conditional DCGAN, sized from the data shape.

Backend-neutral Keras 3, functional API, built-in layers plus ganpipe's two registered ones
(models/layers.py), so `keras.models.load_model` reads the saved models on any backend.

Layout rule. The generator starts at h0 x w0 = H / 2**k x W / 2**k and upsamples k times with
stride-2 transposed convolutions. k is the largest number (at most MAX_UPSAMPLINGS) such that H
and W are both divisible by 2**k and the start is still at least MIN_START pixels on each side:
28x28 -> 7x7 (k=2), 32x32 -> 4x4 (k=3), 8x8 -> 4x4 (k=1), 64x64 -> 4x4 (k=4), 12x12 -> 3x3 (k=2).
Tiny even sizes whose half is below MIN_START (4x4, 4x6) fall back to k=1 (start 2x2). Sizes that
cannot be halved even once (odd H or W, or below 4) have no layout: a ValueError says so.
The discriminator mirrors it with max(k, 2) stride-2 convolutions, and sees the label twice: as an
extra input channel (embedding -> Dense(H*W) -> H x W x 1) and as a projection term on its features.
It has no BatchNorm (wgan_gp's per-sample gradient penalty relies on that: see training/losses.py).

The generator sees the label as an embedding concatenated to z, or with `model.class_bn: true`
through class-conditional BatchNorm (a gain and bias per class in every BatchNorm, SNGAN/BigGAN
style; z alone enters the dense layer). `model.embed_noise` adds Gaussian noise to that embedding
while training (NoisyTwins), so the classes' embeddings overlap and rare classes borrow variety.
`model.shared_lowres` makes the first layer (z -> the h0 x w0 map) class-agnostic: the embedding is
tiled over that map and concatenated to it, so only the upsamplings are conditional (UTLO/BAGAN).

`model.spectral_norm: true` spectrally normalises every discriminator layer with weights: the
convolutions, the label path (embedding and dense) and both parts of the projection head (its
dense and its class embedding, as Miyato & Koyama).
"""

from __future__ import annotations

import keras
from keras import layers

from ganpipe.config import ModelParams
from ganpipe.gan.models.layers import ClassBatchNorm, label_input, projection_logits, spectral

MIN_START = 3
MAX_UPSAMPLINGS = 5


def upsamplings(image_shape: tuple[int, int, int]) -> int:
    """The number k of stride-2 upsamplings for `image_shape` (see the module docstring)."""
    h, w, c = (int(d) for d in image_shape)
    if c < 1:
        raise ValueError(f"image shape {h}x{w}x{c}: needs at least one channel")
    k = 0
    while (
        k < MAX_UPSAMPLINGS
        and h % 2 ** (k + 1) == 0
        and w % 2 ** (k + 1) == 0
        and min(h, w) // 2 ** (k + 1) >= MIN_START
    ):
        k += 1
    if k == 0 and h % 2 == 0 and w % 2 == 0 and min(h, w) >= 4:
        k = 1  # 4x4-ish images: start from 2x2
    if k == 0:
        raise ValueError(
            f"image size {h}x{w} has no generator layout: height and width must both be even and "
            f"at least 4 (e.g. 8x8, 28x28, 32x32); resize the data (data.image_size)"
        )
    return k


def start_size(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """(k, h0, w0): the number of upsamplings and the size the generator starts from."""
    h, w, _ = (int(d) for d in image_shape)
    k = upsamplings(image_shape)
    return k, h // 2**k, w // 2**k


def build_generator(
    image_shape: tuple[int, int, int], num_classes: int, params: ModelParams
) -> keras.Model:
    """(z: N x latent_dim float, label: N int) -> N x H x W x C float32 in [-1, 1]."""
    c, f = int(image_shape[2]), params.filters
    k, h0, w0 = start_size(image_shape)
    z = keras.Input(shape=(params.latent_dim,), name="z")
    label = label_input()
    if params.class_bn:  # the class enters through every BatchNorm's gain and bias

        def norm(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
            return ClassBatchNorm(num_classes, name=name)([x, label])

        x = z
    else:

        def norm(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
            return layers.BatchNormalization(name=name)(x)

        e = layers.Embedding(num_classes, params.embed_dim, name="g_embed")(label)
        if params.embed_noise:  # active in training only: sampling sees the clean embedding
            e = layers.GaussianNoise(params.embed_noise, name="g_embed_noise")(e)
        x = z if params.shared_lowres else layers.Concatenate(name="g_concat")([z, e])
    x = layers.Dense(h0 * w0 * f, use_bias=False, name="g_dense")(x)
    x = layers.ReLU(name="g_dense_relu")(norm(x, "g_dense_bn"))
    x = layers.Reshape((h0, w0, f), name="g_reshape")(x)
    if params.shared_lowres:  # the class joins after the shared first layer, at every pixel
        e = layers.Reshape((1, 1, params.embed_dim), name="g_embed_pixel")(e)
        e = layers.UpSampling2D((h0, w0), name="g_embed_tile")(e)
        x = layers.Concatenate(name="g_concat")([x, e])
    for i in range(1, k):
        x = layers.Conv2DTranspose(
            max(f >> i, 8), 4, strides=2, padding="same", use_bias=False, name=f"g_up{i}"
        )(x)
        x = layers.ReLU(name=f"g_up{i}_relu")(norm(x, f"g_up{i}_bn"))
    # The last upsampling goes straight to C channels: cheap at full resolution.
    x = layers.Conv2DTranspose(c, 4, strides=2, padding="same", name=f"g_up{k}")(x)
    out = layers.Activation("tanh", dtype="float32", name="image")(x)
    return keras.Model([z, label], out, name="generator")


def build_discriminator(
    image_shape: tuple[int, int, int], num_classes: int, params: ModelParams
) -> keras.Model:
    """(image: N x H x W x C float in [-1, 1], label: N int) -> N x 1 logits (real > 0)."""
    h, w, c = (int(d) for d in image_shape)
    n_blocks = max(upsamplings(image_shape), 2)
    f = params.filters

    image = keras.Input(shape=(h, w, c), name="image")
    label = label_input()
    sn = params.spectral_norm
    e = spectral(layers.Embedding(num_classes, params.embed_dim, name="d_embed"), sn)(label)
    e = spectral(layers.Dense(h * w, name="d_label_map"), sn)(e)
    e = layers.Reshape((h, w, 1), name="d_label_reshape")(e)
    x = layers.Concatenate(name="d_concat")([image, e])
    for i in range(n_blocks):
        # No bias: TF's grappler fails (noisily, on stderr) to fuse Conv2D+BiasAdd+LeakyReLU in
        # the gradient graph; without the bias the graph is as fast and the log stays clean.
        x = spectral(
            layers.Conv2D(
                max(f >> (n_blocks - 1 - i), 8),
                4,
                strides=2,
                padding="same",
                use_bias=False,
                name=f"d_down{i + 1}",
            ),
            sn,
        )(x)
        x = layers.LeakyReLU(0.2, name=f"d_down{i + 1}_lrelu")(x)
    x = layers.Flatten(name="d_flatten")(x)
    # Projection: the label channel alone lets D ignore the label for hundreds of steps (samples
    # ignore their class); with the projection, samples match their labels within a few epochs.
    logits = projection_logits(x, label, num_classes, sn)
    return keras.Model([image, label], logits, name="discriminator")
