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

from ganpipe.config import EvaluateParams, Params
from ganpipe.data.prepared import Prepared, Split, load_prepared
from ganpipe.data.sampling import stratified_subsample
from ganpipe.data.synthetic import SAMPLES_FILE, load_synthetic
from ganpipe.errors import DataError
from ganpipe.evaluation.metrics import MetricInputs, compute_metrics, per_class_table
from ganpipe.evaluation.metrics.memorization import HEADLINE_KEYS as MEMORIZATION_KEYS
from ganpipe.evaluation.metrics.memorization import (
    fit_guard,
    memorization_report,
    nearest_copies_figure,
)
from ganpipe.evaluation.metrics.reference import Reference, real_reference
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
    "classifier_fd",
)
PER_CLASS_FILE = "per_class.csv"
PER_CLASS_PLOT = "per_class_accuracy.png"
FEATURE_PLOT = "feature_space.png"
MEMORIZATION_FILE = "memorization.json"
NEAREST_PLOT = "nearest_copies.png"
# Synthetic samples drawn in nearest_copies.png.
NEAREST_SHOWN = 20
# The reference statistics cache, beside the classifier's cache directory rather than inside it: under
# DVC `evaluator/` is the classifier stage's output, and files the evaluate stage added there would
# change that output's hash (so `dvc repro` would never be a no-op). `.ganpipe_cache/` is gitignored.
REFERENCE_CACHE = Path(".ganpipe_cache") / "reference"
# Below this the classifier is too weak for its features and predictions to mean much.
MIN_EVALUATOR_ACCURACY = 0.5
# Points per set in the feature-space figure.
PLOT_POINTS = 2000

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


def _rng(seed: int, stream: int) -> np.random.Generator:
    """Independent seeded streams per set, so caching one set never shifts another's sample."""
    return np.random.default_rng([seed, stream])


def _subsample(split: Split, n: int, rng: np.random.Generator, what: str) -> np.ndarray:
    idx = stratified_subsample(split.labels, n, rng)
    if len(idx) < len(split):
        log.info(
            "evaluate: %s: %d of %d samples (evaluate.max_samples)", what, len(idx), len(split)
        )
    return idx


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


# ---- plots -----------------------------------------------------------------------------------------


def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def plot_per_class(path: Path, rows: list[dict[str, Any]], fd_key: str) -> None:
    """Bar charts of per-class conditional accuracy and Fréchet distance (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [str(r["class_name"]) for r in rows]
    acc = [r["conditional_accuracy"] for r in rows]
    fd = [r[fd_key] for r in rows]
    fig = Figure(figsize=(max(6.0, 0.5 * len(rows) + 2), 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(rows))
    top.bar(x, np.nan_to_num(acc), color="tab:blue")
    top.set_ylim(0, 1)
    top.set_ylabel("conditional accuracy")
    top.set_title("per class: does a sample look like its label? (higher is better)")
    bottom.bar(x, np.nan_to_num(fd), color="tab:orange")
    bottom.set_ylabel(fd_key)
    bottom.set_title("per class: Fréchet distance to the real class (lower is better)")
    bottom.set_xticks(x, names, rotation=45 if len(rows) > 12 else 0)
    _save_figure(fig, path)


def plot_feature_space(
    path: Path, real: np.ndarray, real_labels: np.ndarray, syn: np.ndarray, syn_labels: np.ndarray
) -> None:
    """Real and synthetic features projected on the real set's first two principal axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0)
    r_idx = rng.permutation(len(real))[:PLOT_POINTS]
    s_idx = rng.permutation(len(syn))[:PLOT_POINTS]
    r = real[r_idx].astype(np.float64)
    centre = r.mean(axis=0)
    _, _, vt = np.linalg.svd(r - centre, full_matrices=False)
    axes = vt[:2].T
    pr, ps = (r - centre) @ axes, (syn[s_idx] - centre) @ axes
    k = int(max(real_labels.max(initial=0), syn_labels.max(initial=0))) + 1
    colours = {"cmap": "tab10" if k <= 10 else "tab20" if k <= 20 else "viridis"}
    colours.update(vmin=-0.5, vmax=k - 0.5)  # the same colour for a class in both panels
    fig = Figure(figsize=(11.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, pts, lab, title in (
        (left, pr, real_labels[r_idx], "real (train)"),
        (right, ps, syn_labels[s_idx], "synthetic"),
    ):
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=lab, s=4, alpha=0.6, **colours)
        ax.set_title(f"{title}, {len(pts)} points")
        ax.set_xlabel("PC 1 of real features")
    left.set_ylabel("PC 2 of real features")
    fig.colorbar(sc, ax=[left, right], label="class")
    _save_figure(fig, path)


def _has_matplotlib(warn: bool = True) -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if warn:
            warnings.warn("matplotlib is not installed: no evaluation plots", stacklevel=4)
        return False
    return True


def _plots(out: Path, rows: list[dict[str, Any]], fd_key: str, real: Any, syn: Any) -> list[Path]:
    if not _has_matplotlib():
        return []
    plot_per_class(out / PER_CLASS_PLOT, rows, fd_key)
    plot_feature_space(out / FEATURE_PLOT, real.features, real.labels, syn.features, syn.labels)
    return [out / PER_CLASS_PLOT, out / FEATURE_PLOT]


# ---- memorization ----------------------------------------------------------------------------------


def _memorization(
    out: Path,
    prepared: Any,
    synthetic: Split,
    syn: Any,
    refs: dict[str, Any],
    indices: dict[str, np.ndarray],
    extractor: Any,
    evaluator: Any,
    ref_dir: Path,
    params: EvaluateParams,
    quantile: float,
) -> tuple[dict[str, float], list[Path]]:
    """Near-copies and DCR of `synthetic` (ganpipe.evaluation.metrics.memorization), in the domain classifier's
    features and in pixels; writes memorization.json and nearest_copies.png to `out`; returns the
    headline numbers and the files written.

    The guard sees the whole train split: a copy of an image outside evaluate.max_samples' subsample
    is still a copy. Its classifier features go through the reference cache (once per dataset); the
    sets the other metrics already ran through the classifier are reused, not recomputed."""
    from ganpipe.evaluation.metrics.extractors import build_extractor

    is_classifier = extractor.name == "classifier"
    # the domain classifier alone: the guard must not depend on evaluate.extractor
    clf = extractor if is_classifier else build_extractor(None, evaluator.extractor, evaluator.meta)

    def classifier_features(name: str, split: Split, idx: np.ndarray) -> np.ndarray:
        if is_classifier and np.array_equal(indices[name], idx):
            return refs[name].features.features
        ref = real_reference(
            ref_dir, prepared.content_hash, name, split.images, split.labels, idx, clf
        )
        return ref.features.features

    train, test = prepared.train, prepared.test
    train_features = classifier_features("train", train, np.arange(len(train)))
    test_idx = indices["test"]
    holdout = Split(test.images[test_idx], test.labels[test_idx])
    holdout_features = classifier_features("test", test, test_idx)
    syn_features = syn.features if is_classifier else evaluator.features(synthetic.images)[0]

    guard = fit_guard(
        train.images, train_features, quantile, seed=params.seed, train_labels=train.labels
    )
    near = guard.near_copies(synthetic.images, syn_features, synthetic.labels)
    report = memorization_report(
        synthetic.images,
        syn_features,
        synthetic.labels,
        train_images=train.images,
        train_features=train_features,
        train_labels=train.labels,
        holdout_images=holdout.images,
        holdout_features=holdout_features,
        holdout_labels=holdout.labels,
        guard=guard,
        class_names=prepared.class_names,
        seed=params.seed,
        near=near,
    )
    write_json(out / MEMORIZATION_FILE, report)
    written = [out / MEMORIZATION_FILE]
    if _has_matplotlib(warn=False):  # _plots says so, once
        nearest_copies_figure(
            out / NEAREST_PLOT, synthetic.images, train.images, near, NEAREST_SHOWN
        )
        written.append(out / NEAREST_PLOT)
    return {k: float(report[k]) for k in MEMORIZATION_KEYS}, written


# ---- the stage -------------------------------------------------------------------------------------


def real_references(
    params: EvaluateParams, prepared: Prepared, extractor: Any, ref_dir: Path
) -> tuple[dict[str, Reference], dict[str, np.ndarray]]:
    """The real train and test subsamples' references (features, statistics; cached in
    `ref_dir`) and their indices, by split name: what every evaluation compares against."""
    refs, indices = {}, {}
    for stream, (name, split) in enumerate((("train", prepared.train), ("test", prepared.test))):
        idx = _subsample(split, params.max_samples, _rng(params.seed, stream), f"real {name}")
        indices[name] = idx
        refs[name] = real_reference(
            ref_dir, prepared.content_hash, name, split.images, split.labels, idx, extractor
        )
    return refs, indices


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
    refs, indices = real_references(params, prepared, extractor, ref_dir)
    syn_idx = _subsample(synthetic, params.max_samples, _rng(params.seed, 2), "synthetic")
    if len(syn_idx) < len(synthetic):
        synthetic = Split(synthetic.images[syn_idx], synthetic.labels[syn_idx])
    syn = extractor.feature_set(synthetic.images, synthetic.labels)

    real, real_test = refs["train"], refs["test"]
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
    memorized, _ = _memorization(
        out,
        prepared,
        synthetic,
        syn,
        refs,
        indices,
        extractor,
        evaluator,
        ref_dir,
        params,
        quantile,
    )
    headline.update(memorized)
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
    _write_per_class(out / PER_CLASS_FILE, rows, PER_CLASS_COLUMNS[:-1] + (fd_key,))
    _plots(out, rows, fd_key, real.features, syn)
    write_json(out / "eval.json", headline)
    log.info("evaluate: %s", ", ".join(f"{k}={v:.4g}" for k, v in headline.items()))
    return headline
