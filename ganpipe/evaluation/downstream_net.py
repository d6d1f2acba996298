"""The utility stage's downstream classifier: the network that answers "do the synthetic samples
help a classifier?".

Deliberately not the evaluator's architecture (`ganpipe.evaluation.domain_net`): the evaluator chooses
which synthetic samples augment keeps (its filters), so a classifier of the same architecture would
be judged by the network that picked its data. This one uses batch normalisation, one convolution
per block and a different head. Or the user brings their own `.keras` model (`utility.model_path`).

Inputs are images as float32 in [-1, 1] (`ganpipe.data.prepared.to_float`); outputs are class
logits (or probabilities, for a user model ending in a softmax: `outputs_probabilities`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import keras
from keras import layers

from ganpipe.errors import ConfigError

# Spatial side the trunk is average-pooled down to before Flatten, so the dense layer stays small
# for large images (64x64 -> 16x16 after the two blocks -> 8x8).
MAX_FLAT_SIDE = 8
AUGMENT_NAME = "classic_augmentation"


def build_downstream(image_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Two blocks of Conv(3x3, 32 then 64) -> BatchNorm -> ReLU -> MaxPool(2), dropout, Dense(128),
    dropout, Dense(num_classes) logits. Any H x W (8x8 up to 64x64 and beyond), 1 or 3 channels."""
    h, w, c = (int(s) for s in image_shape)
    inputs = keras.Input((h, w, c), name="image")
    x = inputs
    for filters in (32, 64):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)  # BN has the bias
        # momentum 0.9, not Keras's 0.99: a small dataset gives a few dozen steps per epoch, and
        # with 0.99 the moving statistics (used for validation) lag the weights for many epochs,
        # so the validation loss jumps about and early stopping stops on noise
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if max(h, w) > MAX_FLAT_SIDE:
        x = layers.AveragePooling2D(
            (math.ceil(h / MAX_FLAT_SIDE), math.ceil(w / MAX_FLAT_SIDE)), padding="same"
        )(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="downstream_classifier")


def build_resnet(image_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The second opinion: a small pre-activation ResNet. A 3x3 stem of 16 filters, then three
    stages of one residual block each (16, 32, 64 filters; the last two halve the side with a
    strided convolution and a 1x1 projection on the shortcut), BatchNorm -> ReLU, global average
    pooling, Dense(num_classes) logits. Unlike `build_downstream`: residual, deeper, no dropout,
    no dense hidden layer, global pooling, so the two fail in different ways."""
    h, w, c = (int(s) for s in image_shape)
    inputs = keras.Input((h, w, c), name="image")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        y = layers.BatchNormalization(momentum=0.9)(x)
        y = layers.ReLU()(y)
        shortcut = x
        if stride != 1 or x.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(y)
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization(momentum=0.9)(y)
        y = layers.ReLU()(y)
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
        x = layers.Add()([shortcut, y])
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="downstream_resnet")


def build_network(
    architecture: str,
    image_shape: tuple[int, int, int],
    num_classes: int,
    seed: int,
    augmentation: tuple[float, float] | None,
    model_path: str | None = None,
) -> keras.Model:
    """A freshly initialised classifier of `architecture`: "cnn" (`build_downstream`), "resnet"
    (`build_resnet`) or "user" (the `.keras` model at `model_path`, re-initialised), with the
    classic augmentation in front when `augmentation` is given."""
    if architecture == "user":
        if not model_path:
            raise ConfigError("utility: the user architecture needs utility.model_path")
        return fresh_network(load_user_model(model_path), image_shape, num_classes, seed,
                             augmentation)  # fmt: skip
    builders = {"cnn": build_downstream, "resnet": build_resnet}
    if architecture not in builders:
        raise ConfigError(f"utility: unknown architecture {architecture!r}")
    keras.utils.set_random_seed(seed)
    net = builders[architecture](image_shape, num_classes)
    return _with_augmentation(net, image_shape, seed, augmentation)


def classic_augmentation(shift: float, rotation_degrees: float, seed: int) -> keras.Sequential:
    """Random shifts (fraction of the size) and rotations (degrees), filling with -1 (black in
    [-1, 1]). Keras's random preprocessing layers transform only when called with training=True,
    so fit() sees augmented images and evaluate()/predict() the images as they are.

    Keras marks both layers `supports_jit = False` (TensorFlow's image transform has no XLA kernel),
    and one such layer turns the whole model's jit off: on TensorFlow fit still runs as a graph, but
    on JAX every step then runs op by op, which made a GPU training ~60 s instead of seconds. Their
    JAX code (an affine transform and a SeedGenerator that Keras threads through the jitted step)
    traces fine, so on JAX they are marked jittable."""
    augment = [
        layers.RandomTranslation(shift, shift, fill_mode="constant", fill_value=-1.0, seed=seed),
        layers.RandomRotation(
            rotation_degrees / 360.0, fill_mode="constant", fill_value=-1.0, seed=seed + 1
        ),
    ]
    if keras.backend.backend() == "jax":
        for layer in augment:
            layer.supports_jit = True
    return keras.Sequential(augment, name=AUGMENT_NAME)


def load_user_model(path: str | os.PathLike[str]) -> keras.Model:
    """The user's `.keras` classifier (safe_mode: no arbitrary code), uncompiled. ConfigError
    naming `utility.model_path` when it is missing or cannot be loaded."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"utility.model_path: {path}: not found")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # anything Keras raises for a bad file: one clear message
        raise ConfigError(
            f"utility.model_path: {path}: cannot load as a Keras model: {e}"
        ) from None


def check_fits(
    model: keras.Model, image_shape: tuple[int, int, int], num_classes: int, where: str
) -> None:
    """ConfigError unless `model` takes one H x W x C image input matching the data and returns
    one `num_classes`-wide output."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConfigError(f"{where}: the model must have one input and one output")
    got_in = tuple(model.inputs[0].shape[1:])
    want_in = tuple(int(s) for s in image_shape)
    if len(got_in) != 3 or any(
        g is not None and g != w for g, w in zip(got_in, want_in, strict=True)
    ):
        raise ConfigError(
            f"{where}: the model takes inputs of shape {got_in}, but the images are {want_in}"
        )
    got_out = tuple(model.outputs[0].shape[1:])
    if got_out != (num_classes,):
        raise ConfigError(
            f"{where}: the model outputs shape {got_out}, but the data has {num_classes} classes "
            f"(expected ({num_classes},))"
        )


def outputs_probabilities(model: keras.Model) -> bool:
    """Whether the model's last layer is a softmax (probabilities), so the loss must not apply
    one again; otherwise its outputs are taken as logits."""
    last = model.layers[-1]
    if isinstance(last, layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return activation is not None and getattr(activation, "__name__", "") == "softmax"


def fresh_network(
    template: keras.Model | None,
    image_shape: tuple[int, int, int],
    num_classes: int,
    seed: int,
    augmentation: tuple[float, float] | None = None,
) -> keras.Model:
    """A newly initialised classifier: `build_downstream`, or a clone of the user's `template`
    (`keras.models.clone_model` re-creates its layers with fresh weights, so every arm and seed
    starts from its own seeded initialisation rather than the file's trained weights). With
    `augmentation` = (shift, rotation degrees), `classic_augmentation` sits in front."""
    keras.utils.set_random_seed(seed)
    if template is None:
        net = build_downstream(image_shape, num_classes)
    else:
        net = keras.models.clone_model(template)
    return _with_augmentation(net, image_shape, seed, augmentation)


def _with_augmentation(
    net: keras.Model,
    image_shape: tuple[int, int, int],
    seed: int,
    augmentation: tuple[float, float] | None,
) -> keras.Model:
    if augmentation is None:
        return net
    inputs = keras.Input(tuple(int(s) for s in image_shape), name="image")
    x = classic_augmentation(*augmentation, seed=seed)(inputs)
    return keras.Model(inputs, net(x), name=f"{net.name}_classic")
