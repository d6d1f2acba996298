"""The train stage: prepared data in, `generator.keras` and friends out.

The loop is backend-neutral: NumPy batches in, a backend-specific step (`step_tf.py`) per batch,
losses back as floats. Everything is driven by one step counter, and every random draw is seeded
from (train.seed, epoch) for the shuffle and (train.seed, step) for the noise, so a run resumed from
a checkpoint draws exactly what an uninterrupted run would have drawn.

Outputs in `model_dir`, swapped in as a whole at the end (nothing partial on failure):
`generator.keras`, `discriminator.keras`, `history.csv` (one row per step), `samples/` (a grid every
`train.sample_every` steps and `final.png`; one row per class, fixed noise per column) and
`train_summary.json`. Checkpoints: see `checkpoint.py`.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
from tqdm import tqdm

from ganpipe.config import Params
from ganpipe.data.prepared import load_prepared, to_float, to_uint8
from ganpipe.errors import TrainingError
from ganpipe.images import readable_scale, save_grid
from ganpipe.io import atomic_dir, write_json
from ganpipe.models.dcgan import build_discriminator, build_generator, upsamplings
from ganpipe.tracking import NULL_TRACKER, Tracker
from ganpipe.training.checkpoint import HISTORY_COLUMNS, Checkpoints, run_key

LOG_EVERY = 20  # steps between tracker.log_metrics calls (means over the window)
SAMPLE_COLUMNS = 10
SAMPLE_SEED = 0x5A3E  # the sample grid's fixed noise: default_rng([train.seed, SAMPLE_SEED])


def _make_step(backend: str) -> Callable[..., Callable[..., dict[str, float]]]:
    if backend == "tensorflow":
        from ganpipe.training import step_tf

        return step_tf.make_train_step
    raise TrainingError(
        f"no train step for the Keras backend {backend!r} yet; set KERAS_BACKEND=tensorflow"
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
        upsamplings(shape)
    except ValueError as e:
        raise params.error("data.image_size", str(e)) from None
    backend = keras.backend.backend()
    make_step = _make_step(backend)

    steps_per_epoch = n // bs
    total = tp.epochs * steps_per_epoch

    # --- models, optimizers, state ---
    keras.utils.set_random_seed(tp.seed)
    generator = build_generator(shape, num_classes, mp)
    discriminator = build_discriminator(shape, num_classes, mp)
    g_opt = keras.optimizers.Adam(tp.g_learning_rate, beta_1=tp.beta_1)
    d_opt = keras.optimizers.Adam(tp.d_learning_rate, beta_1=tp.beta_1)
    g_opt.build(generator.trainable_variables)
    d_opt.build(discriminator.trainable_variables)
    groups = {
        "g": generator.variables,
        "d": discriminator.variables,
        "g_opt": g_opt.variables,
        "d_opt": d_opt.variables,
    }

    ckpt = Checkpoints(Path(checkpoint_root) / run_key(params, data.content_hash))
    start, history = 0, np.zeros((0, len(HISTORY_COLUMNS)))
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

    # --- the loop ---
    step_fn = make_step(generator, discriminator, g_opt, d_opt)
    x_train = to_float(data.train.images)
    y_train = data.train.labels.astype(np.int32)
    rows = [tuple(r) for r in history.tolist()]
    window: list[tuple[float, float, float]] = []
    scale = readable_scale(shape)

    def write_samples(path: Path) -> Path:
        images = sample_images(generator, num_classes, mp.latent_dim, tp.seed)
        save_grid(path, images, rows=num_classes, scale=scale)
        return path

    bar = tqdm(total=total, initial=start, disable=not progress, file=sys.stderr, unit="step")
    loop_start = time.perf_counter()
    perm, perm_epoch = None, -1
    try:
        for step in range(start, total):
            epoch, b = divmod(step, steps_per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = np.random.default_rng([tp.seed, epoch]).permutation(n), epoch
            idx = perm[b * bs : (b + 1) * bs]
            noise = np.random.default_rng([tp.seed, step]).standard_normal(
                (bs, mp.latent_dim), dtype=np.float32
            )
            t = time.perf_counter()
            out = step_fn(x_train[idx], y_train[idx], noise)
            ips = bs / max(time.perf_counter() - t, 1e-9)
            done = step + 1

            bad = [k for k in ("d_loss", "g_loss") if not math.isfinite(out[k])]
            if bad:
                kept = ckpt.paths()
                where = (
                    f"the last good checkpoint is kept in {kept[-1]}"
                    if kept
                    else f"no checkpoint was written yet (checkpoint dir {ckpt.dir})"
                )
                raise TrainingError(
                    f"loss became {out[bad[0]]} at step {done} (d_loss={out['d_loss']:.4g}, "
                    f"g_loss={out['g_loss']:.4g}); {where}. Try lower learning rates."
                )

            rows.append(
                (done, epoch + 1, out["d_loss"], out["g_loss"], out["d_real"], out["d_fake"], ips)
            )
            window.append((out["d_loss"], out["g_loss"], ips))
            bar.update(1)
            if done % LOG_EVERY == 0 or done == total:
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
            if done % tp.sample_every == 0:
                png = write_samples(ckpt.samples_dir / f"step_{done:06d}.png")
                tracker.log_artifact(png, "samples")
            if done % tp.checkpoint_every == 0 or done == total:
                ckpt.save(done, groups, np.asarray(rows, np.float64))
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
        "image_shape": list(shape),
        "num_classes": num_classes,
        "data_content_hash": data.content_hash,
    }
    with atomic_dir(model_dir) as out_dir:
        generator.save(out_dir / "generator.keras")
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
