"""What a training run is, settled before any work: `plan_run` loads the data, checks every param
that can fail (ConfigError naming the key, so an impossible run writes nothing), resolves the
backend and the device plan, and names the run's checkpoints (checkpoint.run_key)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras

from ganpipe.config import Params
from ganpipe.data.prepared import Prepared, load_prepared
from ganpipe.gan.models import check_shape
from ganpipe.gan.training import distribute
from ganpipe.gan.training.checkpoint import Checkpoints, run_key
from ganpipe.gan.training.imbalance import resolve_auto

BACKENDS = ("tensorflow", "jax")


@dataclass(frozen=True)
class Run:
    """The params, the data, the Keras backend, the device plan and this run key's checkpoints."""

    params: Params
    data: Prepared
    backend: str
    dist: distribute.Plan
    ckpt: Checkpoints

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.train) // self.params.train.batch_size

    @property
    def total(self) -> int:
        """The step the run ends at, counted from the first step of the run key."""
        return self.params.train.epochs * self.steps_per_epoch


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


def plan_run(params: Params, data_dir: str | Path, checkpoint_root: str | Path) -> Run:
    """The run of `params` on the prepared data in `data_dir`, its checkpoints under
    `checkpoint_root`; ConfigError for anything that cannot train. The run's params have
    train.class_balance/ada/diffaugment's `auto` resolved for this data (imbalance.resolve_auto),
    which it prints when it turns them on."""
    data = load_prepared(data_dir)
    params, why = resolve_auto(params, data.train.labels, data.num_classes)
    if why:
        print(why)
    mp, bs = params.model, params.train.batch_size
    if bs > len(data.train):
        raise params.error(
            "train.batch_size",
            f"{bs} is larger than the training set ({len(data.train)} images in {data_dir})",
        )
    try:
        check_shape(data.image_shape, mp)
    except ValueError as e:
        key = "model.arch" if mp.arch == "dcgan_tutorial" else "data.image_size"
        raise params.error(key, str(e)) from None
    backend = check_backend(params)
    dist = distribute.plan(params, backend)  # ConfigError if the batch does not split evenly
    key = run_key(params, data.content_hash, backend, dist.replicas)
    return Run(params, data, backend, dist, Checkpoints(Path(checkpoint_root) / key))
