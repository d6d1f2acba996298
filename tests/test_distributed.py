"""Data parallel training (`train.distribute`) on two CPU devices, one subprocess per backend: the
device count is fixed when the backend initialises (TensorFlow: two logical CPUs configured before
anything else; JAX: XLA_FLAGS=--xla_force_host_platform_device_count=2), and this test session
has already initialised TensorFlow with one.

Correctness: one data-parallel step on 2 devices against the one-device step on the same global
batch, comparing every variable afterwards (both models, BatchNorm moving statistics included, and
both optimizers' Adam moments, which would show a gradient scaled by the replica count).
- JAX partitions the global computation, so any batch must give the one-device result.
- TensorFlow's MirroredStrategy normalises BatchNorm (in the generator) per replica, so the
  one-device result is only expected when each replica's slice has the global batch's statistics:
  the test's global batch is one half repeated (images, labels, noise and the option draws). That
  such a batch reaches each replica as its own slice is checked on `split_batch` directly, and
  with two different halves D's output on the real images (`d_real`, before any update) still
  matches, while the generator's update differs (per-replica BatchNorm, as documented).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import has_jax
from tests.train_fixtures import STEPS_PER_EPOCH

REPO = Path(__file__).resolve().parents[1]

COMMON = r"""
import json, sys
from pathlib import Path

import numpy as np

from ganpipe.config import Params
from ganpipe.errors import ConfigError
from ganpipe.gan.training import distribute, train
from ganpipe.gan.training.checkpoint import run_key
from ganpipe.gan.training.state import build_for_training
from tests.train_fixtures import ADA_RESUME_OPTIONS, RESUME_OPTIONS, tiny

data_dir, tmp = Path(sys.argv[1]), Path(sys.argv[2])
out = {}
B = 8
rng = np.random.default_rng(0)


def batch(n):
    return (
        rng.uniform(-1, 1, (n, 8, 8, 1)).astype(np.float32),
        rng.integers(0, 10, n).astype(np.int32),
        rng.standard_normal((n, 8)).astype(np.float32),
        rng.uniform(0, 1, (2 * n, 16)).astype(np.float32),
    )


def repeated(half):
    real, labels, noise, u = half
    n = len(labels)
    return (
        np.concatenate([real, real]),
        np.concatenate([labels, labels]),
        np.concatenate([noise, noise]),
        np.concatenate([u[:n], u[:n], u[n:], u[n:]]),  # u's halves follow real and fake
    )


# The step with ADA: p set to 0.5 before it (so that about half the transforms apply) and moved at
# its end (interval 1); its state is compared with the weights.
STEP_OPTIONS = (
    ("default", {}),
    ("options", RESUME_OPTIONS),
    ("ada", ADA_RESUME_OPTIONS | {"ada_interval": 1}),
)


def start_ada(state):
    if state.ada_state is not None:
        state.ada_state[0].assign(0.5)
    return [] if state.ada_state is None else list(state.ada_state)


def max_diff(a, b):
    assert len(a) == len(b)
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def run_checks(params_for_step):
    # The trainer: 2 replicas, finite losses, outputs; key, validation, distribute: none.
    s = train(tiny(epochs=1), data_dir, tmp / "m", tmp / "ck", progress=False)
    import pandas as pd

    hist = pd.read_csv(tmp / "m" / "history.csv")
    cols = ["d_loss", "g_loss", "d_real", "d_fake"]
    out["run"] = {
        "replicas": s["replicas"],
        "distribute": s["distribute"],
        "rows": len(hist),
        "finite": bool(np.isfinite(hist[cols].to_numpy()).all()),
        "outputs": sorted(p.name for p in (tmp / "m").iterdir()),
        "key_has_replicas": s["run_key"] == run_key(tiny(), s["data_content_hash"], replicas=2)
        and s["run_key"] != run_key(tiny(), s["data_content_hash"]),
    }
    s = train(tiny(epochs=1, **RESUME_OPTIONS), data_dir, tmp / "o", tmp / "ck", progress=False)
    hist = pd.read_csv(tmp / "o" / "history.csv")
    out["options_run"] = {
        "replicas": s["replicas"],
        "finite": bool(np.isfinite(hist[cols].to_numpy()).all()),
    }
    s = train(tiny(epochs=1, distribute="none"), data_dir, tmp / "n", tmp / "ck", progress=False)
    out["none"] = {"replicas": s["replicas"], "distribute": s["distribute"]}
    try:
        train(tiny(batch_size=33), data_dir, tmp / "x", tmp / "ck", progress=False)
        out["odd_batch_error"] = None
    except ConfigError as e:
        out["odd_batch_error"] = str(e)
    out["odd_batch_wrote"] = (tmp / "x").exists()
"""

TF_CHECKS = (
    r"""
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""
    + COMMON
    + r"""
from ganpipe.gan.training import step_tf

plan = distribute.plan(tiny(), "tensorflow")
out["devices"] = list(plan.devices)
strategy = distribute.tf_strategy(plan)

# split_batch: replica r gets rows [r n, (r + 1) n) of each, and those rows of each half of u.
real, labels, noise, u = batch(B)
parts = step_tf.split_batch(strategy, real, labels, noise, u)
local = [strategy.experimental_local_results(p) for p in parts]
out["split_ok"] = all(
    np.array_equal(np.asarray(local[0][r]), real[4 * r : 4 * r + 4])
    and np.array_equal(np.asarray(local[1][r]), labels[4 * r : 4 * r + 4])
    and np.array_equal(np.asarray(local[2][r]), noise[4 * r : 4 * r + 4])
    and np.array_equal(
        np.asarray(local[3][r]), np.concatenate([u[4 * r : 4 * r + 4], u[8 + 4 * r : 8 + 4 * r + 4]])
    )
    for r in range(2)
)


def one_step(strategy, global_batch, options):
    params = tiny(batch_size=B, **options)
    state = build_for_training(params, (8, 8, 1), 10, strategy)
    step_options, ema_g, ada_vars = state.options, state.ema_generator, start_ada(state)
    fn = step_tf.make_train_step(state, strategy=strategy)
    real, labels, noise, u = global_batch
    aux = {}
    if ema_g is not None or ada_vars:
        aux["t"] = np.float32(0)
    if step_options.num_uniforms:
        aux["u"] = u[:, : step_options.num_uniforms]
    metrics = fn(real, labels, noise, aux)
    models = (state.generator, state.discriminator, state.g_opt, state.d_opt)
    models += (ema_g,) if ema_g is not None else ()
    values = [v.numpy() for m in models for v in m.variables]
    return metrics, values + [v.numpy() for v in ada_vars]


for name, options in STEP_OPTIONS:
    same = repeated(batch(B // 2))
    (m2, v2), (m1, v1) = one_step(strategy, same, options), one_step(None, same, options)
    out[f"step_{name}"] = {
        "weights_max_diff": max_diff(v2, v1),
        "metrics_max_diff": max(abs(m2[k] - m1[k]) for k in m1),
        "variables": len(v1),
        "ada": [float(x) for x in v1[-3:]] if name == "ada" else None,  # p, acc_sum, acc_count
    }
different = batch(B)
(m2, v2), (m1, v1) = one_step(strategy, different, {}), one_step(None, different, {})
out["step_different_halves"] = {
    "d_real_diff": abs(m2["d_real"] - m1["d_real"]),
    "weights_max_diff": max_diff(v2, v1),
}
run_checks(None)
print(json.dumps(out))
"""
)

JAX_CHECKS = (
    COMMON
    + r"""
import jax

from ganpipe.gan.training import step_jax

plan = distribute.plan(tiny(), "jax")
out["devices"] = list(plan.devices)
mesh = distribute.jax_mesh(plan)


def one_step(mesh, global_batch, options):
    params = tiny(batch_size=B, **options)
    state = build_for_training(params, (8, 8, 1), 10)
    step_options, ema_g, ada_vars = state.options, state.ema_generator, start_ada(state)
    jstep = step_jax.JaxGanStep(state, mesh=mesh)
    real, labels, noise, u = global_batch
    t = np.float32(0) if ema_g is not None or ada_vars else None
    u = u[:, : step_options.num_uniforms] if step_options.num_uniforms else None
    hlo = jstep._step.lower(jstep.state, real, labels, noise, t, u).compile().as_text()
    metrics = np.asarray(jstep.step(real, labels, noise, t, u))
    shardings = {
        (x.sharding.is_fully_replicated, len(x.sharding.device_set))
        for x in jax.tree.leaves(jstep.state)
    }
    jstep.sync_to_keras()
    models = (state.generator, state.discriminator, state.g_opt, state.d_opt)
    models += (ema_g,) if ema_g is not None else ()
    values = [np.asarray(v.value) for m in models for v in m.variables]
    values += [np.asarray(v.value) for v in ada_vars]
    return metrics, values, hlo, shardings


for name, options in STEP_OPTIONS:
    different = batch(B)
    (m2, v2, hlo, shardings), (m1, v1, _, _) = (
        one_step(mesh, different, options),
        one_step(None, different, options),
    )
    out[f"step_{name}"] = {
        "weights_max_diff": max_diff(v2, v1),
        "metrics_max_diff": float(np.max(np.abs(m2 - m1))),
        "variables": len(v1),
        "all_reduce": "all-reduce" in hlo,
        "ada": [float(x) for x in v1[-3:]] if name == "ada" else None,  # p, acc_sum, acc_count
        "state_shardings": sorted(shardings),  # (fully replicated, on how many devices)
    }
run_checks(None)
print(json.dumps(out))
"""
)


def _run(script: str, env: dict, data_dir: Path, tmp: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir), str(tmp)],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results(data_dir, tmp_path_factory) -> dict[str, dict]:
    """Both subprocesses, run side by side."""
    procs = {"tensorflow": _run(TF_CHECKS, {"KERAS_BACKEND": "tensorflow"}, data_dir,
                                tmp_path_factory.mktemp("tf"))}  # fmt: skip
    if has_jax():
        procs["jax"] = _run(
            JAX_CHECKS,
            {
                "KERAS_BACKEND": "jax",
                "JAX_PLATFORMS": "cpu",
                "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                "--xla_force_host_platform_device_count=2",
            },
            data_dir,
            tmp_path_factory.mktemp("jax"),
        )
    return {name: _result(proc) for name, proc in procs.items()}


BACKENDS = ["tensorflow", pytest.param("jax", marks=pytest.mark.skipif(not has_jax(), reason="no jax"))]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_trains_on_two_replicas(results, backend):
    r = results[backend]
    assert len(r["devices"]) == 2
    assert r["run"] == {
        "replicas": 2,
        "distribute": "data_parallel",
        "rows": STEPS_PER_EPOCH,
        "finite": True,
        "outputs": [
            "discriminator.keras",
            "generator.keras",
            "history.csv",
            "samples",
            "train_summary.json",
        ],
        "key_has_replicas": True,
    }
    assert r["options_run"] == {"replicas": 2, "finite": True}
    assert r["none"] == {"replicas": 1, "distribute": "none"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_must_split_evenly(results, backend):
    r = results[backend]
    assert "train.batch_size: 33 does not split evenly across the 2 replicas" in (
        r["odd_batch_error"] or ""
    )
    assert not r["odd_batch_wrote"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("step", ["step_default", "step_options", "step_ada"])
def test_one_data_parallel_step_equals_the_single_device_step(results, backend, step):
    r = results[backend][step]
    assert r["variables"] > 20
    assert r["weights_max_diff"] <= 1e-5
    assert r["metrics_max_diff"] <= 1e-5
    if step == "step_ada":  # p started at 0.5 and moved at the step's end (interval 1)
        p, acc_sum, acc_count = r["ada"]
        assert abs(p - 0.5) == pytest.approx(8 / 640) and acc_sum == acc_count == 0.0
    if backend == "jax":  # really partitioned: replicated state, cross-device reductions
        assert r["all_reduce"] and r["state_shardings"] == [[True, 2]]


def test_tensorflow_replicas_get_their_own_slices(results):
    r = results["tensorflow"]
    assert r["split_ok"]
    different = r["step_different_halves"]
    assert different["d_real_diff"] <= 1e-6  # D (no BatchNorm) saw the whole real batch
    # The generator's BatchNorm used each replica's statistics: not the one-device update.
    assert different["weights_max_diff"] > 1e-5
