"""The domain classifier's network: a small CNN with a named "features" layer.

Built here, trained and cached by `ganpipe.evaluation.domain_classifier` (the evaluator). The utility stage's
downstream classifier is deliberately another network (`ganpipe.evaluation.downstream_net`).
"""

from __future__ import annotations

import math

import keras
from keras import layers

FEATURES_LAYER = "features"
# Spatial size the convolutional trunk is pooled down to before Flatten (bounds the Dense size).
MAX_FLAT_SIDE = 8


def build_classifier(image_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Two conv blocks, Dense(128, name="features"), Dense(num_classes) logits. Input: float
    images in [-1, 1] (`to_float`). Built-in layers only, so the .keras file loads as is."""
    h, w, c = (int(s) for s in image_shape)
    inputs = keras.Input((h, w, c), name="image")
    x = inputs
    for filters in (32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    if max(h, w) > MAX_FLAT_SIDE:  # large images: average down so Flatten stays small
        pool = (math.ceil(h / MAX_FLAT_SIDE), math.ceil(w / MAX_FLAT_SIDE))
        x = layers.AveragePooling2D(pool, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.25)(x)
    x = layers.Dense(128, activation="relu", name=FEATURES_LAYER)(x)
    x = layers.Dropout(0.25)(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="domain_classifier")


def feature_extractor(classifier: keras.Model) -> keras.Model:
    """The same weights, with two outputs: [features (N x 128), logits (N x num_classes)]."""
    return keras.Model(
        classifier.inputs[0],
        [classifier.get_layer(FEATURES_LAYER).output, classifier.outputs[0]],
        name="classifier_features",
    )
