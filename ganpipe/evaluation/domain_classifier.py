"""The evaluator: the domain classifier that judges every generator of a dataset, in one place.

A small CNN (`ganpipe.evaluation.domain_net.build_classifier`) trained on the prepared real training
split. Its penultimate layer ("features") plays the role of Inception's pool3 for the Fréchet and
kernel distances; its logits give the conditional accuracy, the classifier score and the off-label
filter (`accept_mask`). The classifier stage trains it, and augment, evaluate and the utility stage
load it from the cache in `<cache_dir>/` (classifier.keras + meta.json).

The cache key holds the prepared data's content hash, the classifier params and a fingerprint of
the code that builds and trains the network (`ganpipe.registry.EVALUATOR_CODE`), so the network is retrained exactly when one
of those changes: an evaluator trained by other code is never reused.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ganpipe.config import EvaluateParams
from ganpipe.data.prepared import Prepared, load_prepared, to_float
from ganpipe.data.sampling import is_imbalanced
from ganpipe.errors import DataError
from ganpipe.evaluation.domain_net import build_classifier, feature_extractor
from ganpipe.evaluation.metrics.features import extract
from ganpipe.io import atomic_path, keras_file_damage, read_json, write_json
from ganpipe.keys import source_fingerprint
from ganpipe.registry import EVALUATOR_CODE

log = logging.getLogger(__name__)

MODEL_FILE = "classifier.keras"
META_FILE = "meta.json"
LEARNING_RATE = 1e-3


def new_classifier(image_shape: tuple[int, int, int], num_classes: int, seed: int) -> keras.Model:
    """A seeded, compiled `build_classifier` network: the one training recipe (Adam at
    LEARNING_RATE, cross-entropy on logits) for the evaluator (and benchmarks' reference judges)."""
    keras.utils.set_random_seed(seed)
    model = build_classifier(image_shape, num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


@dataclass
class Evaluator:
    """The trained domain classifier and its meta.json (cache key, accuracies, training stamp)."""

    model: keras.Model
    meta: dict[str, Any]

    @cached_property
    def extractor(self) -> keras.Model:
        """Two outputs over the same weights: [features (N x 128), logits (N x num_classes)]."""
        return feature_extractor(self.model)

    def features(self, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(features, softmax probabilities) of uint8 `images`."""
        return extract(self.extractor, images, batch_size)

    def accuracy(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of uint8 `images` assigned their label."""
        return classifier_accuracy(self.model, images, labels)


def classifier_accuracy(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of uint8 `images` a `build_classifier` model labels correctly."""
    _, probs = extract(feature_extractor(model), images)
    return float(np.mean(probs.argmax(axis=1) == labels))


def cache_key(prepared: Prepared, params: EvaluateParams) -> dict[str, Any]:
    """What the cached network depends on: the data version, its params, the code."""
    return {
        "content_hash": prepared.content_hash,
        "image_shape": list(prepared.image_shape),
        "num_classes": prepared.num_classes,
        "classifier_epochs": params.classifier_epochs,
        "classifier_batch_size": params.classifier_batch_size,
        "seed": params.seed,
        "code": source_fingerprint(*EVALUATOR_CODE),
    }


# Not downstream.class_weights_mean_over_images: these average 1 over the classes, not the images.
def class_weights_mean_over_classes(
    labels: np.ndarray, num_classes: int
) -> dict[int, float] | None:
    """Inverse-frequency class weights, normalised to mean 1 over the classes present, when the
    classes are imbalanced (`ganpipe.data.sampling.is_imbalanced`); None otherwise.

    On a long tail (1,000 images of some classes, 20 of others) an unweighted classifier learns
    that the rare classes hardly ever occur and assigns few images to them, generated or real: it
    would then judge a generator's rare classes by its own prior, not by the images."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    present = np.flatnonzero(counts)
    if not is_imbalanced(counts):
        return None
    inverse = 1.0 / counts[present]
    weights = inverse / inverse.mean()
    return {int(c): float(w) for c, w in zip(present, weights, strict=True)}


def _train(prepared: Prepared, params: EvaluateParams) -> tuple[keras.Model, dict[str, Any]]:
    """Train a fresh classifier on the real training split; (model, training history summary,
    with `class_weighted` saying whether `class_weights_mean_over_classes` applied)."""
    model = new_classifier(prepared.image_shape, prepared.num_classes, params.seed)
    weights = class_weights_mean_over_classes(prepared.train.labels, prepared.num_classes)
    # Balanced data passes no class_weight at all, so it trains exactly as it always has.
    extra = {} if weights is None else {"class_weight": weights}
    history = model.fit(
        to_float(prepared.train.images),
        prepared.train.labels,
        epochs=params.classifier_epochs,
        batch_size=params.classifier_batch_size,
        shuffle=True,
        verbose=0,
        **extra,
    )
    summary = {k: float(v[-1]) for k, v in history.history.items()}
    return model, {**summary, "class_weighted": weights is not None}


def _load_cached(cache: Path, key: dict[str, Any], rebuild_damaged: bool) -> Evaluator | None:
    """The cached evaluator when its meta.json records `key`; None to train one (nothing cached,
    another key, or a damaged file with `rebuild_damaged`). A damaged file without it: DataError."""
    model_path, meta_path = cache / MODEL_FILE, cache / META_FILE
    if not (model_path.exists() and meta_path.exists()):
        return None
    try:
        meta = read_json(meta_path)
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        return _damaged(meta_path, f"not readable JSON: {e}", rebuild_damaged)
    if meta.get("key") != key:
        log.info("%s: cache key changed; retraining the classifier", meta_path)
        return None
    try:
        model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    except Exception as e:  # noqa: BLE001 - Keras raises many types for a damaged file
        return _damaged(model_path, keras_file_damage(model_path, e), rebuild_damaged)
    return Evaluator(model, meta)


def _damaged(path: Path, reason: str, rebuild: bool) -> None:
    """A damaged cache file: a warning and a retrain when `rebuild` (the classifier stage, whose
    output it is), else a DataError (the stages that only read the evaluator: under DVC they must
    not write the classifier stage's output)."""
    if rebuild:
        log.warning("%s is damaged (%s); training the classifier again", path, reason)
        return None
    raise DataError(f"{path} is damaged ({reason}); run `ganpipe classifier` to rebuild it")


def get_evaluator(
    data_dir: str | os.PathLike[str],
    params: EvaluateParams,
    cache_dir: str | os.PathLike[str] = "evaluator",
    rebuild_damaged: bool = False,
) -> Evaluator:
    """The domain classifier for the prepared data in `data_dir`.

    Loads `<cache_dir>/classifier.keras` when `<cache_dir>/meta.json` records the same cache key;
    otherwise trains one (`new_classifier`, params.classifier_epochs / classifier_batch_size),
    measures its accuracy on the real test split, and saves model then meta atomically (meta last,
    so a meta.json always describes the model beside it). A damaged cached file is a DataError
    saying to run `ganpipe classifier`; with `rebuild_damaged` (what that stage passes) it is a
    warning and the classifier is trained again.
    """
    prepared = load_prepared(data_dir)
    cache = Path(cache_dir)
    key = cache_key(prepared, params)
    cached = _load_cached(cache, key, rebuild_damaged)
    if cached is not None:
        return cached

    t0 = time.perf_counter()
    model, history = _train(prepared, params)
    seconds = time.perf_counter() - t0
    meta = {
        "key": key,
        "test_accuracy": classifier_accuracy(model, prepared.test.images, prepared.test.labels),
        "train_accuracy": classifier_accuracy(model, prepared.train.images, prepared.train.labels),
        "final_loss": history.get("loss"),
        "class_weighted": history["class_weighted"],
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
    return Evaluator(model, meta)


# ---- the off-label filter: pure functions over the evaluator's probabilities ------------------------
# A conditional generator sometimes draws a sample that looks like another class (a "4" asked for,
# a "9" drawn); added with the asked-for label it is label noise. The augment stage
# (augment.reject_off_label, ganpipe.evaluation.filters) keeps a sample only when the evaluator predicts its
# conditioning label with at least `min_confidence` probability.


def accept_mask(probs: np.ndarray, labels: np.ndarray, min_confidence: float = 0.0) -> np.ndarray:
    """Bool mask over samples: the arg-max class is the label and its probability is at least
    `min_confidence`. `probs`: N x K softmax outputs; `labels`: N conditioning labels."""
    probs = np.asarray(probs)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or len(probs) != len(labels):
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} do not match")
    on_label = probs[np.arange(len(labels)), labels]
    return (probs.argmax(axis=1) == labels) & (on_label >= min_confidence)
