"""Does adding the synthetic samples help a classifier? The protocol of the utility stage.

One study per scenario (the stage, `ganpipe.stages.utility`, prepares the scenarios' data and
synthetic samples and writes the outputs). For each of `utility.seeds` seeds, four arms train the
same downstream classifier (`ganpipe.evaluation.downstream_net`; not the evaluator's network) from the same
seeded initialisation, on the same seeded stratified train/validation split of the REAL training
images:

  real                    the real training part
  real_classic            the same, through classic augmentation (random shifts and rotations)
  real_synthetic          the real training part plus the synthetic samples
  real_classic_synthetic  both

Synthetic samples only ever join the training part. Each training runs to convergence: up to
`max_epochs`, early stopping (`patience`, best weights restored) on the validation loss, whose
images are real and never augmented. The test split is used for nothing but the final scores:
accuracy, balanced accuracy (mean per-class recall), macro F1 and the worst class's recall.

Comparisons are paired by seed (same split, same initialisation): the headline is
real_classic_synthetic vs real_classic (does the GAN add anything over the augmentation everyone
already does?), and real_synthetic vs real is reported too. For each metric: the per-seed
differences, their mean and 95% Student-t interval, and a verdict: `helps` if the interval lies
above 0, `hurts` if below, else `no measurable effect`.

Nothing here imports Keras at module level: `read_verdict` (the augment stage's gate) stays cheap.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ganpipe.config import UtilityParams
from ganpipe.data.prepared import Prepared, Split, to_float
from ganpipe.data.sampling import is_imbalanced
from ganpipe.errors import ConfigError, DataError
from ganpipe.io import read_json

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

ARMS = ("real", "real_classic", "real_synthetic", "real_classic_synthetic")
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "worst_class_recall")
# name -> (baseline arm, treatment arm); the first one decides the verdict.
COMPARISONS = {
    "real_classic_synthetic_vs_real_classic": ("real_classic", "real_classic_synthetic"),
    "real_synthetic_vs_real": ("real", "real_synthetic"),
}
HEADLINE = next(iter(COMPARISONS))
HELPS, HURTS, NO_EFFECT = "helps", "hurts", "no measurable effect"
CONFIDENCE = 0.95
# The power `detectable` is computed for: an effect that large is called 4 times in 5.
POWER = 0.8
UTILITY_JSON = "utility.json"


# ---- pure functions: metrics, the paired interval, splits, weights ----------------------------


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int
) -> dict[str, float]:
    """accuracy, balanced_accuracy (mean recall), macro_f1 and worst_class_recall. The per-class
    ones average over the classes present in `y_true` (a class absent from the test split has
    no recall); a class never predicted has precision 0 (sklearn's zero_division=0)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0 or len(y_true) != len(y_pred):
        raise ValueError(
            f"need equally many labels and predictions, got {len(y_true)}, {len(y_pred)}"
        )
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    n_true = confusion.sum(axis=1).astype(np.float64)
    n_pred = confusion.sum(axis=0).astype(np.float64)
    present = n_true > 0
    recall = tp[present] / n_true[present]
    precision = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)[present]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return {
        "accuracy": float(tp.sum() / len(y_true)),
        "balanced_accuracy": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "worst_class_recall": float(recall.min()),
    }


def verdict_of(low: float, high: float) -> str:
    """`helps` when the whole interval is above 0, `hurts` when below, else `no measurable effect`."""
    if low > 0:
        return HELPS
    if high < 0:
        return HURTS
    return NO_EFFECT


def paired_interval(
    baseline: list[float] | np.ndarray,
    treatment: list[float] | np.ndarray,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """The per-seed differences treatment - baseline, their mean, the `confidence` Student-t
    interval of the mean (n - 1 degrees of freedom), its verdict, and `detectable`: the smallest
    true mean difference this run would call (either way) with probability POWER, given the
    spread of its differences, (t_{1-a/2} + t_{POWER}) * sd / sqrt(n). Pairing by seed removes
    the seed-to-seed spread (split, initialisation) that both arms share."""
    from scipy import stats

    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(treatment, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError("need two equally long series of at least 2 paired values")
    diff = b - a
    mean = float(diff.mean())
    n = len(diff)
    se = diff.std(ddof=1) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * se)
    detectable = half + float(stats.t.ppf(POWER, n - 1) * se)
    low, high = mean - half, mean + half
    return {
        "per_seed": diff.tolist(),
        "mean": mean,
        "low": low,
        "high": high,
        "confidence": confidence,
        "verdict": verdict_of(low, high),
        "detectable": detectable,
        "power": POWER,
    }


def validation_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, validation) indices: per class round(fraction x its count) images to
    validation, at most all but one (every class keeps an image to train on)."""
    labels = np.asarray(labels)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(len(idx) - 1, int(np.floor(fraction * len(idx) + 0.5)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


# Not domain_classifier.class_weights_mean_over_classes: these average 1 over the training images
# (sklearn's "balanced"), absent classes included at weight 1, and follow utility.class_weight.
def class_weights_mean_over_images(
    labels: np.ndarray, num_classes: int, mode: bool | str
) -> dict[int, float] | None:
    """Keras `class_weight` for training labels `labels`: inverse class frequency scaled so the
    mean weight per training image is 1 (sklearn's "balanced": n / (k x n_c), k the classes
    present), so the loss keeps its scale. None when off: mode False, or "auto" and the classes
    are balanced (`ganpipe.data.sampling.is_imbalanced`). Absent classes get weight 1."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    present = counts > 0
    if mode is False:
        return None
    if mode == "auto" and not is_imbalanced(counts):
        return None
    weights = np.ones(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return {int(c): float(w) for c, w in enumerate(weights)}


def label_fraction_subset(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices of a stratified `fraction` of `labels`: round(fraction x n_c) of each class,
    at least 1."""
    labels = np.asarray(labels)
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = max(1, int(np.floor(fraction * len(idx) + 0.5)))
        picked.append(rng.choice(idx, n, replace=False))
    return np.sort(np.concatenate(picked))


def class_caps_subset(
    labels: np.ndarray, class_names: list[str], caps: dict[str, int], rng: np.random.Generator
) -> np.ndarray:
    """Sorted indices keeping at most caps[name] images (a seeded draw) of each named class, all of
    the others. ConfigError for a name that is not a class."""
    unknown = [name for name in caps if name not in class_names]
    if unknown:
        raise ConfigError(
            f"utility.class_caps: unknown class name(s) {', '.join(map(repr, unknown))}; the "
            f"classes are {', '.join(map(repr, class_names))}"
        )
    labels = np.asarray(labels)
    keep = []
    for c, name in enumerate(class_names):
        idx = np.flatnonzero(labels == c)
        cap = caps.get(name)
        if cap is not None and len(idx) > cap:
            idx = rng.choice(idx, cap, replace=False)
        keep.append(idx)
    return np.sort(np.concatenate(keep))


def seed_value(params: UtilityParams, i: int) -> int:
    """The training seed of seed index `i` (shared by the four arms: paired comparisons)."""
    return (params.seed + i) % 2**32


def split_rng(params: UtilityParams, i: int) -> np.random.Generator:
    """The validation split's generator for seed index `i`: the same for every arm."""
    return np.random.default_rng([i, params.seed % 2**32])


def _take(split: Split, idx: np.ndarray) -> Split:
    return Split(split.images[idx], split.labels[idx])


def _concat(a: Split, b: Split) -> Split:
    return Split(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]))


# ---- training one arm ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    scores: dict[str, float]  # METRICS on the test split
    epochs: int  # epochs run (early stopping may end before max_epochs)
    best_epoch: int  # 1-based epoch whose weights were kept (lowest validation loss)
    seconds: float  # training and scoring
    class_weighted: bool


def train_and_score(
    train: Split,
    val: Split,
    test: Split,
    image_shape: tuple[int, int, int],
    num_classes: int,
    params: UtilityParams,
    seed: int,
    classic: bool,
    template: keras.Model | None = None,
) -> TrainResult:
    """Train a fresh downstream classifier on `train` (through classic augmentation when
    `classic`), early-stopped on `val`'s loss with the best weights restored; score it on `test`.
    `test` is only predicted, after training: nothing about the training depends on it."""
    import keras

    from ganpipe.evaluation.downstream_net import fresh_network, outputs_probabilities

    if len(val) == 0:
        raise DataError(
            "the utility stage's validation split is empty: too few real training images per "
            "class (raise utility.validation_fraction or use more data)"
        )
    t0 = time.perf_counter()
    augmentation = (params.classic_shift, params.classic_rotation) if classic else None
    model = fresh_network(template, image_shape, num_classes, seed, augmentation)
    from_logits = template is None or not outputs_probabilities(template)
    model.compile(
        optimizer=keras.optimizers.Adam(params.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
    )
    weights = class_weights_mean_over_images(train.labels, num_classes, params.class_weight)
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=params.patience, restore_best_weights=True
    )
    history = model.fit(
        to_float(train.images),
        train.labels,
        validation_data=(to_float(val.images), val.labels),
        epochs=params.max_epochs,
        batch_size=params.batch_size,
        shuffle=True,
        class_weight=weights,
        callbacks=[stop],
        verbose=0,
    )
    # batches through the model's call, not model.predict: predict traces a new function for
    # every fresh model, and TensorFlow warns about "retracing" after a few of them
    bs = max(256, params.batch_size)
    pred = np.concatenate(
        [
            np.asarray(model(to_float(test.images[i : i + bs]), training=False)).argmax(axis=1)
            for i in range(0, len(test), bs)
        ]
    )
    scores = classification_metrics(test.labels, pred, num_classes)
    return TrainResult(
        scores=scores,
        epochs=len(history.history["loss"]),
        best_epoch=int(stop.best_epoch) + 1,
        seconds=time.perf_counter() - t0,
        class_weighted=weights is not None,
    )


# ---- one scenario's study -------------------------------------------------------------------------


def _mean_std(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)), "per_seed": v.tolist()}


def summarize(per_seed: dict[str, list[dict[str, float]]], verdict_metric: str) -> dict[str, Any]:
    """arms (mean, std, per_seed per metric), comparisons (paired intervals per metric) and the
    verdict (the headline comparison's on `verdict_metric`) from each arm's per-seed scores."""
    arms = {
        arm: {m: _mean_std([s[m] for s in scores]) for m in METRICS}
        for arm, scores in per_seed.items()
    }
    comparisons = {}
    for name, (base, treat) in COMPARISONS.items():
        comparisons[name] = {
            "baseline": base,
            "treatment": treat,
            "metrics": {
                m: paired_interval(arms[base][m]["per_seed"], arms[treat][m]["per_seed"])
                for m in METRICS
            },
        }
    return {
        "arms": arms,
        "comparisons": comparisons,
        "headline_comparison": HEADLINE,
        "verdict": comparisons[HEADLINE]["metrics"][verdict_metric]["verdict"],
    }


def run_study(
    real: Prepared,
    synthetic: Split,
    params: UtilityParams,
    template: keras.Model | None = None,
    on_trained: Callable[[str, int, TrainResult], None] | None = None,
    name: str = "",
) -> dict[str, Any]:
    """The four arms x `params.seeds` seeds on `real` (train split for training and validation,
    test split for the scores) and `synthetic` (added to the training part); `summarize`'s result
    plus counts, seconds per arm (sum over seeds) and epochs per training. `on_trained(arm, seed,
    result)` after each training (progress)."""
    if len(synthetic) == 0:
        raise DataError(
            f"utility{f' ({name})' if name else ''}: no synthetic samples to add (the augment "
            "stage's settings exported none: check augment.mode and its filters)"
        )
    shape, k = real.image_shape, real.num_classes
    per_seed: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    trainings: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    n_val = 0
    for i in range(params.seeds):
        seed = seed_value(params, i)
        train_idx, val_idx = validation_split(
            real.train.labels, params.validation_fraction, split_rng(params, i)
        )
        train, val = _take(real.train, train_idx), _take(real.train, val_idx)
        n_val = len(val)
        for arm in ARMS:
            data = _concat(train, synthetic) if arm.endswith("synthetic") else train
            result = train_and_score(
                data, val, real.test, shape, k, params, seed, "classic" in arm, template
            )
            per_seed[arm].append(result.scores)
            trainings[arm].append(
                {
                    "seed": seed,
                    "epochs": result.epochs,
                    "best_epoch": result.best_epoch,
                    "seconds": round(result.seconds, 2),
                    "class_weighted": result.class_weighted,
                }
            )
            log.info(
                "utility %s: arm %s seed %d: %d epochs (best %d), %.1fs, %s %.4f",
                name, arm, seed, result.epochs, result.best_epoch, result.seconds,
                params.verdict_metric, result.scores[params.verdict_metric],
            )  # fmt: skip
            if on_trained is not None:
                on_trained(arm, seed, result)
    out = summarize(per_seed, params.verdict_metric)
    out.update(
        {
            "num_real": len(real.train),
            "num_real_train": len(real.train) - n_val,
            "num_validation": n_val,
            "num_synthetic": len(synthetic),
            "num_test": len(real.test),
            "seconds_per_arm": {
                arm: round(sum(t["seconds"] for t in trainings[arm]), 2) for arm in ARMS
            },
            "epochs": {arm: [t["epochs"] for t in trainings[arm]] for arm in ARMS},
            "trainings": trainings,
        }
    )
    return out


# ---- the augment stage's gate ---------------------------------------------------------------------


def read_verdict(metrics_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The utility stage's verdict for `augment.require_benefit`: {"verdict", "verdict_metric",
    "headline"} from `<metrics_dir>/utility.json`, or None when that file says the stage was
    disabled (no verdict). DataError when the file is missing or unreadable."""
    path = Path(metrics_dir) / UTILITY_JSON
    if not path.exists():
        raise DataError(f"{path}: not found (run `ganpipe utility` first, with utility.enabled)")
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable ({e}); run `ganpipe utility` again") from None
    if not isinstance(data, dict) or "enabled" not in data:
        raise DataError(f"{path}: not a utility stage result; run `ganpipe utility` again")
    if not data["enabled"]:
        return None
    if data.get("verdict") not in (HELPS, HURTS, NO_EFFECT) or "headline" not in data:
        raise DataError(f"{path}: no verdict recorded; run `ganpipe utility` again")
    return {
        "verdict": data["verdict"],
        "verdict_metric": data.get("verdict_metric"),
        "headline": data["headline"],
    }
