"""Stage `evaluate`: score the synthetic samples against the real data.

One feature pass per image set (real train subsample, real test, synthetic subsample; the real ones
come from the reference statistics cache after the first evaluation of a dataset), then every
registered metric over those arrays. (Whether the samples help a downstream classifier is the
utility stage's question.) Writes to `<out_dir>/`:

  eval.json                the headline numbers (for `dvc metrics show`)
  per_class.csv            per class: counts, conditional accuracy, Fréchet distance
  per_class_accuracy.png   bar chart of the per-class conditional accuracy and distance
  feature_space.png        real and synthetic features on the real set's two principal axes
  memorization.json        near-copies and distances to closest records, overall and per class
                           (ganpipe.evaluation.metrics.memorization), with the guard's thresholds
  nearest_copies.png       the 20 synthetic samples closest to a training image in pixels, each
                           beside that image, with the distance (red: flagged as a near-copy)

Headline metrics (the Fréchet key is `fid` with evaluate.extractor=inception, else classifier_fd):
  classifier_fd | fid      Fréchet distance, synthetic vs real train, in the extractor's features
  ..._floor                the same for real test vs real train: what a perfect generator scores
                           (at the test set's sample size; the distance is biased by sample size)
  kid_mean, kid_std        kernel distance (unbiased MMD^2, cubic kernel), synthetic vs real train
  precision, recall, density, coverage   k-NN manifold metrics in the extractor's features
  conditional_accuracy     how often the domain classifier assigns a sample its generated label
  classifier_score         exp(E KL(p(y|x) || p(y))) over synthetic samples; 1..num_classes
  evaluator_test_accuracy  the domain classifier's accuracy on the real test set (sanity check)
  num_synthetic, num_real  samples evaluated (after the max_samples cap)

Memorization (ganpipe.evaluation.metrics.memorization; always in the domain classifier's features, whatever
evaluate.extractor is, plus pixels; the guard is fit on the whole prepared train split with
augment.memorization_quantile, and the held-out set is the real test subsample above):
  near_copy_fraction       synthetic samples that are near-copies of a training image (in pixels,
                           up to a one-pixel shift, or in features); real held-out images score
                           about augment.memorization_quantile or less
  dcr_train_median, dcr_holdout_median   median distance of a synthetic sample to its nearest
                           training / held-out image (the training images subsampled per class to
                           the held-out set's counts), in features
  dcr_ratio                train median / held-out median: ~1 without memorization, << 1 copying
  closer_to_train_fraction samples nearer a training than a held-out image: ~0.5 without
                           memorization, towards 1 copying
  pixel_dcr_...            the same four DCR numbers in pixels ([0, 1] units, one-pixel shifts)

The real and synthetic subsamples and the memorization check are ganpipe.evaluation.scoring's, the
plots ganpipe.evaluation.plots'; this module wires them and writes the files.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

from ganpipe.config import Params
from ganpipe.data.prepared import load_prepared
from ganpipe.data.sampling import stratified_subsample
from ganpipe.data.synthetic import SAMPLES_FILE, load_synthetic
from ganpipe.errors import DataError
from ganpipe.evaluation.metrics import MetricInputs, compute_metrics, per_class_table
from ganpipe.evaluation.metrics.memorization import HEADLINE_KEYS as MEMORIZATION_KEYS
from ganpipe.evaluation.plots import (
    FEATURE_PLOT,
    NEAREST_PLOT,
    PER_CLASS_PLOT,
    evaluation_plots,
    memorization_plots,
)
from ganpipe.evaluation.scoring import real_references, score_memorization, synthetic_subsample
from ganpipe.io import atomic_path, write_json
from ganpipe.paths import Paths
from ganpipe.tracker import Tracker

log = logging.getLogger(__name__)

PER_CLASS_COLUMNS = (
    "class",
    "class_name",
    "n_synthetic",
    "n_real",
    "conditional_accuracy",
    "recall",
    "coverage",
    "closer_to_train_fraction",
    "classifier_fd",
)
# eval.json's worst class of each per-class variety number (the rare classes' targets read these).
WORST_CLASS = {
    "min_class_recall": ("recall", min),
    "min_class_coverage": ("coverage", min),
    "max_class_closer_to_train_fraction": ("closer_to_train_fraction", max),
}
PER_CLASS_FILE = "per_class.csv"
MEMORIZATION_FILE = "memorization.json"
# The reference statistics cache, beside the classifier's cache directory rather than inside it: under
# DVC `evaluator/` is the classifier stage's output, and files the evaluate stage added there would
# change that output's hash (so `dvc repro` would never be a no-op). `.ganpipe_cache/` is gitignored.
REFERENCE_CACHE = Path(".ganpipe_cache") / "reference"
# Below this the classifier is too weak for its features and predictions to mean much.
MIN_EVALUATOR_ACCURACY = 0.5

__all__ = ["PER_CLASS_COLUMNS", "SAMPLES_FILE", "evaluate", "run", "stratified_subsample"]


def run(params: Params, paths: Paths, tracker: Tracker, progress: bool = True) -> dict[str, Any]:
    """The stage: prepared + synthetic + the evaluator -> `paths.metrics` (eval.json, ...); then,
    its metrics written and logged, the run's generator is registered (`tracking.register_model`):
    a run that failed before this point leaves the model registry as it was."""
    tracker.log_data(paths.prepared)  # no-op when train logged it; train skipped by DVC: here
    headline = evaluate(params, paths.prepared, paths.synthetic, paths.metrics, paths.evaluator)
    tracker.log_metrics(headline)
    for name in (PER_CLASS_FILE, PER_CLASS_PLOT, FEATURE_PLOT, MEMORIZATION_FILE, NEAREST_PLOT):
        if (paths.metrics / name).exists():  # the plots only with matplotlib installed
            tracker.log_artifact(paths.metrics / name, "evaluate")
    tracker.register_generator()
    return headline


def _write_per_class(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        k: ("" if isinstance(v, float) and math.isnan(v) else v)
                        for k, v in row.items()
                    }
                )


def evaluate(
    all_params: Params,
    data_dir: str | os.PathLike[str],
    synthetic_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    reference_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Score `<synthetic_dir>/samples.npz` against the prepared data in `data_dir`.

    The domain classifier is cached in `cache_dir`; the real sets' features and statistics in
    `reference_dir` (default `.ganpipe_cache/reference` beside `cache_dir`: see REFERENCE_CACHE).
    Writes eval.json, per_class.csv, memorization.json and the plots to `out_dir` and returns
    the headline metrics (a flat dict of floats, plus ints for the sample counts).
    """
    from ganpipe.evaluation.domain_classifier import get_evaluator
    from ganpipe.evaluation.metrics.extractors import build_extractor, load_feature_network

    params = all_params.evaluate
    prepared = load_prepared(data_dir)
    for name, split in (("train", prepared.train), ("test", prepared.test)):
        if len(split) < 2:
            raise DataError(
                f"{data_dir}/{name}.npz: {len(split)} images; evaluation needs at least 2 "
                "(run `ganpipe prepare` with more data)"
            )
    synthetic, _ = load_synthetic(synthetic_dir, prepared.class_names, prepared.image_shape)
    if len(synthetic) < 2:
        raise DataError(
            f"{Path(synthetic_dir) / SAMPLES_FILE}: {len(synthetic)} synthetic samples; need at "
            "least 2"
        )

    # the user's network (weights, model file, layer) is checked before the classifier is trained
    network = load_feature_network(params, prepared.image_shape)
    evaluator = get_evaluator(data_dir, params, cache_dir)
    meta = evaluator.meta
    if meta.get("test_accuracy", 1.0) < MIN_EVALUATOR_ACCURACY:
        warnings.warn(
            f"the evaluator classifier reaches only {meta['test_accuracy']:.1%} on the real test "
            "set; its distances and accuracies say little (raise evaluate.classifier_epochs)",
            stacklevel=2,
        )
    extractor = build_extractor(network, evaluator.extractor, meta)

    ref_dir = Path(reference_dir or Path(cache_dir).parent / REFERENCE_CACHE)
    references = real_references(params, prepared, extractor, ref_dir)
    synthetic = synthetic_subsample(params, synthetic)
    syn = extractor.feature_set(synthetic.images, synthetic.labels)

    real, real_test = references.refs["train"], references.refs["test"]
    inputs = MetricInputs(
        synthetic=syn,
        real=real.features,
        real_test=real_test.features,
        kid_subsets=params.kid_subsets,
        kid_subset_size=params.kid_subset_size,
        seed=params.seed,
        fd_key=extractor.fd_key,
        real_stats=real.stats,
        real_test_stats=real_test.stats,
    )
    headline: dict[str, Any] = {k: float(v) for k, v in compute_metrics(inputs).items()}
    headline["num_synthetic"] = len(syn)
    headline["num_real"] = len(real.features)
    out = Path(out_dir)
    quantile = all_params.augment.memorization_quantile
    report, near = score_memorization(references, synthetic, syn, evaluator, params.seed, quantile)
    write_json(out / MEMORIZATION_FILE, report)
    memorization_plots(out, synthetic.images, prepared.train.images, near)
    headline.update({k: float(report[k]) for k in MEMORIZATION_KEYS})
    for k, v in headline.items():
        if not math.isfinite(v):
            raise ValueError(f"metric {k} is not finite ({v}); the features are degenerate")

    fd_key = extractor.fd_key
    rows = per_class_table(
        syn.features,
        syn.labels,
        syn.predictions,
        real.features.features,
        real.features.labels,
        prepared.class_names,
    )
    for row in rows:
        row[fd_key] = row.pop("classifier_fd")
        mem = report["per_class"].get(row["class_name"]) or {}
        row["closer_to_train_fraction"] = mem.get("closer_to_train_fraction")
        if row["closer_to_train_fraction"] is None:
            row["closer_to_train_fraction"] = float("nan")
    for key, (column, worst) in WORST_CLASS.items():
        values = [r[column] for r in rows if math.isfinite(r[column])]
        if values:  # absent when no class has enough samples for it
            headline[key] = float(worst(values))
    _write_per_class(out / PER_CLASS_FILE, rows, PER_CLASS_COLUMNS[:-1] + (fd_key,))
    evaluation_plots(out, rows, fd_key, real.features, syn)
    write_json(out / "eval.json", headline)
    log.info("evaluate: %s", ", ".join(f"{k}={v:.4g}" for k, v in headline.items()))
    return headline
