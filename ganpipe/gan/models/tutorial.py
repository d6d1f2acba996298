"""The TensorFlow DCGAN tutorial's generator and discriminator, with a minimal label input.

`model.arch: dcgan_tutorial`. The layers are the tutorial's (tensorflow.org/tutorials/generative/dcgan)
for 28x28x1 images, so its throughput and behaviour can be compared with ours:

  G: Dense(7*7*256, no bias) BN LeakyReLU -> Reshape(7, 7, 256)
     -> Conv2DTranspose(128, 5, stride 1, same, no bias) BN LeakyReLU
     -> Conv2DTranspose(64, 5, stride 2, same, no bias) BN LeakyReLU
     -> Conv2DTranspose(1, 5, stride 2, same, no bias, tanh)
  D: Conv2D(64, 5, stride 2, same) LeakyReLU Dropout(0.3)
     -> Conv2D(128, 5, stride 2, same) LeakyReLU Dropout(0.3) -> Flatten -> Dense(1)

Minimal conditioning, so the models fit the pipeline's (z, label) / (image, label) interface:
the generator's input is z concatenated with Embedding(num_classes, embed_dim)(label); the
discriminator's input is the image plus one label plane (Embedding(num_classes, 28*28) reshaped to
28x28x1) as a second channel. Nothing else: no projection term, so the discriminator can (and early
in training does) ignore the label, and samples follow their class less reliably than with
`arch: conditional`. `model.filters` does not apply.

Built-in layers only; the last layer of each model computes in float32 under a mixed policy.
`model.spectral_norm: true` wraps D's two convolutions and its Dense in SpectralNormalization (not
the label plane's Embedding). No BatchNorm in D (see training/losses.py on wgan_gp).
"""

from __future__ import annotations

import keras
from keras import layers

from ganpipe.config import ModelParams
from ganpipe.gan.models.layers import spectral

SHAPE = (28, 28, 1)


def check_shape(image_shape: tuple[int, int, int]) -> None:
    """ValueError unless `image_shape` is the tutorial's 28x28x1."""
    if tuple(int(d) for d in image_shape) != SHAPE:
        h, w, c = image_shape
        raise ValueError(
            f"the dcgan_tutorial architecture is for 28x28x1 images only (got {h}x{w}x{c}); "
            "use model.arch: conditional, or data.image_size: 28 with grayscale data"
        )


def build_generator(
    image_shape: tuple[int, int, int], num_classes: int, params: ModelParams
) -> keras.Model:
    """(z: N x latent_dim float, label: N int) -> N x 28 x 28 x 1 float32 in [-1, 1]."""
    check_shape(image_shape)
    z = keras.Input(shape=(params.latent_dim,), name="z")
    label = keras.Input(shape=(), dtype="int32", name="label")
    e = layers.Embedding(num_classes, params.embed_dim, name="g_embed")(label)
    x = layers.Concatenate(name="g_concat")([z, e])
    x = layers.Dense(7 * 7 * 256, use_bias=False, name="g_dense")(x)
    x = layers.BatchNormalization(name="g_dense_bn")(x)
    x = layers.LeakyReLU(name="g_dense_lrelu")(x)
    x = layers.Reshape((7, 7, 256), name="g_reshape")(x)
    for i, (filters, stride) in enumerate([(128, 1), (64, 2)], start=1):
        x = layers.Conv2DTranspose(
            filters, 5, strides=stride, padding="same", use_bias=False, name=f"g_up{i}"
        )(x)
        x = layers.BatchNormalization(name=f"g_up{i}_bn")(x)
        x = layers.LeakyReLU(name=f"g_up{i}_lrelu")(x)
    out = layers.Conv2DTranspose(
        1, 5, strides=2, padding="same", use_bias=False, activation="tanh", dtype="float32",
        name="image",
    )(x)  # fmt: skip
    return keras.Model([z, label], out, name="generator")


def build_discriminator(
    image_shape: tuple[int, int, int], num_classes: int, params: ModelParams
) -> keras.Model:
    """(image: N x 28 x 28 x 1 float in [-1, 1], label: N int) -> N x 1 logits (real > 0)."""
    check_shape(image_shape)
    h, w, _ = SHAPE
    image = keras.Input(shape=SHAPE, name="image")
    label = keras.Input(shape=(), dtype="int32", name="label")
    plane = layers.Embedding(num_classes, h * w, name="d_label_plane")(label)
    plane = layers.Reshape((h, w, 1), name="d_label_reshape")(plane)
    x = layers.Concatenate(name="d_concat")([image, plane])
    for i, filters in enumerate([64, 128], start=1):
        x = spectral(
            layers.Conv2D(filters, 5, strides=2, padding="same", name=f"d_down{i}"),
            params.spectral_norm,
        )(x)
        x = layers.LeakyReLU(name=f"d_down{i}_lrelu")(x)
        x = layers.Dropout(0.3, name=f"d_down{i}_dropout")(x)
    x = layers.Flatten(name="d_flatten")(x)
    logits = spectral(layers.Dense(1, dtype="float32", name="logits"), params.spectral_norm)(x)
    return keras.Model([image, label], logits, name="discriminator")
