"""Resumable training state: one `.npz` per checkpoint in `<checkpoint_root>/<run_key>/`.

The run key hashes everything that shapes the training trajectory: the model params, the train
params except `epochs`, `sample_every`, `checkpoint_every`, `backend` (a check only) and
`distribute`, the Keras backend actually used (its noise and numerics differ), the number of
data-parallel replicas when above 1 (distribute.py), the data's content hash, and the source of
the code that trains (`ganpipe.registry.CHECKPOINT_CODE`: ganpipe/gan/ and ganpipe/data/, through
`keys.source_fingerprint`). So a rerun with the same params, data and code resumes where the last
one stopped, a run with more epochs continues it (fewer epochs than a checkpoint already covers:
the trainer starts that key afresh), and any other change starts fresh in a directory of its own.
The code is in the key because a finished checkpoint would otherwise outlive the code that wrote
it: after an edit to the trainer, `dvc repro` reruns `train`, which would find that checkpoint,
report "nothing to do" and export a model the current code never trained. Any edit to those files,
a comment included, starts afresh: that errs on the side of training, never of reusing.

The params added after the format settled (`ADDED_LATER`: loss, gp_weight, ema_decay, diffaugment,
the ada ones, spectral_norm, embed_noise, shared_lowres, class_bn_gsr) are in the key only when
they differ from their defaults (that once let runs from before them keep their keys; with the
code in the key, it just leaves defaults out); gp_weight only counts under loss wgan_gp, the only
loss that uses it, and ada_policy, ada_target, ada_interval and ada_kimg only with train.ada on.

Checkpoints and sample grids are written atomically (temp file, then rename), so a run killed at
any moment, SIGKILL included, leaves only whole checkpoints; the next run deletes the temp files
such a kill can leave (`remove_temps`) and resumes from the newest checkpoint, ending with the
same weights as a run never interrupted (tests/test_kill_resume.py).

A checkpoint holds every variable of the generator and the discriminator (BatchNorm moving
statistics and spectral norm's power-iteration vectors included), both optimizers' variables, the
EMA generator's weights under train.ema_decay (group `g_ema`), ADA's p and accumulators under
train.ada (group `ada`), the step and the history rows so far (HISTORY_COLUMNS).
Backend-neutral: values are read with `Variable.numpy()`, written back with `Variable.assign`.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import keras
import numpy as np

from ganpipe.config import Params
from ganpipe.errors import DataError
from ganpipe.gan.training.losses import METRICS
from ganpipe.io import read_npz, save_npz
from ganpipe.keys import json_sha256, source_fingerprint
from ganpipe.registry import CHECKPOINT_CODE

# Bump when the models or the step change in a way that makes old checkpoints unusable.
FORMAT_VERSION = 3  # 3: history rows gained ada_p
# Train params that do not change what is learnt, only how long or how often things are written
# (`backend` only checks $KERAS_BACKEND; the backend in use is part of the key by itself).
# `distribute` resolves to a replica count, which is what goes in the key (when above 1).
NOT_IN_KEY = frozenset({"epochs", "sample_every", "checkpoint_every", "backend", "distribute"})
# Params whose defaults are left out of the key (see the module docstring).
ADDED_LATER = {
    "model": ("spectral_norm", "embed_noise", "shared_lowres", "class_bn_gsr"),
    "train": (
        "loss",
        "gp_weight",
        "ema_decay",
        "diffaugment",
        "ada",
        "ada_policy",
        "ada_target",
        "ada_interval",
        "ada_kimg",
    ),
}
# The defaults ADDED_LATER compares with where today's default is `auto` (resolved before the key
# is named): diffaugment's was "" and ada's false, and auto that resolves to off keeps the keys
# it had.
KEY_DEFAULTS = {"train": {"diffaugment": "", "ada": False}}
# Only used with train.ada on: left out of the key otherwise.
ADA_PARAMS = ("ada_policy", "ada_target", "ada_interval", "ada_kimg")
# history.csv's and a checkpoint's history columns: the step's metrics (losses.METRICS) between
# the step and images/s.
HISTORY_COLUMNS = ("step", "epoch", *METRICS, "images_per_sec")
_NAME = re.compile(r"^ckpt_(\d+)\.npz$")

log = logging.getLogger(__name__)

VariableGroups = Mapping[str, Sequence[keras.Variable]]


def run_key(
    params: Params, content_hash: str, backend: str | None = None, replicas: int = 1
) -> str:
    """A short hash naming this (model, train, backend, replicas, data, code) combination; see
    the module docstring. `backend` defaults to Keras's."""
    sections = {
        "model": params.model.model_dump(),
        "train": params.train.model_dump(exclude=set(NOT_IN_KEY)),
    }
    for section, keys in ADDED_LATER.items():
        defaults = type(getattr(params, section))().model_dump() | KEY_DEFAULTS.get(section, {})
        for key in keys:
            if sections[section][key] == defaults[key]:
                del sections[section][key]
    if params.train.loss != "wgan_gp":
        sections["train"].pop("gp_weight", None)
    if params.train.ada is not True:
        for key in ADA_PARAMS:
            sections["train"].pop(key, None)
    return json_sha256(
        {
            "format": FORMAT_VERSION,
            "backend": backend or keras.backend.backend(),
            **sections,
            "data": content_hash,
            **({"replicas": replicas} if replicas > 1 else {}),
            "code": source_fingerprint(*CHECKPOINT_CODE),
        },
        length=10,
    )


class Checkpoints:
    """The checkpoints of one run key, newest last; keeps the last `keep`."""

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        self.dir = Path(directory)
        self.keep = keep

    @property
    def samples_dir(self) -> Path:
        """Sample grids written during training live here, so a resumed run keeps earlier ones."""
        return self.dir / "samples"

    def paths(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest_step(self) -> int | None:
        paths = self.paths()
        return int(_NAME.match(paths[-1].name).group(1)) if paths else None

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def remove_temps(self) -> list[Path]:
        """Delete what an interrupted atomic write left (a run killed with SIGKILL mid-save gets no
        `finally`): the dot-named temp files beside the checkpoints and the sample grids. Never a
        checkpoint: those only ever appear whole, by rename. Returns what was deleted."""
        removed = []
        for folder in (self.dir, self.samples_dir):
            if folder.is_dir():
                for p in folder.glob(".*"):
                    if p.is_file():
                        p.unlink(missing_ok=True)
                        removed.append(p)
        return removed

    def save(self, step: int, groups: VariableGroups, history: np.ndarray) -> Path:
        arrays = {
            f"{group}.{i:05d}": v.numpy()
            for group, variables in groups.items()
            for i, v in enumerate(variables)
        }
        path = self.dir / f"ckpt_{step:07d}.npz"
        save_npz(path, step=np.int64(step), history=np.asarray(history, np.float64), **arrays)
        for old in self.paths()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def restore(self, groups: VariableGroups) -> tuple[int, np.ndarray] | None:
        """Load the newest usable checkpoint into `groups`; returns (step, history) or None.

        A checkpoint that cannot be read (truncated, overwritten) or does not match the variables
        is skipped with a warning naming it, in favour of the one before it; when none is usable
        the warning says training starts afresh (the caller clears the directory)."""
        paths = self.paths()
        for n, path in enumerate(reversed(paths)):
            try:
                step, history, values = _read(path, groups)
            except DataError as e:
                fallback = "training starts afresh"
                if n + 1 < len(paths):
                    fallback = f"falling back to the previous one, {paths[-n - 2].name}"
                log.warning("unusable checkpoint: %s; %s", e, fallback)
                continue
            for group, variables in groups.items():
                for v, value in zip(variables, values[group], strict=True):
                    v.assign(value)
            return step, history
        return None


def _read(
    path: Path, groups: VariableGroups
) -> tuple[int, np.ndarray, dict[str, list[np.ndarray]]]:
    """The step, history and every group's values of the checkpoint at `path`, all read and
    checked before any is assigned; DataError naming the file when it is damaged or holds other
    variables than `groups`."""
    arrays = read_npz(path)
    try:
        step = int(arrays["step"])
        history = arrays["history"]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: no step and history ({e!r})") from None
    if history.shape != (step, len(HISTORY_COLUMNS)):
        raise DataError(
            f"{path}: history has shape {history.shape}, expected ({step}, {len(HISTORY_COLUMNS)})"
        )
    values: dict[str, list[np.ndarray]] = {}
    for group, variables in groups.items():
        names = [f"{group}.{i:05d}" for i in range(len(variables))]
        count = sum(1 for k in arrays if k.startswith(f"{group}."))
        if count != len(variables) or any(k not in arrays for k in names):
            raise DataError(f"{path}: {group}: {count} arrays for {len(variables)} variables")
        values[group] = [arrays[k] for k in names]
        for i, (v, value) in enumerate(zip(variables, values[group], strict=True)):
            if tuple(value.shape) != tuple(v.shape):
                raise DataError(f"{path}: {group}.{i} ({v.path}): shape {value.shape} != {v.shape}")
    return step, history, values
