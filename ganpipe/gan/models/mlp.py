"""The dense (MLP) GAN of the seed articles, trained right and conditioned: `model.arch: mlp` and
`mlp_convd`.

The articles' layers, for 28x28x1 MNIST:
  G: Dense(128) LeakyReLU BatchNorm -> Dense(784, tanh) -> Reshape(28, 28, 1)
  D (mlp): Flatten -> Dense(128) LeakyReLU -> Dense(1)
  D (mlp_convd): Conv2D(64, 5, stride 2) LeakyReLU -> Conv2D(128, 5, stride 2) LeakyReLU
                 -> Flatten -> Dense(1)
As printed, that code cannot learn: its discriminator is only ever shown fakes, and the generator
is `fit` on the training images as if it were a classifier. Here the trainer does what a GAN
needs (D on real and fake batches, G through D: training/losses.py), and the models take labels
like every other architecture: the generator gets z concatenated with a label embedding, the
discriminator adds a projection term (dense(h) + <embed(label), h> on its last hidden features,
models/layers.py). The output layer is sized from the data (H * W * C), so the models build for
any shape; the widths are the articles'. LeakyReLU slope 0.2 (the articles leave Keras's default
unstated). `model.spectral_norm` normalises every D layer with weights; `filters` and `class_bn`
do not apply. No BatchNorm in D (wgan_gp relies on that: training/losses.py).
"""

from __future__ import annotations

import keras
from keras import layers

from ganpipe.config import ModelParams
from ganpipe.gan.models.layers import label_input, projection_logits, spectral

HIDDEN = 128
CONV_FILTERS = (64, 128)


def build_generator(
    image_shape: tuple[int, int, int], num_classes: int, params: ModelParams
) -> keras.Model:
    """(z: N x latent_dim float, label: N int) -> N x H x W x C float32 in [-1, 1]."""
    h, w, c = (int(d) for d in image_shape)
    z = keras.Input(shape=(params.latent_dim,), name="z")
    label = label_input()
    e = layers.Embedding(num_classes, params.embed_dim, name="g_embed")(label)
    x = layers.Concatenate(name="g_concat")([z, e])
    x = layers.Dense(HIDDEN, name="g_dense")(x)
    x = layers.LeakyReLU(0.2, name="g_dense_lrelu")(x)
    x = layers.BatchNormalization(name="g_dense_bn")(x)
    x = layers.Dense(h * w * c, name="g_out")(x)
    x = layers.Activation("tanh", dtype="float32", name="g_tanh")(x)
    out = layers.Reshape((h, w, c), dtype="float32", name="image")(x)
    return keras.Model([z, label], out, name="generator")


def build_discriminator(
    image_shape: tuple[int, int, int],
    num_classes: int,
    params: ModelParams,
    convolutional: bool = False,
) -> keras.Model:
    """(image: N x H x W x C float in [-1, 1], label: N int) -> N x 1 logits (real > 0); dense
    hidden layer, or with `convolutional` two 5x5 stride-2 convolutions (mlp_convd)."""
    sn = params.spectral_norm
    image = keras.Input(shape=tuple(int(d) for d in image_shape), name="image")
    label = label_input()
    x = image
    if convolutional:
        for i, filters in enumerate(CONV_FILTERS, start=1):
            conv = layers.Conv2D(filters, 5, strides=2, padding="same", name=f"d_conv{i}")
            x = layers.LeakyReLU(0.2, name=f"d_conv{i}_lrelu")(spectral(conv, sn)(x))
        x = layers.Flatten(name="d_flatten")(x)
    else:
        x = layers.Flatten(name="d_flatten")(x)
        x = spectral(layers.Dense(HIDDEN, name="d_hidden"), sn)(x)
        x = layers.LeakyReLU(0.2, name="d_hidden_lrelu")(x)
    logits = projection_logits(x, label, num_classes, sn)
    return keras.Model([image, label], logits, name="discriminator")


def build_convd_discriminator(
    image_shape: tuple[int, int, int], num_classes: int, params: ModelParams
) -> keras.Model:
    """mlp_convd's discriminator."""
    return build_discriminator(image_shape, num_classes, params, convolutional=True)
