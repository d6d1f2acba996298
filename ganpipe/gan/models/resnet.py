"""SNGAN's residual generator and discriminator (Miyato et al. 2018; Miyato & Koyama 2018), scaled
to the data's shape: `model.arch: resnet`.

Generator: z -> Dense(h0 * w0 * f) -> k up-blocks -> BatchNorm ReLU Conv3x3(C) tanh, with h0, w0
and k from the DCGAN layout rule (dcgan.upsamplings: 32x32 and 64x64 start at 4x4 like SNGAN's
CIFAR and STL models; 28x28 at 7x7; 8x8 at 4x4). An up-block is
  main: ClassBatchNorm ReLU Upsample(nearest) Conv3x3 ClassBatchNorm ReLU Conv3x3
  skip: Upsample(nearest) Conv1x1
so the class enters through every BatchNorm's per-class gain and bias (models/layers.py).
Widths: f (model.filters) at the start, halving after each block (not below MIN_WIDTH), where
SNGAN keeps 256 at every resolution: on CPU the full-resolution 3x3 convolutions dominate the
step, and halving keeps their cost near the DCGAN's.

Discriminator: max(k, 1) down-blocks then one block at the final resolution, ReLU, global mean
pooling, and the projection head (dense(h) + <embed(label), h>). The first block is SNGAN's
"optimized" one (Conv3x3 ReLU Conv3x3 AvgPool; skip AvgPool Conv1x1), the others
  main: ReLU Conv3x3 ReLU Conv3x3 [AvgPool]
  skip: Conv1x1 [AvgPool] (identity when neither size nor width changes)
with widths mirroring the generator's, and SNGAN's global sum pooling. `model.spectral_norm`
normalises every layer with weights, the projection's class embedding included (SNGAN trains this
model with it on). No BatchNorm in D (wgan_gp relies on that: training/losses.py).
"""

from __future__ import annotations

import keras
from keras import layers

from ganpipe.config import ModelParams
from ganpipe.gan.models.dcgan import start_size, upsamplings
from ganpipe.gan.models.layers import ClassBatchNorm, label_input, projection_logits, spectral

MIN_WIDTH = 16


def widths(image_shape: tuple[int, int, int], filters: int) -> list[int]:
    """The generator's width after each up-block (the discriminator's before each down-block, in
    reverse)."""
    k = upsamplings(image_shape)
    return [max(filters >> (i + 1), MIN_WIDTH) for i in range(k)]


def build_generator(
    image_shape: tuple[int, int, int], num_classes: int, params: ModelParams
) -> keras.Model:
    """(z: N x latent_dim float, label: N int) -> N x H x W x C float32 in [-1, 1]."""
    c, f = int(image_shape[2]), params.filters
    _, h0, w0 = start_size(image_shape)
    z = keras.Input(shape=(params.latent_dim,), name="z")
    label = label_input()
    x = layers.Dense(h0 * w0 * f, name="g_dense")(z)
    x = layers.Reshape((h0, w0, f), name="g_reshape")(x)
    for i, width in enumerate(widths(image_shape, f), start=1):
        name = f"g_block{i}"
        main = ClassBatchNorm(num_classes, name=f"{name}_bn1")([x, label])
        main = layers.ReLU(name=f"{name}_relu1")(main)
        main = layers.UpSampling2D(2, name=f"{name}_up")(main)
        main = layers.Conv2D(width, 3, padding="same", name=f"{name}_conv1")(main)
        main = ClassBatchNorm(num_classes, name=f"{name}_bn2")([main, label])
        main = layers.ReLU(name=f"{name}_relu2")(main)
        main = layers.Conv2D(width, 3, padding="same", name=f"{name}_conv2")(main)
        skip = layers.UpSampling2D(2, name=f"{name}_skip_up")(x)
        skip = layers.Conv2D(width, 1, name=f"{name}_skip_conv")(skip)
        x = layers.Add(name=f"{name}_add")([main, skip])
    x = layers.BatchNormalization(name="g_out_bn")(x)
    x = layers.ReLU(name="g_out_relu")(x)
    x = layers.Conv2D(c, 3, padding="same", name="g_out_conv")(x)
    out = layers.Activation("tanh", dtype="float32", name="image")(x)
    return keras.Model([z, label], out, name="generator")


def build_discriminator(
    image_shape: tuple[int, int, int], num_classes: int, params: ModelParams
) -> keras.Model:
    """(image: N x H x W x C float in [-1, 1], label: N int) -> N x 1 logits (real > 0)."""
    h, w, c = (int(d) for d in image_shape)
    sn = params.spectral_norm
    g_widths = widths(image_shape, params.filters)
    # Down-blocks mirror the generator's up-blocks (at least one), then one more at the end.
    down = list(reversed(g_widths[:-1])) + [params.filters]
    plan = [(width, True) for width in down] + [(params.filters, False)]

    def conv(width: int, size: int, name: str) -> layers.Layer:
        # No bias, as in dcgan.py: TF's grappler fails (noisily, on stderr) to fuse a biased
        # convolution with the residual Add and ReLU in the gradient graph.
        return spectral(layers.Conv2D(width, size, padding="same", use_bias=False, name=name), sn)

    image = keras.Input(shape=(h, w, c), name="image")
    label = label_input()
    x = image
    x_size = (h >> len(down)) * (w >> len(down))  # the final feature map's pixels
    for i, (width, downsample) in enumerate(plan, start=1):
        name = f"d_block{i}"
        main = x if i == 1 else layers.ReLU(name=f"{name}_relu1")(x)
        main = conv(width, 3, f"{name}_conv1")(main)
        main = layers.ReLU(name=f"{name}_relu2")(main)
        main = conv(width, 3, f"{name}_conv2")(main)
        skip = x
        if i == 1:  # SNGAN's optimized first block: pool, then the 1x1 convolution
            skip = layers.AveragePooling2D(2, name=f"{name}_skip_pool")(skip)
            skip = conv(width, 1, f"{name}_skip_conv")(skip)
        elif downsample or x.shape[-1] != width:
            skip = conv(width, 1, f"{name}_skip_conv")(skip)
            if downsample:
                skip = layers.AveragePooling2D(2, name=f"{name}_skip_pool")(skip)
        if downsample:
            main = layers.AveragePooling2D(2, name=f"{name}_pool")(main)
        x = layers.Add(name=f"{name}_add")([main, skip])
    x = layers.ReLU(name="d_out_relu")(x)
    # Sum pooling, as SNGAN: with every layer spectrally normalised, D cannot scale its weights up
    # to undo a mean's 1 / (h x w), and its logits (and G's gradients) would stay that much smaller.
    x = layers.GlobalAveragePooling2D(name="d_pool")(x)
    x = layers.Rescaling(float(x_size), name="d_pool_sum")(x)
    logits = projection_logits(x, label, num_classes, sn)
    return keras.Model([image, label], logits, name="discriminator")
