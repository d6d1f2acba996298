"""Sizes and params of the tiny trainer runs shared by the TensorFlow and JAX trainer tests (the
prepared data is conftest.py's `data_dir`). No TensorFlow import: the JAX tests also run on GPU
machines that have none."""

from __future__ import annotations

from ganpipe.config import Params

N_TRAIN, BATCH = 200, 32
STEPS_PER_EPOCH = N_TRAIN // BATCH  # 6


def tiny(**train) -> Params:
    return Params.model_validate(
        {
            "model": {"latent_dim": 8, "embed_dim": 4, "filters": 16},
            "train": {"epochs": 1, "batch_size": BATCH, "sample_every": 4, "checkpoint_every": 4}
            | train,
        }
    )
