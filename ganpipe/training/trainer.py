"""The train stage: prepared data in, `generator.keras` and friends out.

The loop is backend-neutral; a runner per Keras backend does the steps (`make_runner`):
- TensorFlow (`HostRunner` + `step_tf.py`): NumPy batches gathered on the host, NumPy noise drawn
  from default_rng([train.seed, step]), losses back as floats.
- JAX (`step_jax.DeviceRunner`): the data lives on the device, batches are gathered and noise
  drawn (from fold_in(key(train.seed), step)) inside one jitted, donated step; the Keras variables
  are synced from the device state only for checkpoints, sample grids and the final save.
Everything is driven by one step counter, and every random draw is seeded from (train.seed, epoch)
for the shuffle and (train.seed, step) for the noise, so a run resumed from a checkpoint draws
exactly what an uninterrupted run would have drawn (on the same backend: the run key includes it).
Losses are fetched from the device in batches (every LOG_EVERY steps, and before every checkpoint
and sample grid), not every step; a NaN is reported with the step it first appeared at, and no
checkpoint is written past it. `train.precision` sets the Keras dtype policy while the models are
built (mixed_float16 adds loss scaling); `train.backend` only checks $KERAS_BACKEND.

Outputs in `model_dir`, swapped in as a whole at the end (nothing partial on failure):
`generator.keras`, `discriminator.keras`, `history.csv` (one row per step), `samples/` (a grid every
`train.sample_every` steps and `final.png`; one row per class, fixed noise per column) and
`train_summary.json`. Checkpoints: see `checkpoint.py`.

Options (all off by default, and then no extra work per step): `train.loss` (bce | hinge |
wgan_gp, with `train.gp_weight`; losses.py), `model.spectral_norm` (models/dcgan.py),
`train.diffaugment` (diffaugment.py) and `train.ema_decay` (ema.py: with it, the EMA generator is
the one in `generator.keras` and in the sample grids; `train_summary.json` says which one under
`exported_generator`). DiffAugment's and wgan_gp's random draws come from the step's seeded RNG
(default_rng([train.seed, step, 1]) on TensorFlow, fold_in(step key, 1) on JAX), so resuming stays
exact with any of them on.

Data parallel (`train.distribute`, distribute.py): over every local device when there are several
(auto), with `train.batch_size` the global batch split evenly across them; on TensorFlow the models
are built under a MirroredStrategy's scope and the step runs per replica, on JAX the jitted step is
partitioned over a device mesh. The summary says `distribute` and `replicas`, and the replica count
is part of the run key when above 1.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
import pandas as pd
from tqdm import tqdm

from ganpipe.config import Params
from ganpipe.data.prepared import load_prepared, to_float, to_uint8
from ganpipe.errors import TrainingError
from ganpipe.images import readable_scale, save_grid
from ganpipe.io import atomic_dir, write_json
from ganpipe.models import build_models, check_shape
from ganpipe.ops.tracking import NULL_TRACKER, Tracker
from ganpipe.training import distribute, ema
from ganpipe.training.checkpoint import HISTORY_COLUMNS, Checkpoints, run_key
from ganpipe.training.losses import StepOptions

LOG_EVERY = 20  # steps between tracker.log_metrics calls (means over the window)
SAMPLE_COLUMNS = 10
SAMPLE_SEED = 0x5A3E  # the sample grid's fixed noise: default_rng([train.seed, SAMPLE_SEED])


BACKENDS = ("tensorflow", "jax")
METRICS = ("d_loss", "g_loss", "d_real", "d_fake")


class Runner(Protocol):
    """Runs training steps for the loop; see HostRunner and step_jax.DeviceRunner."""

    def begin_epoch(self, perm: np.ndarray) -> None:
        """This epoch's permutation of the training set (called again after a resume)."""

    def step(self, step: int) -> Any:
        """Train on batch `step % steps_per_epoch` of the permutation; returns a handle on the
        metrics that `fetch` turns into numbers."""

    def fetch(self, handles: list[Any]) -> np.ndarray:
        """len(handles) x 4 float64: d_loss, g_loss, d_real, d_fake."""

    def sync_to_keras(self) -> None:
        """Make the Keras variables current (before reading or saving them)."""


def step_uniforms(seed: int, step: int, rows: int, cols: int) -> np.ndarray:
    """rows x cols float32 Uniform[0, 1) for step `step`: DiffAugment's random choices and wgan_gp's
    eps on TensorFlow (a stream of their own: the noise's is default_rng([seed, step]))."""
    return np.random.default_rng([seed, step, 1]).random((rows, cols), dtype=np.float32)


class HostRunner:
    """Host-side batching for a step function (real, labels, noise[, aux]) -> dict of floats
    (`step_tf.make_train_step`): batches gathered from NumPy arrays, noise from
    default_rng([seed, step]); what the options need besides goes in `aux`: "t" (the step, for
    the EMA warm-up) and "u" (2N x options.num_uniforms Uniform[0, 1) from
    default_rng([seed, step, 1]), for DiffAugment and wgan_gp's eps). Nothing for the defaults."""

    def __init__(
        self,
        step_fn: Any,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        latent_dim: int,
        seed: int,
        options: StepOptions | None = None,
    ) -> None:
        self.step_fn, self.images, self.labels = step_fn, images, labels
        self.batch_size, self.latent_dim, self.seed = batch_size, latent_dim, seed
        self.steps_per_epoch = len(labels) // batch_size
        self.perm: np.ndarray | None = None
        options = options or StepOptions()
        self.uniforms, self.with_step = options.num_uniforms, options.ema_decay is not None

    def begin_epoch(self, perm: np.ndarray) -> None:
        self.perm = perm

    def step(self, step: int) -> tuple[float, ...]:
        bs, b = self.batch_size, step % self.steps_per_epoch
        idx = self.perm[b * bs : (b + 1) * bs]
        noise = np.random.default_rng([self.seed, step]).standard_normal(
            (bs, self.latent_dim), dtype=np.float32
        )
        aux = {}
        if self.with_step:
            aux["t"] = np.asarray(step, np.float32)  # an array: no retracing per value
        if self.uniforms:
            aux["u"] = step_uniforms(self.seed, step, 2 * bs, self.uniforms)
        out = self.step_fn(self.images[idx], self.labels[idx], noise, *([aux] if aux else []))
        return tuple(out[k] for k in METRICS)

    def fetch(self, handles: list[tuple[float, ...]]) -> np.ndarray:
        return np.asarray(handles, np.float64).reshape(len(handles), len(METRICS))

    def sync_to_keras(self) -> None:
        pass


def check_backend(params: Params) -> str:
    """Keras's backend, or ConfigError if no runner exists for it or train.backend names
    another (the backend is fixed when keras is first imported: $KERAS_BACKEND)."""
    backend = keras.backend.backend()
    wanted = params.train.backend
    if wanted != "auto" and wanted != backend:
        raise params.error(
            "train.backend",
            f"is {wanted!r} but Keras is running on {backend!r}, which is fixed when keras is "
            f"imported: set KERAS_BACKEND={wanted} in the environment (or train.backend: auto)",
        )
    if backend not in BACKENDS:
        raise params.error(
            "train.backend",
            f"no train step for the Keras backend {backend!r}; set KERAS_BACKEND=jax or "
            "KERAS_BACKEND=tensorflow",
        )
    return backend


def make_optimizers(
    params: Params, generator: keras.Model, discriminator: keras.Model
) -> tuple[keras.optimizers.Optimizer, keras.optimizers.Optimizer]:
    """Built Adam optimizers for G and D; LossScaleOptimizer-wrapped under mixed_float16."""
    tp = params.train
    opts = []
    for lr, model in ((tp.g_learning_rate, generator), (tp.d_learning_rate, discriminator)):
        opt = keras.optimizers.Adam(lr, beta_1=tp.beta_1)
        if tp.precision == "mixed_float16":
            opt = keras.optimizers.LossScaleOptimizer(opt)
        opt.build(model.trainable_variables)
        opts.append(opt)
    return opts[0], opts[1]


def seed_everything(seed: int) -> None:
    """`keras.utils.set_random_seed`, minus its `tf.random.set_seed` off TensorFlow: it imports
    TensorFlow whenever it is installed, and the JAX path must not need (or load) it."""
    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)


def build_for_training(
    params: Params,
    image_shape: tuple[int, int, int],
    num_classes: int,
    strategy: Any = None,
) -> tuple[keras.Model, keras.Model, keras.optimizers.Optimizer, keras.optimizers.Optimizer]:
    """Seeded (generator, discriminator, g_opt, d_opt), built under the `train.precision` dtype
    policy (the global policy is restored afterwards; the layers keep theirs) and, given a
    tf.distribute `strategy` (distribute.tf_strategy), under its scope: mirrored variables."""
    seed_everything(params.train.seed)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(params.train.precision)
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    try:
        with scope:
            generator, discriminator = build_models(image_shape, num_classes, params.model)
            optimizers = make_optimizers(params, generator, discriminator)
    finally:
        keras.config.set_dtype_policy(previous)
    return generator, discriminator, *optimizers


def make_runner(
    backend: str,
    params: Params,
    models: tuple[keras.Model, keras.Model, keras.optimizers.Optimizer, keras.optimizers.Optimizer],
    images_uint8: np.ndarray,
    labels: np.ndarray,
    start_step: int,
    ema_generator: keras.Model | None = None,
    distribution: Any = None,
) -> Runner:
    """The runner the trainer (and benchmarks/train_throughput.py) uses on `backend`.
    `ema_generator` (`ema.make_ema_generator`) is needed exactly when train.ema_decay is set.
    `distribution`: None (one device), or for data parallel a tf.distribute strategy on
    TensorFlow (`distribute.tf_strategy`, the models built under its scope) or a jax Mesh on JAX
    (`distribute.jax_mesh`)."""
    tp, mp = params.train, params.model
    options = StepOptions.from_params(params)
    if backend == "jax":
        from ganpipe.training import step_jax

        return step_jax.DeviceRunner(
            *models,
            images_uint8,
            labels,
            tp.batch_size,
            mp.latent_dim,
            tp.seed,
            start_step,
            options,
            ema_generator,
            mesh=distribution,
        )
    from ganpipe.training import step_tf

    dp = {"strategy": distribution} if distribution is not None else {}
    return HostRunner(
        step_tf.make_train_step(*models, options, ema_generator, **dp),
        to_float(images_uint8),
        labels.astype(np.int32),
        tp.batch_size,
        mp.latent_dim,
        tp.seed,
        options,
    )


def sample_images(
    generator: keras.Model, num_classes: int, latent_dim: int, seed: int
) -> np.ndarray:
    """uint8 images for a grid of one row per class and SAMPLE_COLUMNS columns; the noise is fixed
    by `seed` and the same down each column."""
    z = np.random.default_rng([seed, SAMPLE_SEED]).standard_normal(
        (SAMPLE_COLUMNS, latent_dim), dtype=np.float32
    )
    z = np.tile(z, (num_classes, 1))
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), SAMPLE_COLUMNS)
    images = keras.ops.convert_to_numpy(generator([z, labels], training=False))
    return to_uint8(images)


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
    tp, mp = params.train, params.model

    # --- validate before any work ---
    data = load_prepared(data_dir)
    n, bs = len(data.train), tp.batch_size
    if bs > n:
        raise params.error(
            "train.batch_size", f"{bs} is larger than the training set ({n} images in {data_dir})"
        )
    shape, num_classes = data.image_shape, data.num_classes
    try:
        check_shape(shape, mp)
    except ValueError as e:
        key = "model.arch" if mp.arch == "dcgan_tutorial" else "data.image_size"
        raise params.error(key, str(e)) from None
    backend = check_backend(params)
    dist = distribute.plan(params, backend)  # ConfigError if the batch does not split evenly
    distribution = (distribute.tf_strategy if backend == "tensorflow" else distribute.jax_mesh)(
        dist
    )
    strategy = distribution if backend == "tensorflow" else None

    steps_per_epoch = n // bs
    total = tp.epochs * steps_per_epoch

    # --- models, optimizers, state ---
    generator, discriminator, g_opt, d_opt = build_for_training(
        params, shape, num_classes, strategy
    )
    groups = {
        "g": generator.variables,
        "d": discriminator.variables,
        "g_opt": g_opt.variables,
        "d_opt": d_opt.variables,
    }
    # With train.ema_decay, the EMA generator is what gets sampled and exported.
    ema_generator = None
    if tp.ema_decay is not None:
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            ema_generator = ema.make_ema_generator(generator)
    if ema_generator is not None:
        groups["g_ema"] = ema_generator.trainable_variables
    exported = generator if ema_generator is None else ema_generator

    ckpt = Checkpoints(
        Path(checkpoint_root) / run_key(params, data.content_hash, backend, dist.replicas)
    )
    start, history = 0, np.zeros((0, len(HISTORY_COLUMNS)))
    ckpt.remove_temps()  # of a run killed mid-write
    latest = ckpt.latest_step()
    if latest is not None and latest > total:
        print(
            f"the checkpoint at step {latest} in {ckpt.dir} is past the {total} steps asked for; "
            "discarding that run"
        )
        ckpt.clear()
    restored = ckpt.restore(groups)
    if restored is not None:
        start, history = restored
        what = "nothing to do" if start == total else f"resuming from step {start}"
        print(f"{what} in {ckpt.dir} ({total} steps)")
    else:
        ckpt.clear()  # unusable leftovers and their samples
        print(f"starting fresh in {ckpt.dir} ({total} steps)")
    if dist.distributed:
        print(
            f"data parallel over {dist.replicas} devices ({', '.join(dist.devices)}): "
            f"{bs // dist.replicas} images per device per step"
        )

    # --- the loop ---
    runner = make_runner(
        backend,
        params,
        (generator, discriminator, g_opt, d_opt),
        data.train.images,
        data.train.labels,
        start,
        ema_generator,
        distribution,
    )
    rows = [tuple(r) for r in history.tolist()]
    window: list[tuple[float, float, float]] = []
    pending: list[tuple[int, int, Any]] = []  # (step done, epoch, metrics handle), not fetched yet
    scale = readable_scale(shape)

    def write_samples(path: Path) -> Path:
        if ema_generator is not None:
            ema.copy_statistics(ema_generator, generator)  # BatchNorm statistics: the live ones
        images = sample_images(exported, num_classes, mp.latent_dim, tp.seed)
        save_grid(path, images, rows=num_classes, scale=scale)
        return path

    def flush(now: float, since: float) -> None:
        """Fetch the pending metrics in one go; check them; append history rows. images/s is
        the mean over the flushed steps (the device runs ahead of the host between fetches)."""
        values = runner.fetch([h for _, _, h in pending])
        ips = len(pending) * bs / max(now - since, 1e-9)
        for (done, epoch, _), (d_loss, g_loss, d_real, d_fake) in zip(
            pending, values.tolist(), strict=True
        ):
            if not (math.isfinite(d_loss) and math.isfinite(g_loss)):
                kept = ckpt.paths()
                where = (
                    f"the last good checkpoint is kept in {kept[-1]}"
                    if kept
                    else f"no checkpoint was written yet (checkpoint dir {ckpt.dir})"
                )
                bad = d_loss if not math.isfinite(d_loss) else g_loss
                raise TrainingError(
                    f"loss became {bad} at step {done} (d_loss={d_loss:.4g}, "
                    f"g_loss={g_loss:.4g}); {where}. Try lower learning rates."
                )
            rows.append((done, epoch, d_loss, g_loss, d_real, d_fake, ips))
            window.append((d_loss, g_loss, ips))
        pending.clear()

    bar = tqdm(total=total, initial=start, disable=not progress, file=sys.stderr, unit="step")
    loop_start = last_flush = time.perf_counter()
    perm_epoch = -1
    try:
        for step in range(start, total):
            epoch = step // steps_per_epoch
            if epoch != perm_epoch:
                runner.begin_epoch(np.random.default_rng([tp.seed, epoch]).permutation(n))
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
                tracker.log_metrics(
                    {"d_loss": d_mean, "g_loss": g_mean, "images_per_sec": ips_mean}, step=done
                )
                bar.set_postfix(
                    {
                        "img/s": f"{ips_mean:.0f}",
                        "d_loss": f"{d_mean:.3f}",
                        "g_loss": f"{g_mean:.3f}",
                    },
                    refresh=False,
                )
            if sample_now or ckpt_now:
                runner.sync_to_keras()
            if sample_now:
                png = write_samples(ckpt.samples_dir / f"step_{done:06d}.png")
                tracker.log_artifact(png, "samples")
            if ckpt_now:
                ckpt.save(done, groups, np.asarray(rows, np.float64))
            if sample_now or ckpt_now:
                last_flush = time.perf_counter()  # writing files is not training time
    finally:
        bar.close()
    loop_seconds = time.perf_counter() - loop_start
    trained = total - start
    images_per_sec = trained * bs / loop_seconds if trained else None

    # --- outputs, swapped in whole ---
    model_dir = Path(model_dir)
    last = dict(zip(HISTORY_COLUMNS, rows[-1], strict=True)) if rows else {}
    summary: dict[str, Any] = {
        "steps": total,
        "epochs": tp.epochs,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": bs,
        "resumed_from_step": start,
        "steps_trained": trained,
        "d_loss": last.get("d_loss"),
        "g_loss": last.get("g_loss"),
        "d_real": last.get("d_real"),
        "d_fake": last.get("d_fake"),
        "images_per_sec": images_per_sec,
        "train_seconds": loop_seconds,
        "run_key": ckpt.dir.name,
        "checkpoint_dir": str(ckpt.dir),
        "backend": backend,
        "arch": mp.arch,
        "precision": tp.precision,
        "distribute": dist.mode,
        "replicas": dist.replicas,
        "loss": tp.loss,
        "exported_generator": "ema" if ema_generator is not None else "live",
        "image_shape": list(shape),
        "num_classes": num_classes,
        "data_content_hash": data.content_hash,
    }
    if ema_generator is not None:
        ema.copy_statistics(ema_generator, generator)
    with atomic_dir(model_dir) as out_dir:
        exported.save(out_dir / "generator.keras")
        discriminator.save(out_dir / "discriminator.keras")
        hist = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
        hist = hist.astype({"step": "int64", "epoch": "int64"})
        hist.to_csv(out_dir / "history.csv", index=False)
        if ckpt.samples_dir.is_dir():
            shutil.copytree(ckpt.samples_dir, out_dir / "samples")
        write_samples(out_dir / "samples" / "final.png")
        summary["seconds"] = time.perf_counter() - t_start
        write_json(out_dir / "train_summary.json", summary)
    tracker.log_artifact(model_dir / "samples" / "final.png", "samples")
    final_metrics = {"train_seconds": loop_seconds}
    if images_per_sec is not None:
        final_metrics["train_images_per_sec"] = images_per_sec
    tracker.log_metrics(final_metrics)
    return summary
