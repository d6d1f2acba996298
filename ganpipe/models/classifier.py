"""The domain classifier that judges every generator of a dataset, trained once and cached.

A small CNN trained on the prepared real training split. Its penultimate Dense layer ("features")
plays the role of Inception's pool3 for the Fréchet / kernel distances; its logits give the
conditional accuracy and the classifier score. The cache in `<cache_dir>/` (classifier.keras +
meta.json) is keyed by the prepared data's content hash, the classifier params and ARCH_VERSION,
so the network is retrained only when one of those changes.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from ganpipe.config import EvaluateParams
from ganpipe.data.prepared import Prepared, load_prepared, to_float
from ganpipe.io import atomic_path, read_json, write_json
from ganpipe.metrics.features import extract

log = logging.getLogger(__name__)

# Bump whenever build_classifier or the training recipe changes: it invalidates every cache.
ARCH_VERSION = 1
FEATURES_LAYER = "features"
MODEL_FILE = "classifier.keras"
META_FILE = "meta.json"
LEARNING_RATE = 1e-3
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


def accuracy(classifier: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of uint8 `images` the classifier labels correctly."""
    _, probs = extract(feature_extractor(classifier), images)
    return float(np.mean(probs.argmax(axis=1) == labels))


def cache_key(prepared: Prepared, params: EvaluateParams) -> dict[str, Any]:
    """What the cached network depends on: the data version, its params, the architecture."""
    return {
        "content_hash": prepared.content_hash,
        "image_shape": list(prepared.image_shape),
        "num_classes": prepared.num_classes,
        "classifier_epochs": params.classifier_epochs,
        "classifier_batch_size": params.classifier_batch_size,
        "seed": params.seed,
        "arch_version": ARCH_VERSION,
    }


def _train(prepared: Prepared, params: EvaluateParams) -> tuple[keras.Model, dict[str, Any]]:
    """Train a fresh classifier on the real training split; (model, training history summary)."""
    keras.utils.set_random_seed(params.seed)
    model = build_classifier(prepared.image_shape, prepared.num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(
        to_float(prepared.train.images),
        prepared.train.labels,
        epochs=params.classifier_epochs,
        batch_size=params.classifier_batch_size,
        shuffle=True,
        verbose=0,
    )
    return model, {k: float(v[-1]) for k, v in history.history.items()}


def _load_cached(cache: Path, key: dict[str, Any]) -> tuple[keras.Model, dict[str, Any]] | None:
    model_path, meta_path = cache / MODEL_FILE, cache / META_FILE
    if not (model_path.exists() and meta_path.exists()):
        return None
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); retraining the classifier", meta_path, e)
        return None
    if meta.get("key") != key:
        log.info("%s: cache key changed; retraining the classifier", meta_path)
        return None
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as e:  # a damaged file is a cache miss, not a failure
        log.warning("%s: cannot load (%s); retraining the classifier", model_path, e)
        return None
    return model, meta


def get_classifier(
    data_dir: str | os.PathLike[str],
    params: EvaluateParams,
    cache_dir: str | os.PathLike[str] = "evaluator",
) -> tuple[keras.Model, dict[str, Any]]:
    """The domain classifier for the prepared data in `data_dir`, and its meta.json contents.

    Loads `<cache_dir>/classifier.keras` when `<cache_dir>/meta.json` records the same cache key;
    otherwise trains one (Adam, params.classifier_epochs / classifier_batch_size, seeded), measures
    its accuracy on the real test split, and saves model then meta atomically (meta last, so a
    meta.json always describes the model beside it).
    """
    prepared = load_prepared(data_dir)
    cache = Path(cache_dir)
    key = cache_key(prepared, params)
    cached = _load_cached(cache, key)
    if cached is not None:
        return cached

    t0 = time.perf_counter()
    model, history = _train(prepared, params)
    seconds = time.perf_counter() - t0
    test_acc = accuracy(model, prepared.test.images, prepared.test.labels)
    meta = {
        "key": key,
        "test_accuracy": test_acc,
        "train_accuracy": accuracy(model, prepared.train.images, prepared.train.labels),
        "final_loss": history.get("loss"),
        "num_train": len(prepared.train),
        "num_test": len(prepared.test),
        "class_names": prepared.class_names,
        "train_seconds": round(seconds, 2),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "keras_version": keras.__version__,
    }
    (cache / META_FILE).unlink(missing_ok=True)  # no meta means no valid cache while we write
    with atomic_path(cache / MODEL_FILE, suffix=".keras") as tmp, warnings.catch_warnings():
        # Keras's own np.array(variable) on NumPy 2; harmless, and not ours to fix
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        model.save(tmp)
    write_json(cache / META_FILE, meta)
    return model, meta
