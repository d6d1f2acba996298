"""Stage `evaluate`: score the synthetic samples with the cached domain classifier.

One feature pass per image set (real train subsample, real test, synthetic subsample), then every
registered metric over those arrays. Writes `<out_dir>/eval.json` (the headline numbers, for
`dvc metrics show`) and `<out_dir>/per_class.csv`.

Headline metrics:
  classifier_fd            Fréchet distance, synthetic vs real train, in the classifier's features
  classifier_fd_floor      the same for real test vs real train: what a perfect generator scores
                           (at the test set's sample size; the distance is biased by sample size)
  kid_mean, kid_std        kernel distance (unbiased MMD^2, cubic kernel), synthetic vs real train
  conditional_accuracy     how often the classifier assigns a sample the label it was generated for
  classifier_score         exp(E KL(p(y|x) || p(y))) over synthetic samples; 1..num_classes
  evaluator_test_accuracy  the classifier's accuracy on the real test set (sanity check)
  num_synthetic            synthetic samples evaluated (after the max_samples cap)
"""

from __future__ import annotations

import csv
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.config import EvaluateParams
from ganpipe.data.prepared import Split, load_prepared, load_split
from ganpipe.errors import DataError
from ganpipe.io import atomic_path, write_json
from ganpipe.metrics import MetricInputs, compute_metrics, feature_set, per_class_table
from ganpipe.tracking import NULL_TRACKER, Tracker

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.npz"
PER_CLASS_COLUMNS = (
    "class",
    "class_name",
    "n_synthetic",
    "n_real",
    "conditional_accuracy",
    "classifier_fd",
)
EXTRACT_BATCH = 256
# Below this the classifier is too weak for its features and predictions to mean much.
MIN_EVALUATOR_ACCURACY = 0.5


def stratified_subsample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `n` samples (all if fewer) keeping each class's share of `labels`.

    Quotas are floor(n * share), the remainder going to the largest fractional parts; within a
    class the samples are drawn uniformly without replacement.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / counts.sum()
    quota = np.floor(exact).astype(int)
    short = n - quota.sum()
    quota[np.argsort(-(exact - quota), kind="stable")[:short]] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), q, replace=False)
        for c, q in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def load_synthetic(
    synthetic_dir: str | os.PathLike[str], image_shape: tuple[int, ...], num_classes: int
) -> Split:
    """The generated samples, checked against the prepared data; DataError says what to run."""
    path = Path(synthetic_dir) / SAMPLES_FILE
    if not path.exists():
        raise DataError(f"{path}: synthetic samples not found (run `ganpipe generate` first)")
    try:
        split = load_split(path)
    except DataError as e:
        raise DataError(f"{e} -- regenerate it with `ganpipe generate`") from None
    if tuple(split.images.shape[1:]) != tuple(image_shape):
        raise DataError(
            f"{path}: synthetic images are {'x'.join(map(str, split.images.shape[1:]))} but the "
            f"prepared data is {'x'.join(map(str, image_shape))}; the generator was trained on "
            "other data (run `ganpipe train` and `ganpipe generate` again)"
        )
    if len(split) < 2:
        raise DataError(f"{path}: {len(split)} synthetic samples; need at least 2")
    bad = (split.labels < 0) | (split.labels >= num_classes)
    if bad.any():
        raise DataError(
            f"{path}: labels must be in 0..{num_classes - 1}, found {int(split.labels[bad][0])} "
            "(run `ganpipe generate` again)"
        )
    return split


def _subset(split: Split, n: int, rng: np.random.Generator) -> Split:
    idx = stratified_subsample(split.labels, n, rng)
    return Split(split.images[idx], split.labels[idx])


def _write_per_class(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=PER_CLASS_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        k: ("" if isinstance(v, float) and math.isnan(v) else v)
                        for k, v in row.items()
                    }
                )


def evaluate(
    params: EvaluateParams,
    data_dir: str | os.PathLike[str],
    synthetic_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] = "metrics",
    cache_dir: str | os.PathLike[str] = "evaluator",
    tracker: Tracker | None = None,
) -> dict[str, Any]:
    """Score `<synthetic_dir>/samples.npz` against the prepared data in `data_dir`.

    Writes `<out_dir>/eval.json` and `<out_dir>/per_class.csv`, logs both to `tracker`, and returns
    the headline metrics (a flat dict of floats, plus the int num_synthetic).
    """
    from ganpipe.models.classifier import feature_extractor, get_classifier

    tracker = tracker or NULL_TRACKER
    prepared = load_prepared(data_dir)
    for name, split in (("train", prepared.train), ("test", prepared.test)):
        if len(split) < 2:
            raise DataError(
                f"{data_dir}/{name}.npz: {len(split)} images; evaluation needs at least 2 "
                "(run `ganpipe prepare` with more data)"
            )
    synthetic = load_synthetic(synthetic_dir, prepared.image_shape, prepared.num_classes)

    classifier, meta = get_classifier(data_dir, params, cache_dir)
    if meta.get("test_accuracy", 1.0) < MIN_EVALUATOR_ACCURACY:
        warnings.warn(
            f"the evaluator classifier reaches only {meta['test_accuracy']:.1%} on the real test "
            "set; its distances and accuracies say little (raise evaluate.classifier_epochs)",
            stacklevel=2,
        )
    extractor = feature_extractor(classifier)

    rng = np.random.default_rng(params.seed)
    sets = {
        "real": _subset(prepared.train, params.max_samples, rng),
        "real_test": _subset(prepared.test, params.max_samples, rng),
        "synthetic": _subset(synthetic, params.max_samples, rng),
    }
    feats = {
        name: feature_set(extractor, s.images, s.labels, EXTRACT_BATCH) for name, s in sets.items()
    }
    inputs = MetricInputs(
        synthetic=feats["synthetic"],
        real=feats["real"],
        real_test=feats["real_test"],
        kid_subsets=params.kid_subsets,
        kid_subset_size=params.kid_subset_size,
        seed=params.seed,
    )
    headline: dict[str, Any] = {k: float(v) for k, v in compute_metrics(inputs).items()}
    headline["num_synthetic"] = len(feats["synthetic"])
    for k, v in headline.items():
        if not math.isfinite(v):
            raise ValueError(f"metric {k} is not finite ({v}); the features are degenerate")

    rows = per_class_table(
        feats["synthetic"].features,
        feats["synthetic"].labels,
        feats["synthetic"].predictions,
        feats["real"].features,
        feats["real"].labels,
        prepared.class_names,
    )
    out = Path(out_dir)
    _write_per_class(out / "per_class.csv", rows)
    write_json(out / "eval.json", headline)

    tracker.log_metrics(headline)
    tracker.log_artifact(out / "per_class.csv", "evaluate")
    log.info("evaluate: %s", ", ".join(f"{k}={v:.4g}" for k, v in headline.items()))
    return headline
