"""Does adding the synthetic samples help a classifier? The utility protocol's pure parts: the
scores, the paired interval and its verdict, the splits, the class weights, the scenario subsets,
the choice of the strongest arm on validation, the two architectures' combined verdict, the
worth-in-real-images curve, and the augment stage's gate (`read_verdict`).

The study itself (which arms train and what they mean) is `ganpipe.evaluation.downstream_study`;
one training is `ganpipe.evaluation.downstream_fit`; the networks `ganpipe.evaluation.downstream_net`.

Comparisons are paired by seed: for each metric, the per-seed differences, their mean and 95%
Student-t interval, a verdict (`helps` if the interval lies above 0, `hurts` if below, else
`no measurable effect`) and the smallest effect the run could have detected (`detectable`).

Nothing here imports Keras: `read_verdict` (the augment stage's gate) stays cheap.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.config import UtilityParams
from ganpipe.data.sampling import is_imbalanced
from ganpipe.errors import ConfigError, DataError
from ganpipe.io import read_json

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "worst_class_recall")
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
    """The training seed of seed index `i` (shared by every arm of the seed: paired comparisons)."""
    return (params.seed + i) % 2**32


def split_of_seed(
    labels: np.ndarray, fraction: float, split_seed: int, seed_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seed index `seed_index`'s (train, validation) split of the real training images: the same
    for every arm of that seed."""
    rng = np.random.default_rng([seed_index, split_seed % 2**32])
    return validation_split(labels, fraction, rng)


# ---- choosing, combining, pricing ------------------------------------------------------------------


def mean_std(values: list[float]) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "per_seed": v.tolist()}


def choose(validation: dict[str, dict[str, Any]], candidates: list[str], metric: str) -> str:
    """The candidate arm with the highest mean `metric` on the VALIDATION split (ties: the first
    listed). The test split never takes part in a choice, so the headline is not optimistic."""
    return max(
        candidates, key=lambda arm: (validation[arm][metric]["mean"], -candidates.index(arm))
    )


def combine_verdicts(verdicts: list[str]) -> str:
    """Two architectures' verdicts as one: `hurts` if either says so (a gated export is blocked),
    `helps` only if all agree, else `no measurable effect`."""
    if HURTS in verdicts:
        return HURTS
    if verdicts and all(v == HELPS for v in verdicts):
        return HELPS
    return NO_EFFECT


def crossing(multiples: np.ndarray, curve: np.ndarray, value: float) -> float:
    """Where `value` meets the curve (multiples ascending, curve made non-decreasing by a running
    max: more real images never count as worse), by linear interpolation; clipped to the range
    measured (the caller says when it was)."""
    y = np.maximum.accumulate(np.asarray(curve, dtype=np.float64))
    x = np.asarray(multiples, dtype=np.float64)
    if value <= y[0]:
        return float(x[0])
    if value >= y[-1]:
        return float(x[-1])
    i = int(np.searchsorted(y, value, side="left"))  # y[i-1] < value <= y[i]
    if y[i] == y[i - 1]:
        return float(x[i])
    return float(x[i - 1] + (x[i] - x[i - 1]) * (value - y[i - 1]) / (y[i] - y[i - 1]))


def worth_in_real_images(
    multiples: list[float],
    curve_per_seed: np.ndarray,
    treatment_per_seed: np.ndarray,
    confidence: float = CONFIDENCE,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """What the synthetic samples are worth in real images: the multiple m of the rare classes'
    real images at which the real-only baseline's curve (`curve_per_seed`: seeds x multiples, the
    1x point first) reaches the treatment's mean score; its interval from a paired bootstrap over
    seeds (the same resampled seeds for curve and treatment). `below`/`above` say the estimate
    lies outside the multiples measured (it is then a bound, not a value)."""
    curve = np.asarray(curve_per_seed, dtype=np.float64)
    treat = np.asarray(treatment_per_seed, dtype=np.float64)
    x = np.asarray(multiples, dtype=np.float64)
    estimate = crossing(x, curve.mean(axis=0), float(treat.mean()))
    rng = np.random.default_rng(seed)
    n = len(treat)
    boot = np.empty(resamples)
    for b in range(resamples):
        idx = rng.integers(0, n, n)
        boot[b] = crossing(x, curve[idx].mean(axis=0), float(treat[idx].mean()))
    tail = (1 - confidence) / 2
    mean_curve = np.maximum.accumulate(curve.mean(axis=0))
    return {
        "multiples": x.tolist(),
        "curve": curve.mean(axis=0).tolist(),
        "curve_std": (curve.std(axis=0, ddof=1) if n > 1 else np.zeros(len(x))).tolist(),
        "treatment": float(treat.mean()),
        "worth": estimate,
        "low": float(np.quantile(boot, tail)),
        "high": float(np.quantile(boot, 1 - tail)),
        "confidence": confidence,
        "below": bool(treat.mean() < mean_curve[0]),
        "above": bool(treat.mean() > mean_curve[-1]),
    }


def held_out_counts(
    real_counts: np.ndarray, available: np.ndarray, rare: np.ndarray, multiple: float
) -> tuple[int, ...]:
    """Held-out real images to add per class for the curve point `multiple`: (multiple - 1) x the
    class's real count for the rare classes, as many as there are; none for the others."""
    want = np.where(rare, np.floor((multiple - 1) * np.asarray(real_counts) + 0.5), 0)
    return tuple(int(v) for v in np.minimum(want, available))


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
