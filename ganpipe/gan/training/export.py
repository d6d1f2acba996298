"""What a run leaves in `model_dir`, and its sample grids.

`export` writes the whole model dir in a temp dir and swaps it in at once (io.atomic_dir), so a
failure leaves the previous outputs as they were: `generator.keras` (the EMA generator under
train.ema_decay, else the live one), `discriminator.keras`, `history.csv` (one row per step),
`samples/` (the grids written every `train.sample_every` steps, kept with the checkpoints so a
resumed run has them all, and `final.png`) and `train_summary.json` (what `export` returns; with
train.ada it also has `ada_p`, ADA's p at the end of training).
A grid has one row per class and SAMPLE_COLUMNS columns, with fixed noise per column.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from ganpipe.data.prepared import to_uint8
from ganpipe.gan.training import ema
from ganpipe.gan.training.checkpoint import HISTORY_COLUMNS
from ganpipe.gan.training.losses import METRICS
from ganpipe.gan.training.plan import Run
from ganpipe.gan.training.state import GanState
from ganpipe.images import readable_scale, save_grid
from ganpipe.io import atomic_dir, write_json

SAMPLE_COLUMNS = 10
SAMPLE_SEED = 0x5A3E  # the sample grid's fixed noise: default_rng([train.seed, SAMPLE_SEED])


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


def write_samples(run: Run, state: GanState, path: Path) -> Path:
    """The exported generator's sample grid at `path`. The EMA generator first gets the live
    generator's BatchNorm statistics (they are not averaged: ema.py)."""
    if state.ema_generator is not None:
        ema.copy_statistics(state.ema_generator, state.generator)
    num_classes, seed = run.data.num_classes, run.params.train.seed
    images = sample_images(state.exported, num_classes, run.params.model.latent_dim, seed)
    save_grid(path, images, rows=num_classes, scale=readable_scale(run.data.image_shape))
    return path


def export(
    run: Run,
    state: GanState,
    rows: list[tuple[float, ...]],
    start: int,
    loop_seconds: float,
    model_dir: Path,
    t_start: float,
) -> dict[str, Any]:
    """Swap in `model_dir` as a whole for a run that started at step `start` and wrote the history
    `rows`; returns the summary also in `train_summary.json` (`seconds` since `t_start`)."""
    tp, trained = run.params.train, run.total - start
    last = dict(zip(HISTORY_COLUMNS, rows[-1], strict=True)) if rows else {}
    summary: dict[str, Any] = {
        "steps": run.total,
        "epochs": tp.epochs,
        "steps_per_epoch": run.steps_per_epoch,
        "batch_size": tp.batch_size,
        "resumed_from_step": start,
        "steps_trained": trained,
        **{k: last.get(k) for k in METRICS if k != "ada_p"},
        "images_per_sec": trained * tp.batch_size / loop_seconds if trained else None,
        "train_seconds": loop_seconds,
        "run_key": run.ckpt.dir.name,
        "checkpoint_dir": str(run.ckpt.dir),
        "backend": run.backend,
        "arch": run.params.model.arch,
        "precision": tp.precision,
        "distribute": run.dist.mode,
        "replicas": run.dist.replicas,
        "loss": tp.loss,
        # as trained: train.class_balance/ada/diffaugment's auto resolved for the data
        "class_balance": tp.class_balance,
        "ada": tp.ada,
        "diffaugment": tp.diffaugment,
        "exported_generator": "ema" if state.ema_generator is not None else "live",
        # The state's p (synced after the last step): the p a continued run would start from.
        **({"ada_p": state.ada_p} if state.ada_state is not None else {}),
        "image_shape": list(run.data.image_shape),
        "num_classes": run.data.num_classes,
        "data_content_hash": run.data.content_hash,
    }
    if state.ema_generator is not None:
        ema.copy_statistics(state.ema_generator, state.generator)
    with atomic_dir(model_dir) as out_dir:
        state.exported.save(out_dir / "generator.keras")
        state.discriminator.save(out_dir / "discriminator.keras")
        hist = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
        hist = hist.astype({"step": "int64", "epoch": "int64"})
        hist.to_csv(out_dir / "history.csv", index=False)
        if run.ckpt.samples_dir.is_dir():
            shutil.copytree(run.ckpt.samples_dir, out_dir / "samples")
        write_samples(run, state, out_dir / "samples" / "final.png")
        summary["seconds"] = time.perf_counter() - t_start
        write_json(out_dir / "train_summary.json", summary)
    return summary
