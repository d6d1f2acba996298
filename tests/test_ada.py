"""Adaptive discriminator augmentation (`train.ada`, ganpipe/gan/training/ada.py): the augmentation at
p = 0, 1 and in between, the p rule, and training with it on TensorFlow (in this process) and JAX
(in a subprocess, started first so that it runs while the TensorFlow tests do): p moves, the
history and checkpoints hold it, and a resumed run ends exactly where an uninterrupted one does.
No TensorFlow import at module level: the JAX machines have none (there the in-process training
tests are skipped, the rest run on JAX)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from keras import ops

from ganpipe.config import load_params
from ganpipe.errors import ConfigError
from ganpipe.gan.training import ada, diffaugment, train
from ganpipe.gan.training.checkpoint import HISTORY_COLUMNS, Checkpoints, run_key
from ganpipe.gan.training.losses import METRICS, StepOptions, gan_losses
from ganpipe.tracker import Tracker
from tests.helpers import has_jax
from tests.train_fixtures import ADA, ADA_RESUME_OPTIONS, STEPS_PER_EPOCH, tiny

REPO = Path(__file__).resolve().parents[1]
POLICY = ("color", "translation", "cutout")
INTERVAL, ADJUST = ADA["ada_interval"], 32 * ADA["ada_interval"] / (ADA["ada_kimg"] * 1000)
requires_tf = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="trains in this process on TensorFlow"
)

JAX_CHECKS = r"""
import json, sys
from pathlib import Path

import numpy as np
import pandas as pd

from ganpipe.gan.training import train
from ganpipe.gan.training.checkpoint import Checkpoints
from tests.train_fixtures import ADA, tiny

data_dir, tmp = Path(sys.argv[1]), Path(sys.argv[2])
first = train(tiny(epochs=1, **ADA), data_dir, tmp / "m1", tmp / "ck", progress=False)
resumed = train(tiny(epochs=2, **ADA), data_dir, tmp / "m2", tmp / "ck", progress=False)
straight = train(tiny(epochs=2, **ADA), data_dir, tmp / "m3", tmp / "ck2", progress=False)


def final_arrays(summary):
    with np.load(Checkpoints(Path(summary["checkpoint_dir"])).paths()[-1]) as f:
        return {k: f[k] for k in f.files if k != "history"}


a, b = final_arrays(resumed), final_arrays(straight)
h2, h3 = (pd.read_csv(tmp / m / "history.csv").drop(columns="images_per_sec") for m in ("m2", "m3"))
print(json.dumps({
    "resumed_from": resumed["resumed_from_step"],
    "columns": list(pd.read_csv(tmp / "m3" / "history.csv").columns),
    "ada_p": pd.read_csv(tmp / "m3" / "history.csv")["ada_p"].tolist(),
    "summary_ada_p": [first.get("ada_p"), resumed.get("ada_p"), straight.get("ada_p")],
    "ckpt_ada": [float(b[f"ada.{i:05d}"]) for i in range(3)],
    "same_keys": sorted(a) == sorted(b),
    "ckpt_max_abs_diff": max(float(np.max(np.abs(a[k] - b[k]))) for k in a),
    "history_max_abs_diff": float(np.max(np.abs(h2.to_numpy() - h3.to_numpy()))),
}))
"""


@pytest.fixture(scope="module")
def jax_proc(data_dir, tmp_path_factory):
    """The JAX runs, in a subprocess started as early as the module's first test asks for it."""
    if not has_jax():
        pytest.skip("jax is not installed (pip install -e '.[jax]')")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}  # fmt: skip
    tmp = tmp_path_factory.mktemp("ada_jax")
    proc = subprocess.Popen(
        [sys.executable, "-c", JAX_CHECKS, str(data_dir), str(tmp)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def jax_result(jax_proc) -> dict:
    out, err = jax_proc.communicate(timeout=300)
    assert jax_proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def test_start_the_jax_runs(jax_proc):
    """Only starts the subprocess (collected first, so it overlaps the TensorFlow tests)."""
    assert jax_proc.poll() in (None, 0)


# --- the augmentation ---


def _np(x) -> np.ndarray:
    return ops.convert_to_numpy(x)


def _images(n: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 8, 8, channels)).astype(np.float32)


def _diffaugment_columns(u: np.ndarray, policy: tuple[str, ...]) -> np.ndarray:
    """ADA's `u` without its apply columns: the draws DiffAugment reads for the same transforms."""
    cols, col = [], 0
    for name in policy:
        k = diffaugment.DRAWS[name]
        cols += range(col + 1, col + 1 + k)
        col += 1 + k
    return u[:, cols]


def test_p0_is_the_identity_and_p1_is_diffaugment():
    x = _images(64)
    k = ada.num_uniforms(POLICY)
    assert k == len(POLICY) + diffaugment.num_uniforms(POLICY)
    u = np.random.default_rng(1).random((64, k), dtype=np.float32)
    np.testing.assert_array_equal(_np(ada.augment(x, POLICY, 0.0, u)), x)
    expected = _np(diffaugment.diff_augment(x, POLICY, _diffaugment_columns(u, POLICY)))
    np.testing.assert_array_equal(_np(ada.augment(x, POLICY, 1.0, u)), expected)
    assert not np.allclose(expected, x)


@pytest.mark.parametrize(("name", "changes"), [("color", 1.0), ("translation", 8 / 9),
                                               ("cutout", 1.0)])  # fmt: skip
def test_intermediate_p_applies_to_about_p_of_the_images(name, changes):
    """Exactly the images whose apply draw is below p get the transform (with its own draws);
    about p of them. A translation by (0, 0), 1 in 9 of the shifts on 8x8, changes nothing."""
    n, p = 2000, 0.3
    x = _images(n, seed=2)
    u = np.random.default_rng(3).random((n, ada.num_uniforms((name,))), dtype=np.float32)
    out = _np(ada.augment(x, (name,), p, u))
    applied = u[:, 0] < p
    np.testing.assert_array_equal(out[~applied], x[~applied])
    transform = ada.TRANSFORMS[name]
    np.testing.assert_array_equal(out[applied], _np(transform(x[applied], u[applied, 1:])))
    changed = np.any(out != x, axis=(1, 2, 3)).mean()
    assert changed == pytest.approx(p * changes, abs=0.035)  # 3.4 standard deviations


def test_gan_losses_augment_both_halves_and_report_the_real_signs():
    """In the losses, ADA sits where DiffAugment does: at p = 0 the step is the plain one, at
    p = 1 the DiffAugment one; `real_signs` is the sum of sign(D(real))."""
    rng = np.random.default_rng(4)
    n = 8
    real, fake = _images(n, 1, seed=5), _images(n, 1, seed=6)
    labels = np.arange(n, dtype=np.int32)
    w = rng.normal(size=(1, 8, 8, 1)).astype(np.float32)

    def forward(images, d_labels, gp_rows):
        return ops.sum(images * w, axis=(1, 2, 3))[:, None], None

    with_ada = StepOptions(ada=ada.AdaOptions(POLICY, batch_size=n))
    assert with_ada.num_uniforms == ada.num_uniforms(POLICY)
    assert StepOptions(loss="wgan_gp", ada=with_ada.ada).num_uniforms == 11  # then eps
    u = rng.random((2 * n, with_ada.num_uniforms), dtype=np.float32)

    def losses(options, u, p=None):
        return [float(v) for v in gan_losses(options, real, fake, labels, u, forward, p)]

    plain = losses(StepOptions(), None)
    assert losses(with_ada, u, 0.0) == plain
    r = (real * w).sum(axis=(1, 2, 3))
    assert plain[4] == float(np.sign(r).sum())
    diff = StepOptions(diffaugment=POLICY)
    assert losses(with_ada, u, 1.0) == losses(diff, _diffaugment_columns(u, POLICY))
    assert losses(with_ada, u, 1.0) != plain
    with pytest.raises(ValueError, match="cannot both be on"):
        StepOptions(diffaugment=POLICY, ada=with_ada.ada)


# --- the p rule ---

RULE = ada.AdaOptions(POLICY, target=0.6, interval=4, kimg=100.0, batch_size=32)


def _run_rule(sign_sums: list[float], p: float, options: ada.AdaOptions = RULE) -> list[tuple]:
    """(p, acc_sum, acc_count) after each step, from step 0 with empty accumulators."""
    state, out = (p, 0.0, 0.0), []
    for t, s in enumerate(sign_sums):
        state = tuple(float(v) for v in ada.updated(*state, s, options.batch_size, t, options))
        out.append(state)
    return out


def test_p_moves_up_above_the_target_and_down_below_it_at_interval_ends():
    step = 32 * 4 / 100_000
    assert RULE.adjust == pytest.approx(step)
    up = _run_rule([32.0] * 8, 0.5)  # every real logit positive: mean sign 1 > 0.6
    np.testing.assert_allclose(
        [s[0] for s in up], [0.5] * 3 + [0.5 + step] * 4 + [0.5 + 2 * step], rtol=1e-6
    )
    assert [s[1:] for s in up[:4]] == [(32.0, 32.0), (64.0, 64.0), (96.0, 96.0), (0.0, 0.0)]
    down = _run_rule([0.0] * 8, 0.5)  # mean sign 0 < 0.6
    np.testing.assert_allclose([s[0] for s in down][3::4], [0.5 - step, 0.5 - 2 * step], rtol=1e-6)
    # The mean over the interval, not the last step: (32 + 32 + 32 - 32) / 128 = 0.5 < 0.6.
    assert _run_rule([32.0, 32.0, 32.0, -32.0], 0.5)[-1][0] == pytest.approx(0.5 - step)
    # Exactly on target: sign(0) = 0, p stays.
    on_target = ada.AdaOptions(POLICY, target=0.5, interval=4, batch_size=32)
    assert _run_rule([16.0] * 4, 0.5, on_target)[-1][0] == 0.5


def test_p_is_clipped_to_0_1_and_the_step_follows_batch_interval_and_kimg():
    assert _run_rule([-32.0] * 4, 0.0)[-1][0] == 0.0
    assert _run_rule([32.0] * 4, 1.0)[-1][0] == 1.0
    assert _run_rule([32.0] * 4, 1.0 - RULE.adjust / 2)[-1][0] == 1.0
    fast = ada.AdaOptions(("cutout",), target=0.6, interval=3, kimg=0.5, batch_size=10)
    assert fast.adjust == pytest.approx(10 * 3 / 500)
    p = [s[0] for s in _run_rule([10.0] * 6, 0.2, fast)]
    np.testing.assert_allclose(p, [0.2, 0.2, 0.26, 0.26, 0.26, 0.32], rtol=1e-6)


def test_the_rule_traces():
    """One traced function (tf.function or jax.jit) for every step: the interval boundary is
    data, not Python."""
    traces = []

    def rule(p, s, c, b, t):
        traces.append(t)  # runs once per trace
        return ada.updated(p, s, c, b, 32, t, RULE)

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        f = tf.function(rule)
    elif keras.backend.backend() == "jax":
        import jax

        f = jax.jit(rule)
    else:
        pytest.skip("tensorflow or jax only")
    state = tuple(np.asarray(v, np.float32) for v in (0.5, 0.0, 0.0))
    for t in range(4):  # arrays, not Python numbers: those would retrace per value
        state = f(*state, np.asarray(32.0, np.float32), np.asarray(t, np.float32))
    assert len(traces) == 1
    assert [float(v) for v in state] == pytest.approx([0.5 + RULE.adjust, 0.0, 0.0])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.ada=true", "train.diffaugment=color"], "train.ada and train.diffaugment"),
        (["train.ada=true", 'train.ada_policy=""'], "at least one transform"),
        (["train.ada_policy=color,zoom"], "unknown DiffAugment policy 'zoom'"),
        (["train.ada_target=1"], "train.ada_target: Input should be less than 1"),
    ],
)
def test_ada_params_are_validated(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_params(None, overrides)


def test_ada_params_in_the_run_key():
    """ADA's settings count only with ADA on."""
    base = run_key(tiny(), "h", "tensorflow")
    assert run_key(tiny(ada_target=0.9, ada_kimg=5.0), "h", "tensorflow") == base
    on = run_key(tiny(ada=True), "h", "tensorflow")
    assert on != base
    assert run_key(tiny(ada=True, ada_target=0.7), "h", "tensorflow") != on
    assert run_key(tiny(ada=True, ada_policy="cutout"), "h", "tensorflow") != on


# --- training ---


class MetricsTracker(Tracker):
    def __init__(self) -> None:
        self.metrics: list[tuple[dict, int | None]] = []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))


def _final_arrays(summary: dict) -> dict[str, np.ndarray]:
    with np.load(Checkpoints(Path(summary["checkpoint_dir"])).paths()[-1]) as f:
        return {k: f[k] for k in f.files}


def _check_p_path(p: np.ndarray) -> None:
    """The p each step used: 0 at first, rising (D is sure of the reals early on), changing only
    right after an interval's last step, by ADJUST."""
    assert p[0] == 0.0 and p[-1] > 0.0
    moves = np.flatnonzero(np.diff(p))  # p[i + 1] != p[i]: step i + 1 (1-based) ended one
    assert len(moves) and all((i + 1) % INTERVAL == 0 for i in moves)
    np.testing.assert_allclose(np.abs(np.diff(p)[moves]), ADJUST, rtol=1e-5)


@requires_tf
def test_tensorflow_training_moves_p_and_records_it(tmp_path, data_dir):
    tracker = MetricsTracker()
    params = tiny(epochs=2, **ADA)
    summary = train(params, data_dir, tmp_path / "m", tmp_path / "ck", tracker, progress=False)
    hist = pd.read_csv(tmp_path / "m" / "history.csv")
    assert list(hist.columns) == list(HISTORY_COLUMNS) == ["step", "epoch", *METRICS,
                                                           "images_per_sec"]  # fmt: skip
    assert "ada_p" in METRICS
    p = hist["ada_p"].to_numpy()
    _check_p_path(p)
    arrays = _final_arrays(summary)
    assert [arrays[f"ada.{i:05d}"].shape for i in range(3)] == [()] * 3
    assert summary["ada_p"] == float(arrays["ada.00000"])  # the state after the last step
    assert summary["ada_p"] == pytest.approx(p[-1] + ADJUST)  # the last step ended an interval
    # acc_sum and acc_count restarted at that last step (12 is a multiple of the interval).
    assert float(arrays["ada.00001"]) == float(arrays["ada.00002"]) == 0.0
    logged = [(m, step) for m, step in tracker.metrics if "train/d_loss" in m]
    assert logged == [(logged[0][0], 2 * STEPS_PER_EPOCH)]  # LOG_EVERY is past the end
    assert logged[0][0]["train/ada_p"] == p[-1]


@requires_tf
def test_tensorflow_resume_is_exact_with_ada(tmp_path, data_dir):
    """1 epoch, resumed to 2, against 2 straight, with wgan_gp and the EMA on too: every array of
    the final checkpoints (weights, optimizers, EMA, ADA's p and accumulators) and the history
    agree bit for bit."""
    ck = tmp_path / "ck"
    train(tiny(epochs=1, **ADA_RESUME_OPTIONS), data_dir, tmp_path / "m1", ck, progress=False)
    resumed = train(
        tiny(epochs=2, **ADA_RESUME_OPTIONS), data_dir, tmp_path / "m2", ck, progress=False
    )
    assert resumed["resumed_from_step"] == STEPS_PER_EPOCH
    straight = train(
        tiny(epochs=2, **ADA_RESUME_OPTIONS), data_dir, tmp_path / "m3", tmp_path / "ck2",
        progress=False,
    )  # fmt: skip
    a, b = _final_arrays(resumed), _final_arrays(straight)
    assert sorted(a) == sorted(b) and {"ada.00000", "g_ema.00000"} <= a.keys()
    for key in a:
        if key == "history":  # images/s differs
            np.testing.assert_array_equal(a[key][:, :-1], b[key][:, :-1])
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert resumed["ada_p"] == straight["ada_p"] > 0.0


def test_jax_training_moves_p_and_resumes_exactly(jax_result):
    r = jax_result
    assert r["columns"] == list(HISTORY_COLUMNS)
    _check_p_path(np.asarray(r["ada_p"]))
    first, resumed, straight = r["summary_ada_p"]
    assert 0.0 < first < resumed == straight == r["ckpt_ada"][0]
    assert r["resumed_from"] == STEPS_PER_EPOCH
    assert r["same_keys"]
    assert r["ckpt_max_abs_diff"] == 0.0
    assert r["history_max_abs_diff"] == 0.0
