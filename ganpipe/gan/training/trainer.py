"""The train stage's work: prepared data in, `generator.keras` and friends out (`train`).

A run goes: `plan.plan_run` (data loaded, params checked, run key named: ConfigError before any
work; `train.backend` only checks $KERAS_BACKEND), `state.build_for_training` (seeded models and
optimizers under `train.precision`'s dtype policy; mixed_float16 adds loss scaling), `resume` (the
run key's newest checkpoint, or a fresh start), `train_loop`, and `export.export` (the model dir,
swapped in whole: nothing partial on failure). Checkpoints:
checkpoint.py. The options, all off by default and then no extra work per step: `train.loss`
(losses.py), `model.spectral_norm` (models/dcgan.py), `train.diffaugment` (diffaugment.py),
`train.ema_decay` (ema.py) and `train.ada` (ada.py: adaptive discriminator augmentation, its p in
every history row as `ada_p`, 0 when off, and in the tracker's metrics and the summary when on).

The loop is backend-neutral; a runner per Keras backend does the steps (`make_runner`):
- TensorFlow (`step_tf.HostRunner`): NumPy batches gathered on the host, NumPy noise drawn from
  default_rng([train.seed, step]); each step hands its losses back as floats.
- JAX (`step_jax.DeviceRunner`): the data lives on the device, batches are gathered and noise drawn
  (from fold_in(key(train.seed), step)) inside one jitted, donated step whose losses stay on the
  device until fetched; the Keras variables are synced from the device state only for
  checkpoints, sample grids and the final save.
Everything is driven by one step counter, and every random draw is seeded from (train.seed, epoch)
for the shuffle (a permutation, or with `train.class_balance` a class-balanced order:
sampling.py) and (train.seed, step) for the noise (and the options' draws), so a run resumed
from a checkpoint draws exactly what an uninterrupted run would have drawn (on the same backend:
the run key includes it). The loop takes the losses in batches (every LOG_EVERY steps, and before
every checkpoint and sample grid): on JAX that is when they leave the device, so the host does not
wait on every step; on TensorFlow each step has already waited for its own. A NaN is reported with
the step it first appeared at, and no checkpoint is written past it.

Data parallel (`train.distribute`, distribute.py): the models are built under a MirroredStrategy's
scope on TensorFlow, the jitted step is partitioned over a device mesh on JAX; the summary says
`distribute` and `replicas`.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from ganpipe.config import Params
from ganpipe.errors import TrainingError
from ganpipe.gan.training import distribute
from ganpipe.gan.training.checkpoint import HISTORY_COLUMNS, Checkpoints
from ganpipe.gan.training.export import export, write_samples
from ganpipe.gan.training.losses import METRICS
from ganpipe.gan.training.plan import Run, plan_run
from ganpipe.gan.training.sampling import epoch_order
from ganpipe.gan.training.state import GanState, build_for_training
from ganpipe.tracker import NULL_TRACKER, Tracker

LOG_EVERY = 20  # steps between tracker.log_metrics calls (means over the window)


class Runner(Protocol):
    """Runs training steps for the loop: step_tf.HostRunner, step_jax.DeviceRunner."""

    def begin_epoch(self, perm: np.ndarray) -> None:
        """This epoch's permutation of the training set (called again after a resume)."""

    def step(self, step: int) -> Any:
        """Train on batch `step % steps_per_epoch` of the permutation; returns a handle on the
        metrics that `fetch` turns into numbers."""

    def fetch(self, handles: list[Any]) -> np.ndarray:
        """len(handles) x len(losses.METRICS) float64, in that order."""

    def sync_to_keras(self) -> None:
        """Make the Keras variables current (before reading or saving them)."""


def make_runner(
    backend: str,
    params: Params,
    state: GanState,
    images_uint8: np.ndarray,
    labels: np.ndarray,
    start_step: int,
    distribution: Any = None,
) -> Runner:
    """The runner the trainer (and benchmarks/train_throughput.py) uses on `backend`; each backend's
    module is imported only here, so the JAX path never loads TensorFlow. `distribution`: None
    (one device), or for data parallel a tf.distribute strategy on TensorFlow
    (`distribute.tf_strategy`, the models built under its scope) or a jax Mesh on JAX
    (`distribute.jax_mesh`)."""
    if backend == "jax":
        from ganpipe.gan.training import step_jax

        return step_jax.DeviceRunner(state, params, images_uint8, labels, start_step, distribution)
    from ganpipe.gan.training import step_tf

    return step_tf.HostRunner(state, params, images_uint8, labels, distribution)


def train(
    params: Params,
    data_dir: str | Path,
    model_dir: str | Path,
    checkpoint_root: str | Path = "checkpoints",
    tracker: Tracker | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume training) the conditional GAN; returns the summary also written to
    `model_dir/train_summary.json`. Raises ConfigError before any work for impossible params and
    TrainingError if a loss becomes NaN or infinite (earlier outputs and checkpoints stay)."""
    t_start = time.perf_counter()
    tracker = tracker or NULL_TRACKER
    run = plan_run(params, data_dir, checkpoint_root)
    params = run.params  # train.class_balance/diffaugment's auto resolved for this data
    tf_backend = run.backend == "tensorflow"
    distribution = (distribute.tf_strategy if tf_backend else distribute.jax_mesh)(run.dist)
    images, labels = run.data.train.images, run.data.train.labels
    counts = np.bincount(labels, minlength=run.data.num_classes)  # gSR's class weights
    state = build_for_training(
        params,
        run.data.image_shape,
        run.data.num_classes,
        distribution if tf_backend else None,
        counts,
    )
    start, history = resume(run, state)
    if run.dist.distributed:
        print(
            f"data parallel over {run.dist.replicas} devices ({', '.join(run.dist.devices)}): "
            f"{params.train.batch_size // run.dist.replicas} images per device per step"
        )
    runner = make_runner(run.backend, params, state, images, labels, start, distribution)
    rows, loop_seconds = train_loop(run, state, runner, start, history, tracker, progress)
    summary = export(run, state, rows, start, loop_seconds, Path(model_dir), t_start)
    tracker.log_artifact(Path(model_dir) / "samples" / "final.png", "samples")
    final_metrics = {"train_seconds": loop_seconds}
    if summary["images_per_sec"] is not None:
        final_metrics["train_images_per_sec"] = summary["images_per_sec"]
    tracker.log_metrics(final_metrics)
    return summary


def resume(run: Run, state: GanState) -> tuple[int, np.ndarray]:
    """(the step to start at, the history rows so far), with `state` restored from the newest
    usable checkpoint of the run key; (0, no rows) when there is none. Temp files of a run killed
    mid-write go first; a run past the steps asked for (fewer epochs) is discarded, as are
    unusable leftovers, and the run starts fresh."""
    ckpt, total = run.ckpt, run.total
    ckpt.remove_temps()
    latest = ckpt.latest_step()
    if latest is not None and latest > total:
        print(
            f"the checkpoint at step {latest} in {ckpt.dir} is past the {total} steps asked for; "
            "discarding that run"
        )
        ckpt.clear()
    restored = ckpt.restore(state.variable_groups())
    if restored is None:
        ckpt.clear()  # unusable leftovers and their samples
        print(f"starting fresh in {ckpt.dir} ({total} steps)")
        return 0, np.zeros((0, len(HISTORY_COLUMNS)))
    start, history = restored
    what = "nothing to do" if start == total else f"resuming from step {start}"
    print(f"{what} in {ckpt.dir} ({total} steps)")
    return start, history


def train_loop(
    run: Run,
    state: GanState,
    runner: Runner,
    start: int,
    history: np.ndarray,
    tracker: Tracker,
    progress: bool,
) -> tuple[list[tuple[float, ...]], float]:
    """Steps `start` to the end: history rows (the restored ones first), window means to the
    tracker every LOG_EVERY steps, sample grids and checkpoints on their schedules. Returns (all
    rows, seconds in the loop); TrainingError at the first nonfinite loss."""
    tp, total, spe = run.params.train, run.total, run.steps_per_epoch
    labels = run.data.train.labels
    rows = [tuple(r) for r in history.tolist()]
    window: list[tuple[float, float, float]] = []
    ada_col = METRICS.index("ada_p")
    last_ada_p = 0.0  # the p of the last step taken (logged with ADA on)
    pending: list[tuple[int, int, Any]] = []  # (step done, epoch, metrics handle), not taken yet

    def flush(now: float, since: float) -> None:
        """Take the pending metrics in one go; check them; append history rows. images/s is the
        mean over the flushed steps (on JAX the device runs ahead of the host between fetches)."""
        nonlocal last_ada_p
        values = runner.fetch([h for _, _, h in pending])
        ips = len(pending) * tp.batch_size / max(now - since, 1e-9)
        for (done, epoch, _), metrics in zip(pending, values.tolist(), strict=True):
            check_finite(run.ckpt, done, *metrics[:2])
            rows.append((done, epoch, *metrics, ips))
            window.append((metrics[0], metrics[1], ips))
            last_ada_p = metrics[ada_col]
        pending.clear()

    bar = tqdm(total=total, initial=start, disable=not progress, file=sys.stderr, unit="step")
    loop_start = last_flush = time.perf_counter()
    perm_epoch = -1
    try:
        for step in range(start, total):
            epoch = step // spe
            if epoch != perm_epoch:
                runner.begin_epoch(epoch_order(tp.seed, epoch, labels, tp.class_balance))
                perm_epoch = epoch
            done = step + 1
            pending.append((done, epoch + 1, runner.step(step)))
            bar.update(1)

            log_now = done % LOG_EVERY == 0 or done == total
            sample_now = done % tp.sample_every == 0
            ckpt_now = done % tp.checkpoint_every == 0 or done == total
            if log_now or sample_now or ckpt_now:
                now = time.perf_counter()
                flush(now, last_flush)
                last_flush = now
            if log_now:
                d_mean, g_mean, ips_mean = np.mean(window, axis=0).tolist()
                window.clear()
                # "train/": MLflow charts these curves in their own section, apart from the
                # headline numbers (docs/mlflow.md); history.csv keeps the plain names.
                logged = {
                    "train/d_loss": d_mean,
                    "train/g_loss": g_mean,
                    "train/images_per_sec": ips_mean,
                }
                postfix = f"img/s={ips_mean:.0f}, d_loss={d_mean:.3f}, g_loss={g_mean:.3f}"
                if state.options.ada is not None:
                    # p itself, not a window mean: it moves by small steps, and only every
                    # ada_interval steps.
                    logged["train/ada_p"] = last_ada_p
                    postfix += f", ada_p={last_ada_p:.3f}"
                tracker.log_metrics(logged, step=done)
                bar.set_postfix_str(postfix, refresh=False)
            if sample_now or ckpt_now:
                runner.sync_to_keras()
            if sample_now:
                png = write_samples(run, state, run.ckpt.samples_dir / f"step_{done:06d}.png")
                tracker.log_artifact(png, "samples")
            if ckpt_now:
                run.ckpt.save(done, state.variable_groups(), np.asarray(rows, np.float64))
            if sample_now or ckpt_now:
                last_flush = time.perf_counter()  # writing files is not training time
    finally:
        bar.close()
    return rows, time.perf_counter() - loop_start


def check_finite(ckpt: Checkpoints, step: int, d_loss: float, g_loss: float) -> None:
    """TrainingError if a loss of step `step` is NaN or infinite, naming the last good checkpoint
    (none is ever written past that step)."""
    if math.isfinite(d_loss) and math.isfinite(g_loss):
        return
    kept = ckpt.paths()
    where = (
        f"the last good checkpoint is kept in {kept[-1]}"
        if kept
        else f"no checkpoint was written yet (checkpoint dir {ckpt.dir})"
    )
    bad = d_loss if not math.isfinite(d_loss) else g_loss
    raise TrainingError(
        f"loss became {bad} at step {step} (d_loss={d_loss:.4g}, g_loss={g_loss:.4g}); {where}. "
        "Try lower learning rates."
    )
