"""Sizes and params of the tiny trainer runs shared by the TensorFlow and JAX trainer tests (the
prepared data is conftest.py's `data_dir`). No TensorFlow import: the JAX tests also run on GPU
machines that have none."""

from __future__ import annotations

from ganpipe.config import Params

N_TRAIN, BATCH = 200, 32
STEPS_PER_EPOCH = N_TRAIN // BATCH  # 6


def tiny(**train) -> Params:
    """Tiny models; every training option off (EMA included, on by default) unless given."""
    base = {"epochs": 1, "batch_size": BATCH, "sample_every": 4, "checkpoint_every": 4}
    return Params.model_validate(
        {
            "model": {"latent_dim": 8, "embed_dim": 4, "filters": 16},
            "train": base
            | {"ema_decay": None, "class_balance": False, "diffaugment": "", "ada": False}
            | train,
        }
    )


def tiny_with(spectral_norm: bool = False, embed_noise: float = 0.0, **train) -> Params:
    """`tiny(**train)`, with model.spectral_norm and model.embed_noise."""
    p = tiny(**train)
    model = p.model.model_dump() | {"spectral_norm": spectral_norm, "embed_noise": embed_noise}
    return Params.model_validate({"model": model, "train": p.train.model_dump()})


# Tiny runs with the training options on (TensorFlow and JAX tests): name -> (spectral_norm, train).
OPTION_RUNS = {
    "hinge_sn": (True, {"loss": "hinge"}),
    "wgan_gp": (False, {"loss": "wgan_gp"}),
    "ema": (False, {"ema_decay": 0.9}),
    "diffaugment": (False, {"diffaugment": "color,translation,cutout"}),
}
# Resume exactness with every random path and the EMA on.
RESUME_OPTIONS = {"loss": "wgan_gp", "ema_decay": 0.9, "diffaugment": "color,translation,cutout"}
# ADA (ganpipe/gan/training/ada.py) set up so that p moves within a tiny run: D learns fast (its
# learning rate), the target is low, and each interval (2 steps of 32 images) moves p by 0.1.
ADA = {
    "ada": True,
    "ada_interval": 2,
    "ada_kimg": 0.64,
    "ada_target": 0.2,
    "d_learning_rate": 2e-3,
}
# Resume exactness with ADA and every option it goes with (ADA and DiffAugment exclude each other).
ADA_RESUME_OPTIONS = {"loss": "wgan_gp", "ema_decay": 0.9} | ADA


def gsr_effect(one_step) -> dict[str, float]:
    """The gSR penalty of a class_bn generator whose class-conditional gains and biases were
    perturbed (so the penalty is not 0), before and after one train step with model.class_bn_gsr
    0 and 1000 from the same start: `one_step(state, images, labels, noise)` runs the backend's
    step and leaves the result in the Keras variables. Backend-neutral (no TensorFlow import)."""
    import keras
    import numpy as np

    from ganpipe.gan.models import build_models
    from ganpipe.gan.training import gsr
    from ganpipe.gan.training.losses import StepOptions
    from ganpipe.gan.training.state import GanState, make_optimizers

    out: dict[str, float] = {}
    for weight in (0.0, 1000.0):
        keras.utils.set_random_seed(0)
        p = tiny()
        model = p.model.model_dump() | {"class_bn": True, "class_bn_gsr": weight}
        p = Params.model_validate({"model": model, "train": p.train.model_dump()})
        g, d = build_models((8, 8, 1), 3, p.model)
        found = gsr.class_bn_parameters(g)
        rng = np.random.default_rng(0)
        for v, offset in found:
            v.assign(offset + 0.1 * rng.standard_normal(tuple(v.shape)).astype(np.float32))

        def penalty(found=found) -> float:
            values, offsets = [v.value for v, _ in found], [o for _, o in found]
            return float(np.asarray(gsr.penalty(values, offsets)))

        out["before"] = penalty()
        g_opt, d_opt = make_optimizers(p, g, d)
        state = GanState(g, d, g_opt, d_opt, options=StepOptions.from_params(p))
        images = rng.uniform(-1, 1, (6, 8, 8, 1)).astype(np.float32)
        labels = np.array([0, 1, 2, 0, 1, 2], np.int32)
        one_step(state, images, labels, rng.standard_normal((6, 8)).astype(np.float32))
        out[f"after_{weight:g}"] = penalty()
        out["parameters"] = len(found)
    return out
