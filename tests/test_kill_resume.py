"""On the CPU with deterministic ops, a `ganpipe train` killed with SIGKILL mid-way and then rerun
ends with the same weights (bit for bit) and the same history as an uninterrupted run, and the
killed run leaves nothing partial behind. With every training option that draws or keeps state on,
in two runs since ADA and DiffAugment exclude each other: EMA + DiffAugment on the resnet arch
with spectral norm, and EMA + wgan_gp + ADA (whose p, in the history's ada_p, must match too) on
the conditional arch with class BatchNorm and spectral norm.

Everything goes through the real CLI in subprocesses: `ganpipe prepare` (8x8 digits, 20 per
class, once), then per option set `ganpipe train` killed once a checkpoint exists, rerun to
completion, and an uninterrupted `ganpipe train` in another directory for comparison.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

import ganpipe.gan.models  # noqa: F401  (registers the layers the saved models use)
from ganpipe.lock import LOCK_NAME

GANPIPE = str(Path(sys.executable).parent / "ganpipe")
EPOCHS = 20  # x 12 steps of 16 images: killed near step 40-60 of 240, with seconds to spare
CHECKPOINT_EVERY = 40
# The option sets (train params, indented as in params_yaml). ADA: p moves by 16 * 3 / 2000 every
# third step from about step 30 (D's faster learning rate gets it sure of the reals early), so the
# checkpoint the killed run resumes from (every 40 steps) holds a moved p and a part-counted
# interval.
OPTIONS = {
    "diffaugment": '  diffaugment: "color,translation,cutout"',
    "ada": "\n".join(
        [
            "  loss: wgan_gp",
            "  d_learning_rate: 0.001",
            "  ada: true",
            "  ada_interval: 3",
            "  ada_kimg: 2.0",
            "  ada_target: 0.2",
        ]
    ),
}


# The models of each set: every model option with state of its own (class BatchNorm's per-class
# statistics, spectral norm's power-iteration vectors, the projection's normalised embedding).
MODELS = {
    "diffaugment": "{arch: resnet, latent_dim: 8, filters: 16, spectral_norm: true}",
    "ada": "{latent_dim: 8, embed_dim: 4, filters: 16, class_bn: true, spectral_norm: true}",
}


def params_yaml(options: str) -> str:
    """The params of a run with option set `options` (a key of OPTIONS)."""
    return f"""\
data: {{source: digits, max_per_class: 20}}
model: {MODELS[options]}
train:
  epochs: {EPOCHS}
  batch_size: 16
  sample_every: 400
  checkpoint_every: {CHECKPOINT_EVERY}
  ema_decay: 0.9
{OPTIONS[options]}
tracking: {{enabled: false}}
"""


ENV = {
    **os.environ,
    "KERAS_BACKEND": "tensorflow",
    "TF_DETERMINISTIC_OPS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "PYTHONWARNINGS": "ignore",
}
LOSS_COLUMNS = ["step", "epoch", "d_loss", "g_loss", "d_real", "d_fake", "ada_p"]


def ganpipe(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [GANPIPE, *args, "--quiet", "--params", str(workdir / "params.yaml")],
        cwd=workdir,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def checkpoints(workdir: Path) -> list[Path]:
    return sorted((workdir / "checkpoints").glob("*/ckpt_*.npz"))


def hidden(root: Path) -> list[Path]:
    """What atomic writes leave behind when killed: dot-named temp files and directories (not the
    workspace's lock file, which stays, released by the kernel: ganpipe/lock.py)."""
    return sorted(p for p in root.rglob(".*") if p.name not in ("params.yaml", LOCK_NAME))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The prepared data, made once (the data params are the same for every option set)."""
    root = tmp_path_factory.mktemp("prepare")
    (root / "params.yaml").write_text(params_yaml("diffaugment"))
    finish(ganpipe(root, "prepare"))
    return root / "data" / "prepared"


@pytest.fixture
def workdirs(request, prepared, tmp_path_factory) -> tuple[Path, Path]:
    killed, straight = (tmp_path_factory.mktemp(name) for name in ("killed", "straight"))
    for d in (killed, straight):
        (d / "params.yaml").write_text(params_yaml(request.param))
        # Same data in all (the prepared data is deterministic; linking saves processes).
        (d / "data").mkdir()
        os.symlink(prepared, d / "data" / "prepared")
    return killed, straight


@pytest.mark.parametrize("workdirs", sorted(OPTIONS), indirect=True)
def test_sigkilled_run_resumes_to_the_uninterrupted_result(workdirs):
    killed, straight = workdirs
    uninterrupted = ganpipe(straight, "train")  # alongside: the machine has cores to spare
    run = ganpipe(killed, "train")
    deadline = time.monotonic() + 60
    while not checkpoints(killed):
        assert run.poll() is None, f"train exited before its first checkpoint: {run.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint after 60 s"
        time.sleep(0.01)
    time.sleep(0.2)  # a little past the first checkpoint: mid-step, perhaps mid-write
    assert run.poll() is None, "the run finished before it could be killed: make it longer"
    os.kill(run.pid, signal.SIGKILL)
    run.communicate(timeout=30)
    assert run.returncode == -signal.SIGKILL

    # Nothing partial: no model outputs at all, and only whole checkpoints (temp files of an
    # interrupted atomic write, if any, are dot-named and never mistaken for a checkpoint).
    assert not (killed / "models").exists()
    ckpts = checkpoints(killed)
    killed_at = int(ckpts[-1].stem.split("_")[1])
    assert 0 < killed_at < EPOCHS * 12
    for path in ckpts:
        with np.load(path) as f:  # every checkpoint file there is complete and readable
            assert int(f["step"]) == int(path.stem.split("_")[1])
    leftovers = hidden(killed)
    ada = "ada: true" in (killed / "params.yaml").read_text()
    if ada:  # what the resumed run must pick up: p, and the signs counted since the last move
        with np.load(ckpts[-1]) as f:
            p, _, count = (float(f[f"ada.{i:05d}"]) for i in range(3))
        assert p > 0.0 and (count > 0.0 or killed_at % 3 == 0)

    out = finish(ganpipe(killed, "train"))
    assert f"resuming from step {killed_at}" in out
    finish(uninterrupted)
    assert not hidden(killed), f"temp files left behind: {leftovers} -> {hidden(killed)}"
    assert not hidden(straight)

    a, b = (d / "models" for d in (killed, straight))
    assert sorted(p.name for p in a.rglob("*")) == sorted(p.name for p in b.rglob("*"))
    for name in ("generator.keras", "discriminator.keras"):
        wa = keras.models.load_model(a / name).get_weights()
        wb = keras.models.load_model(b / name).get_weights()
        assert len(wa) == len(wb)
        for x, y in zip(wa, wb, strict=True):
            np.testing.assert_array_equal(x, y)
    ha, hb = (pd.read_csv(m / "history.csv") for m in (a, b))
    assert len(ha) == len(hb) == EPOCHS * 12
    pd.testing.assert_frame_equal(ha[LOSS_COLUMNS], hb[LOSS_COLUMNS], check_exact=True)
    if ada:
        assert ha["ada_p"].iloc[killed_at:].nunique() > 2  # p moved on after the kill
    else:
        assert (ha["ada_p"] == 0.0).all()
