"""One training of the utility study: an arm's training set, its batches, its loss, a fixed budget
of steps, and the scores on the validation and test splits. Runs in a worker process (or a Dask
worker): `fit_job` takes a picklable `Job` and the path of the study's arrays.

Pairing. Every arm of a seed trains from the same seeded initialisation on the same real training
part, for the same number of steps, and step s sees the same real images in every arm (a seeded
real-batch plan); an arm with extra images (oversampled real copies, synthetic samples, held-out
real images) appends a fixed number of them to every batch. So the paired difference of two arms
measures what the extra images do, not which batches a seed happened to draw.

Losses (`Job.loss`):
  weighted          cross-entropy, each image weighted by its class's inverse frequency in the arm's
                    training set (sklearn's "balanced"; plain cross-entropy when the classes are
                    balanced): the usual practitioner's fix.
  balanced_softmax  the logit-adjusted loss (Menon et al. 2021; balanced softmax, Ren et al. 2020):
                    cross-entropy of logits + log(class prior) in training, the raw logits at test
                    time. The long-tail literature finds it much stronger than class weighting.

Soft targets (`Job.teacher_mix` m > 0): a synthetic image's target is (1 - m) x its one-hot label +
m x a teacher's softmax at `Settings.teacher_temperature`. The teacher is another arm of the same
seed trained on real images only (`Job.teacher`): every real-only arm saves its softmax on the
synthetic pool (`teacher_file`) when `Settings.save_teacher` is on, so a teacher never saw the
seed's validation images. Class weights still follow the hard labels.

Deferral (`Job.synthetic_start` s > 0): the synthetic images join the batches only after the first
s x steps steps (M2m's deferred schedule; the classifier first learns the real images' features,
then the synthetic ones fill the rare classes). Fine-tuning (`Job.synthetic_stop` e < 1): they
leave after the first e x steps steps, and the rest trains on the real images alone (SYNAuG
pretrains on a balanced synthetic-augmented set, then fine-tunes on the real one). The real
batches, and the real copies of a fill, are the same as without either.

Real fill (`Job.real_fill` f > 0): a treatment whose share leaves a gap to the whole pool gets f x
that gap, per class, as copies of its real images, drawn like the oversampled control's: at f 1
every class reaches the control's counts and only the share of them that is synthetic differs
(DA-Fusion replaces a real image with a synthetic one with probability 0.5; share 0.5 here).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.data.loaders import one_hot
from ganpipe.data.prepared import Split, to_float
from ganpipe.evaluation.downstream import (
    class_weights_mean_over_images,
    classification_metrics,
    split_of_seed,
)
from ganpipe.evaluation.metrics.features import softmax

LOSSES = ("weighted", "balanced_softmax")
# What an arm appends to the real training part.
EXTRAS = ("none", "oversample", "synthetic", "held_out")
ARCHITECTURES = ("cnn", "resnet", "user")


@dataclass(frozen=True)
class Job:
    """One training: arm `arm` of seed index `seed_index`. Picklable (it travels to workers)."""

    arm: str
    seed_index: int
    seed: int
    loss: str = "weighted"
    extra: str = "none"
    # held_out: per class, how many held-out real images to add (the worth-in-real-images curve)
    held_out_counts: tuple[int, ...] = ()
    architecture: str = "cnn"
    steps: int = 100
    # fit on the real part alone for up to max_epochs with early stopping on validation loss and
    # report the best epoch (the budget's calibration), instead of `steps` fixed steps
    calibrate: bool = False
    # synthetic arms: the share of each class's synthetic samples added (a seeded draw per seed)
    # and each synthetic image's loss weight (on top of its class weight)
    share: float = 1.0
    synthetic_weight: float = 1.0
    # synthetic arms: the part of each synthetic target taken from the teacher arm's softmax
    teacher_mix: float = 0.0
    teacher: str = ""
    # synthetic arms: the part of the steps trained on the real batches alone before the
    # synthetic images join (0: from the first step)
    synthetic_start: float = 0.0
    # synthetic arms: the part of the steps after which the synthetic images leave the batches
    synthetic_stop: float = 1.0
    # synthetic arms: the part of the gap between the share and the whole pool filled with copies
    # of the real images (the oversampled control's counts at 1)
    real_fill: float = 0.0


@dataclass(frozen=True)
class Settings:
    """The study-wide settings a worker needs (from UtilityParams), picklable."""

    batch_size: int
    learning_rate: float
    validation_fraction: float
    split_seed: int
    classic_shift: float
    classic_rotation: float
    max_epochs: int
    patience: int
    model_path: str | None
    threads: int = 0  # TensorFlow intra-op threads in this worker; 0: its default
    # real-only arms save their softmax on the synthetic pool (teachers for soft targets)
    save_teacher: bool = False
    teacher_temperature: float = 2.0


def teacher_file(arrays_path: str, arm: str, seed_index: int) -> Path:
    """Where arm `arm` of seed `seed_index` saves its softmax on the synthetic pool."""
    return Path(arrays_path).parent / "teachers" / f"{arm}-{seed_index}.npy"


def teacher_targets(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's softmax at `temperature` from its softmax at 1: softmax(logits / T) is
    p ** (1 / T), renormalised (log p is the logits up to a per-row constant)."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), 1e-30, None)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def soft_targets(
    labels: np.ndarray, probs: np.ndarray, mix: float, temperature: float, num_classes: int
) -> np.ndarray:
    """(1 - mix) x one-hot(labels) + mix x the teacher's softmax at `temperature`: float32 rows
    summing to 1 (the study's and the export's soft targets, stages/augment.targets)."""
    return (1 - mix) * one_hot(labels, num_classes) + mix * teacher_targets(probs, temperature)


# ---- the arm's training set and batches (pure numpy) -----------------------------------------------


def oversample_indices(
    labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Indices into `labels` drawing counts[c] images of each class c with replacement: the real
    images repeated to the counts the synthetic fill adds (the control arm). A class with no real
    image gets none."""
    picked = []
    for c, n in enumerate(np.asarray(counts, dtype=np.int64)):
        idx = np.flatnonzero(labels == c)
        if n > 0 and len(idx):
            picked.append(rng.choice(idx, int(n), replace=True))
    return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)


def concat(splits: list[Split]) -> Split:
    return Split(
        np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits])
    )


def share_indices(labels: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of round(share x n_c) images of each class c, drawn without replacement (all
    of them at share 1): the amount of the synthetic pool a treatment adds."""
    if share >= 1.0:
        return np.arange(len(labels))
    picked = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        picked.append(rng.choice(idx, int(np.floor(share * len(idx) + 0.5)), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def fill_counts(pool: np.ndarray, taken: np.ndarray, fill: float) -> np.ndarray:
    """Per class, round(fill x (the pool's count - the count taken, both per class)): how many
    real copies fill a treatment's gap to the whole pool (the study's batches; augment's export
    turns them into the real images' weights)."""
    gap = np.maximum(np.asarray(pool) - np.asarray(taken), 0)
    return np.floor(fill * gap + 0.5).astype(np.int64)


def held_out_indices(labels: np.ndarray, counts: tuple[int, ...]) -> np.ndarray:
    """The first counts[c] held-out images of each class c (the pool is already shuffled)."""
    picked = [np.flatnonzero(labels == c)[:n] for c, n in enumerate(counts) if n > 0]
    return np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)


def batch_plan(
    n_real: int, n_extra: int, batch_size: int, steps: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(real, extra) index arrays of shape (steps, batch) and (steps, extra per batch). The real
    plan depends only on (n_real, batch_size, steps, seed): identical in every arm of a seed. The
    extra images per batch are round(batch x n_extra / n_real) (at least 1 when there are any), so
    an epoch of the real part also goes once through the extra images, in their own seeded order."""
    b = min(batch_size, n_real)
    real_rng = np.random.default_rng([seed, 1])
    per_epoch = n_real // b
    epochs = math.ceil(steps / per_epoch)
    real = np.concatenate([real_rng.permutation(n_real)[: per_epoch * b] for _ in range(epochs)])
    real = real[: steps * b].reshape(steps, b)
    if n_extra == 0:
        return real, np.zeros((steps, 0), dtype=np.int64)
    e = max(1, round(b * n_extra / n_real))
    extra_rng = np.random.default_rng([seed, 2])
    need = steps * e
    extra = np.concatenate(
        [extra_rng.permutation(n_extra) for _ in range(math.ceil(need / n_extra))]
    )[:need]
    return real, extra.reshape(steps, e)


def log_prior(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """log of the training set's class frequencies, an absent class at the rarest present one's
    (it adjusts nothing it never sees)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    prior = np.full(num_classes, np.log(counts[present].min() / counts.sum()))
    prior[present] = np.log(counts[present] / counts.sum())
    return prior.astype(np.float32)


# ---- one training ---------------------------------------------------------------------------------


_ARRAYS: dict[str, dict[str, np.ndarray]] = {}


def load_arrays(path: str) -> dict[str, np.ndarray]:
    """The study's arrays (real train/test, synthetic, held-out), loaded once per worker process."""
    if path not in _ARRAYS:
        with np.load(path, allow_pickle=False) as f:
            _ARRAYS.clear()  # one study at a time per worker
            _ARRAYS[path] = {k: f[k] for k in f.files}
    return _ARRAYS[path]


def _setup_threads(threads: int) -> None:
    if threads <= 0 or os.environ.get("GANPIPE_UTILITY_THREADS_SET"):
        return
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already started in this process: keep its threads
            pass
    os.environ["GANPIPE_UTILITY_THREADS_SET"] = "1"


def training_set(
    job: Job, arrays: dict[str, np.ndarray], settings: Settings, arrays_path: str = ""
) -> dict[str, Any]:
    """The arm's real training part, validation split and extra images (all numpy), and the extra
    images' soft targets (None: their labels)."""
    labels = arrays["train_labels"]
    train_idx, val_idx = split_of_seed(labels, settings.validation_fraction, settings.split_seed,
                                       job.seed_index)  # fmt: skip
    real = Split(arrays["train_images"][train_idx], labels[train_idx])
    val = Split(arrays["train_images"][val_idx], labels[val_idx])
    k = int(arrays["num_classes"])
    parts = []
    if any(job.held_out_counts):
        idx = held_out_indices(arrays["held_out_labels"], job.held_out_counts)
        parts.append(Split(arrays["held_out_images"][idx], arrays["held_out_labels"][idx]))
    soft = None
    if job.extra == "synthetic":
        syn_labels = arrays["synthetic_labels"]
        idx = share_indices(syn_labels, job.share, np.random.default_rng([job.seed, 4]))
        if job.real_fill > 0:  # the copies go before the synthetic images (last in extra)
            pool = np.bincount(syn_labels, minlength=k)
            counts = fill_counts(pool, np.bincount(syn_labels[idx], minlength=k), job.real_fill)
            copies = oversample_indices(real.labels, counts, np.random.default_rng([job.seed, 3]))
            parts.append(Split(real.images[copies], real.labels[copies]))
        parts.append(Split(arrays["synthetic_images"][idx], syn_labels[idx]))
        if job.teacher_mix > 0:
            path = teacher_file(arrays_path, job.teacher, job.seed_index)
            probs = np.load(path, allow_pickle=False)[idx]
            soft = soft_targets(syn_labels[idx], probs, job.teacher_mix,
                                settings.teacher_temperature, k)  # fmt: skip
    elif job.extra == "oversample":
        # the real images (held-out ones included, on the curve) repeated to the synthetic counts
        pool = concat([real, *parts])
        counts = np.bincount(arrays["synthetic_labels"], minlength=k)
        idx = oversample_indices(pool.labels, counts, np.random.default_rng([job.seed, 3]))
        parts.append(Split(pool.images[idx], pool.labels[idx]))
    extra = concat(parts) if parts else Split(real.images[:0], real.labels[:0])
    # the loss weight of each extra image: synthetic_weight for the synthetic ones (last in extra)
    extra_weight = np.ones(len(extra), dtype=np.float32)
    extra_targets = None
    if job.extra == "synthetic":
        first = len(extra) - len(parts[-1])
        extra_weight[first:] = job.synthetic_weight
        if soft is not None:  # held-out real images (before the synthetic ones) keep one-hot
            extra_targets = one_hot(extra.labels, k)
            extra_targets[first:] = soft
    return {
        "real": real,
        "val": val,
        "extra": extra,
        # the synthetic images' first index in extra (its length: none), the ones a window moves
        "first_synthetic": len(extra) - len(parts[-1]) if job.extra == "synthetic" else len(extra),
        "extra_weight": extra_weight,
        "extra_targets": extra_targets,
        "num_classes": k,
    }


def fit_job(job: Job, arrays_path: str, settings: Settings) -> dict[str, Any]:
    """Train one arm and score it: {"arm", "seed", "val": METRICS on validation, "test": METRICS
    on the test split, "seconds", "steps", "best_epoch" (calibration only)}. The test split is
    only predicted, after training."""
    _setup_threads(settings.threads)
    import keras

    from ganpipe.evaluation.downstream_net import (
        build_network,
        outputs_probabilities,
    )

    t0 = time.perf_counter()
    arrays = load_arrays(arrays_path)
    data = training_set(job, arrays, settings, arrays_path)
    soft = data["extra_targets"] is not None
    real, val, extra, k = data["real"], data["val"], data["extra"], data["num_classes"]
    shape = tuple(int(s) for s in arrays["train_images"].shape[1:])
    augmentation = (settings.classic_shift, settings.classic_rotation)
    model = build_network(job.architecture, shape, k, job.seed, augmentation, settings.model_path)
    probabilities = job.architecture == "user" and outputs_probabilities(model)
    all_labels = np.concatenate([real.labels, extra.labels])
    if job.loss == "balanced_softmax":
        loss = balanced_softmax_loss(log_prior(all_labels, k), probabilities, soft)
        weights = None
    else:
        cross_entropy = (
            keras.losses.CategoricalCrossentropy
            if soft
            else keras.losses.SparseCategoricalCrossentropy
        )
        loss = cross_entropy(from_logits=not probabilities)
        weights = class_weights_mean_over_images(all_labels, k, "auto")
    best_epoch = None
    if job.calibrate:
        model.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss=loss)
        stop = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=settings.patience, restore_best_weights=True
        )
        history = model.fit(
            to_float(real.images), real.labels,
            validation_data=(to_float(val.images), val.labels),
            epochs=settings.max_epochs, batch_size=settings.batch_size, shuffle=True,
            class_weight=weights, callbacks=[stop], verbose=0,
        )  # fmt: skip
        best_epoch = int(stop.best_epoch) + 1 if len(history.history["loss"]) else 1
        steps = best_epoch * max(1, len(real) // min(settings.batch_size, len(real)))
    else:
        steps = job.steps
        schedule = keras.optimizers.schedules.CosineDecay(settings.learning_rate, steps)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss)
        plan = batches(real, extra, weights, settings.batch_size, steps, job.seed,
                       data["extra_weight"], data["extra_targets"],
                       synthetic_window(job, steps), data["first_synthetic"])  # fmt: skip
        model.fit(plan, epochs=1, verbose=0)
    if settings.save_teacher and is_teacher(job):
        path = teacher_file(arrays_path, job.arm, job.seed_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        probs = predict(model, arrays["synthetic_images"], logits=True)
        np.save(path, (probs if probabilities else softmax(probs)).astype(np.float32))
    scores = {
        "val": classification_metrics(val.labels, predict(model, val.images), k),
        "test": classification_metrics(arrays["test_labels"], predict(model, arrays["test_images"]), k),
    }  # fmt: skip
    return {
        "arm": job.arm,
        "seed": job.seed,
        "seed_index": job.seed_index,
        "architecture": job.architecture,
        **scores,
        "steps": steps,
        "best_epoch": best_epoch,
        "num_extra": len(extra),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def synthetic_window(job: Job, steps: int) -> tuple[int, int]:
    """[first, last) steps whose batches hold the synthetic images: round(synthetic_start x
    steps) to round(synthetic_stop x steps) for a synthetic arm, else every step."""
    if job.extra != "synthetic":
        return 0, steps

    def step(x: float) -> int:
        return min(steps, int(np.floor(x * steps + 0.5)))

    return step(job.synthetic_start), step(job.synthetic_stop)


def is_teacher(job: Job) -> bool:
    """Whether a job's model can teach: a real-only arm (with or without oversampling) of the first
    architecture, trained for the study's budget."""
    return (
        job.extra in ("none", "oversample")
        and job.architecture == "cnn"
        and not job.calibrate
        and not any(job.held_out_counts)
    )


def predict(model: Any, images: np.ndarray, batch: int = 512, logits: bool = False) -> np.ndarray:
    """Arg-max class of each image (or, with `logits`, the model's outputs), in batches through the
    model's call (model.predict traces a new function for every fresh model, and TensorFlow warns
    about retracing after a few)."""
    outputs = [
        np.asarray(model(to_float(images[i : i + batch]), training=False))
        for i in range(0, len(images), batch)
    ]
    out = np.concatenate(outputs).astype(np.float64)
    return out if logits else out.argmax(axis=1)


def balanced_softmax_loss(
    prior: np.ndarray, probabilities: bool = False, soft: bool = False
) -> Any:
    """Cross-entropy of logits + log(prior) (logit adjustment): a common class's logit is raised in
    training, so the model must push its rare-class logits higher to win, and at test time (raw
    logits) the rare classes are no longer out-voted. For a model ending in a softmax, its
    log-probabilities serve as logits. `soft`: targets are rows of class probabilities."""
    import keras
    from keras import ops

    adjust = ops.convert_to_tensor(prior)
    cross_entropy = (
        keras.losses.categorical_crossentropy
        if soft
        else keras.losses.sparse_categorical_crossentropy
    )

    def loss(y_true: Any, output: Any) -> Any:
        logits = ops.log(ops.maximum(output, 1e-7)) if probabilities else output
        return cross_entropy(y_true, logits + adjust, from_logits=True)

    return loss


def batches(
    real: Split,
    extra: Split,
    weights: dict[int, float] | None,
    batch_size: int,
    steps: int,
    seed: int,
    extra_weight: np.ndarray | None = None,
    extra_targets: np.ndarray | None = None,
    window: tuple[int, int] | None = None,
    windowed_from: int = 0,
) -> Any:
    """A Keras PyDataset of `steps` batches from `batch_plan`: the step's real images, then its
    extra ones, those from index `windowed_from` on (the synthetic ones) only in the steps of
    `window` ([first, last): deferral and fine-tuning; None: every step); images in [-1, 1];
    sample weights from the class weights (1 without), times `extra_weight` (per extra image; 1
    without) for the extra ones. With `extra_targets` (rows of class probabilities per extra
    image) the targets are such rows, one-hot for the real images. The class is made here so that
    importing this module does not import Keras."""
    import keras

    plan = batch_plan(len(real), len(extra), batch_size, steps, seed)
    k = 1 + int(max(real.labels.max(), extra.labels.max() if len(extra) else 0))
    class_weight = np.ones(max(k, len(weights or {})), dtype=np.float32)
    for c, v in (weights or {}).items():
        class_weight[c] = v
    real_ones = np.ones(plan[0].shape[1], dtype=np.float32)
    per_extra = np.ones(len(extra), np.float32) if extra_weight is None else extra_weight
    lo, hi = window or (0, steps)

    class Batches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return steps

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            r, e = plan[0][i], plan[1][i]
            if not lo <= i < hi:
                e = e[e < windowed_from]
            images = np.concatenate([real.images[r], extra.images[e]])
            labels = np.concatenate([real.labels[r], extra.labels[e]])
            scale = np.concatenate([real_ones, per_extra[e]])
            weight = class_weight[labels] * scale
            if extra_targets is None:
                return to_float(images), labels, weight
            width = extra_targets.shape[1]
            targets = np.concatenate([one_hot(real.labels[r], width), extra_targets[e]])
            return to_float(images), targets, weight

    return Batches()


def arrays_file(
    path: Path,
    train: Split,
    test: Split,
    synthetic: Split,
    held_out: Split | None,
    num_classes: int,
) -> str:
    """Write the study's arrays once (workers load them by path); return the path."""
    from ganpipe.io import save_npz

    held = held_out if held_out is not None else Split(train.images[:0], train.labels[:0])
    save_npz(
        path,
        train_images=train.images, train_labels=train.labels.astype(np.int64),
        test_images=test.images, test_labels=test.labels.astype(np.int64),
        synthetic_images=synthetic.images, synthetic_labels=synthetic.labels.astype(np.int64),
        held_out_images=held.images, held_out_labels=held.labels.astype(np.int64),
        num_classes=np.int64(num_classes),
    )  # fmt: skip
    return str(path)
