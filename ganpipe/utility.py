"""Does the synthetic data help? Downstream classifiers trained with and without it.

Off by default (`evaluate.utility`): it trains 2 + 2 x len(uplift_fractions) x uplift_seeds small
classifiers. Each is a fresh `ganpipe.evaluator.new_classifier` network (the domain classifier's
architecture and training recipe), batches of `evaluate.classifier_batch_size`, and is
scored on the real test split.

  cas_accuracy   Classification Accuracy Score (Ravuri & Vinyals 2019): trained on synthetic samples
                 only, tested on real test images. Near real_accuracy: the samples carry the classes.
  real_accuracy  the same budget (optimisation steps) on the real training split, for scale.
  uplift_<p>pct_{real,aug}_{mean,std}, uplift_<p>pct_delta, uplift_<p>pct_num_real
                 for each fraction p of the real training split (a stratified, seeded subset of at
                 least one image per class): test accuracy trained on the subset alone (real) and on
                 the subset plus synthetic samples (aug), over uplift_seeds seeds (a new subset and
                 initialisation per seed; std over seeds, ddof=1); delta = aug_mean - real_mean.
                 Positive: the synthetic data helps at that label budget.
                 The synthetic samples added: every evaluated one, or with
                 evaluate.uplift_synthetic_ratio r, round(r x the subset's count) per class drawn
                 per seed, as the augment stage draws; with augment.reject_off_label only those the
                 domain classifier accepts (`accept`). uplift_<p>pct_num_synthetic: how many.
  synthetic_accept_rate  with rejection: the fraction of evaluated samples the filter keeps.

Same budget: within a comparison both arms run exactly the same number of optimisation steps on
batches of the same size (epochs x ceil(size of the larger training set / batch size)); batches are
drawn from consecutive seeded permutations, so a set smaller than a batch is repeated within it.
`UtilityResult.steps` reports the steps each training actually ran.

Caveat: this in-pipeline uplift augments with the pipeline's generator, which was trained on the
*whole* real training split, so at small fractions it leaks information the subset does not have.
A faithful small-data study trains the GAN on the subset too (the issue-6 study does that).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ganpipe.config import EvaluateParams
from ganpipe.data.prepared import Prepared, Split, to_float
from ganpipe.data.sampling import stratified_subsample
from ganpipe.data.synthetic import select_synthetic, synthetic_counts
from ganpipe.errors import DataError


@dataclass(frozen=True)
class TrainResult:
    test_accuracy: float
    steps: int  # optimisation steps actually run


@dataclass(frozen=True)
class UtilityResult:
    metrics: dict[str, float | int]
    steps: dict[str, list[int]] = field(default_factory=dict)  # per arm, one entry per training


def budget_steps(n_examples: int, epochs: int, batch_size: int) -> int:
    """Optimisation steps for `epochs` passes over `n_examples` in batches of `batch_size`."""
    return epochs * math.ceil(n_examples / batch_size)


def batch_indices(
    n: int, steps: int, batch_size: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """`steps` batches of `batch_size` indices into range(n), read off consecutive permutations
    (every index once per pass; a batch may span two passes, and repeats indices when n < batch)."""
    if n < 1:
        raise ValueError("cannot draw batches from an empty set")
    buf = np.empty(0, dtype=np.int64)
    for _ in range(steps):
        while len(buf) < batch_size:
            buf = np.concatenate([buf, rng.permutation(n)])
        yield buf[:batch_size]
        buf = buf[batch_size:]


def train_and_test(
    train: Split,
    test: Split,
    image_shape: tuple[int, int, int],
    num_classes: int,
    steps: int,
    batch_size: int,
    seed: int,
) -> TrainResult:
    """Train a fresh `build_classifier` network for exactly `steps` steps on `train`; its accuracy
    on `test`."""
    from ganpipe.evaluator import classifier_accuracy, new_classifier

    model = new_classifier(image_shape, num_classes, seed)
    done = 0
    for idx in batch_indices(len(train), steps, batch_size, np.random.default_rng(seed)):
        model.train_on_batch(to_float(train.images[idx]), train.labels[idx])
        done += 1
    return TrainResult(classifier_accuracy(model, test.images, test.labels), done)


def fraction_tag(fraction: float) -> str:
    """0.01 -> "1pct", 0.1 -> "10pct", 0.005 -> "0p5pct": a metric-key-safe percentage."""
    pct = round(fraction * 100, 6)
    text = f"{pct:g}" if pct != int(pct) else str(int(pct))
    return text.replace(".", "p") + "pct"


def _concat(a: Split, b: Split) -> Split:
    return Split(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]))


def _mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _synthetic_for(
    subset: Split,
    pool: Split,
    ratio: float | None,
    class_names: list[str],
    rng: np.random.Generator,
) -> Split:
    """The synthetic samples the uplift adds to `subset`: all of `pool`, or (ratio) per class
    round(ratio x the subset's count), drawn as the augment stage draws."""
    if ratio is None:
        return pool
    wanted = synthetic_counts(ratio, np.bincount(subset.labels, minlength=len(class_names)))
    remedy = (
        f"for evaluate.uplift_synthetic_ratio={ratio} among the evaluated (and accepted) "
        "samples: lower it, or raise generate.per_class and evaluate.max_samples"
    )
    idx = select_synthetic(pool.labels, wanted, rng, class_names, remedy=remedy)
    return Split(pool.images[idx], pool.labels[idx])


def downstream_utility(
    prepared: Prepared,
    synthetic: Split,
    params: EvaluateParams,
    accept: np.ndarray | None = None,
) -> UtilityResult:
    """CAS, real accuracy and augmentation uplift (see the module docstring) as flat metrics.
    `accept`: bool mask over `synthetic`, the samples the uplift may add (CAS uses all)."""
    if len(synthetic) < 1:
        raise DataError("downstream utility needs synthetic samples")
    shape, k, bs = prepared.image_shape, prepared.num_classes, params.classifier_batch_size
    test = prepared.test
    metrics: dict[str, float | int] = {}
    steps: dict[str, list[int]] = {}

    def run(arm: str, train: Split, n_steps: int, seed: int) -> float:
        result = train_and_test(train, test, shape, k, n_steps, bs, seed)
        steps.setdefault(arm, []).append(result.steps)
        return result.test_accuracy

    n_cas = budget_steps(max(len(synthetic), len(prepared.train)), params.utility_epochs, bs)
    metrics["cas_accuracy"] = run("cas", synthetic, n_cas, params.seed)
    metrics["real_accuracy"] = run("real", prepared.train, n_cas, params.seed)

    pool = synthetic
    if accept is not None:
        pool = Split(synthetic.images[accept], synthetic.labels[accept])
        metrics["synthetic_accept_rate"] = float(np.mean(accept))
        if len(pool) < 1:
            raise DataError("the off-label rejection kept no synthetic sample for the uplift")
    train = prepared.train
    for fraction in params.uplift_fractions:
        tag = f"uplift_{fraction_tag(fraction)}"
        n_sub = min(len(train), max(k, round(fraction * len(train))))
        real_acc, aug_acc = [], []
        for i in range(params.uplift_seeds):
            seed = params.seed + i
            rng = np.random.default_rng([params.seed, i, round(fraction * 1_000_000)])
            idx = stratified_subsample(train.labels, n_sub, rng)
            subset = Split(train.images[idx], train.labels[idx])
            added = _synthetic_for(
                subset, pool, params.uplift_synthetic_ratio, prepared.class_names, rng
            )
            n_steps = budget_steps(n_sub + len(added), params.utility_epochs, bs)
            real_acc.append(run(f"{tag}_real", subset, n_steps, seed))
            aug_acc.append(run(f"{tag}_aug", _concat(subset, added), n_steps, seed))
        real_mean, real_std = _mean_std(real_acc)
        aug_mean, aug_std = _mean_std(aug_acc)
        metrics.update(
            {
                f"{tag}_real_mean": real_mean,
                f"{tag}_real_std": real_std,
                f"{tag}_aug_mean": aug_mean,
                f"{tag}_aug_std": aug_std,
                f"{tag}_delta": aug_mean - real_mean,
                f"{tag}_num_real": n_sub,
                f"{tag}_num_synthetic": len(added),
            }
        )
    return UtilityResult(metrics, steps)
