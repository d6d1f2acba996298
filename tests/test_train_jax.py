"""The trainer on the JAX backend (CPU), checked in one subprocess: Keras's backend is fixed when
keras is first imported, and this test session runs on TensorFlow (conftest.py).

The subprocess trains tiny models on the 8x8 digits and reports what it saw as JSON: the outputs
of a run, resume exactness, finite losses under mixed precision, the backend check, and which heavy
modules got imported (none of TensorFlow, MLflow, Prefect, DVC, mlxtend, scikit-learn), with
TensorFlow made unimportable as on the GPU machines."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ganpipe.errors import ConfigError
from ganpipe.gan.training import train
from tests.helpers import has_jax
from tests.train_fixtures import STEPS_PER_EPOCH, tiny

pytestmark = pytest.mark.skipif(
    not has_jax(), reason="jax is not installed (pip install -e '.[jax]')"
)

# Comparisons with a TensorFlow run need TensorFlow in this process (not on the GPU machines).
requires_tf = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None or os.environ.get("KERAS_BACKEND") == "jax",
    reason="needs this test session on the TensorFlow backend",
)

CHECKS = r"""
import json, sys
from pathlib import Path

import importlib.abc

import keras  # before ganpipe: what keras alone imports is not ganpipe's doing

baseline = set(sys.modules)
import numpy as np
import pandas as pd

from ganpipe.config import Params
from ganpipe.errors import ConfigError
from ganpipe.gan.training import step_jax, train

HEAVY = ("tensorflow", "mlflow", "prefect", "dvc", "mlxtend", "sklearn")
imported_by_import = sorted(m for m in HEAVY if m in sys.modules and m not in baseline)


# The GPU machines have no TensorFlow: make it unimportable here too. (Where TensorFlow is
# installed, Keras itself imports it on any backend, e.g. in Model.save to probe for
# tf.TensorShape, and in set_random_seed; with it absent Keras skips that.)
class NoTensorFlow(importlib.abc.MetaPathFinder):

    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
        return None


assert "tensorflow" not in sys.modules
sys.meta_path.insert(0, NoTensorFlow())

data_dir, tmp = Path(sys.argv[1]), Path(sys.argv[2])
out = {"backend": keras.backend.backend()}


def tiny(**train_params):
    return Params.model_validate({
        "model": {"latent_dim": 8, "embed_dim": 4, "filters": 16},
        "train": {"epochs": 1, "batch_size": 32, "sample_every": 4, "checkpoint_every": 4}
        | train_params,
    })


def generator_weights(model_dir):
    g = keras.models.load_model(model_dir / "generator.keras")
    return [np.asarray(w) for w in g.get_weights()]


# A run's outputs, and resume exactness: 1 epoch, then resumed to 2 == straight 2 epochs.
s1 = train(tiny(epochs=1), data_dir, tmp / "m1", tmp / "ck", progress=False)
s2 = train(tiny(epochs=2), data_dir, tmp / "m2", tmp / "ck", progress=False)
s3 = train(tiny(epochs=2), data_dir, tmp / "m3", tmp / "ck_other", progress=False)
out["summaries"] = [s1, s2, s3]
a, b = generator_weights(tmp / "m2"), generator_weights(tmp / "m3")
out["resume_max_abs_diff"] = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
h2 = pd.read_csv(tmp / "m2" / "history.csv")
h3 = pd.read_csv(tmp / "m3" / "history.csv")
cols = ["d_loss", "g_loss", "d_real", "d_fake"]
out["history_max_abs_diff"] = float(np.max(np.abs(h2[cols].to_numpy() - h3[cols].to_numpy())))

# Mixed precision: finite losses.
for precision in ("mixed_bfloat16", "mixed_float16"):
    s = train(tiny(precision=precision), data_dir, tmp / precision, tmp / "ck", progress=False)
    hist = pd.read_csv(tmp / precision / "history.csv")
    out[precision] = {
        "finite": bool(np.isfinite(hist[cols].to_numpy()).all()),
        "rows": len(hist),
        "precision": s["precision"],
    }

# The backend check.
try:
    train(tiny(backend="tensorflow"), data_dir, tmp / "mx", tmp / "ck", progress=False)
    out["backend_error"] = None
except ConfigError as e:
    out["backend_error"] = str(e)

# Training options: hinge + spectral norm; resume exactness with wgan_gp + DiffAugment + EMA.
from tests.train_fixtures import OPTION_RUNS, RESUME_OPTIONS, tiny_with

sn, options = OPTION_RUNS["hinge_sn"]
s = train(tiny_with(sn, **options), data_dir, tmp / "hinge_sn", tmp / "ck", progress=False)
hist = pd.read_csv(tmp / "hinge_sn" / "history.csv")
d = keras.models.load_model(tmp / "hinge_sn" / "discriminator.keras")
out["hinge_sn"] = {
    "finite": bool(np.isfinite(hist[cols].to_numpy()).all()),
    "rows": len(hist),
    "loss": s["loss"],
    "sn_layers": sum(isinstance(x, keras.layers.SpectralNormalization) for x in d.layers),
    "final_png": (tmp / "hinge_sn" / "samples" / "final.png").exists(),
}
r1 = train(tiny(epochs=1, **RESUME_OPTIONS), data_dir, tmp / "o1", tmp / "ck", progress=False)
r2 = train(tiny(epochs=2, **RESUME_OPTIONS), data_dir, tmp / "o2", tmp / "ck", progress=False)
r3 = train(tiny(epochs=2, **RESUME_OPTIONS), data_dir, tmp / "o3", tmp / "ck_o", progress=False)
h2 = pd.read_csv(tmp / "o2" / "history.csv")
h3 = pd.read_csv(tmp / "o3" / "history.csv")
a, b = generator_weights(tmp / "o2"), generator_weights(tmp / "o3")
ckpt = sorted(Path(r2["checkpoint_dir"]).glob("ckpt_*.npz"))[-1]
exported = keras.models.load_model(tmp / "o2" / "generator.keras")
index = {v.path: i for i, v in enumerate(exported.variables)}
with np.load(ckpt) as f:
    trainable = [np.asarray(v) for v in exported.trainable_variables]
    ema_diff = max(
        float(np.max(np.abs(v - f[f"g_ema.{i:05d}"]))) for i, v in enumerate(trainable)
    )
    live_diff = min(
        float(np.max(np.abs(np.asarray(v) - f[f"g.{index[v.path]:05d}"])))
        for v in exported.trainable_variables
    )
    stats_diff = max(
        float(np.max(np.abs(np.asarray(v) - f[f"g.{index[v.path]:05d}"])))
        for v in exported.non_trainable_variables
    )
out["options_resume"] = {
    "resumed_from": r2["resumed_from_step"],
    "exported": [r["exported_generator"] for r in (r1, r2, r3)],
    "finite": bool(np.isfinite(h2[cols].to_numpy()).all()),
    "history_max_abs_diff": float(np.max(np.abs(h2[cols].to_numpy() - h3[cols].to_numpy()))),
    "weights_max_abs_diff": max(float(np.max(np.abs(x - y))) for x, y in zip(a, b)),
    "ema_vs_export": ema_diff,  # 0: the exported generator's weights are the EMA state
    "live_vs_export_min": live_diff,  # > 0: every exported weight differs from the live one
    "stats_vs_live": stats_diff,  # 0: BatchNorm statistics are the live generator's
}

# Spectral norm in the stateless step: the kernel's assignment (kernel / sigma) and u are kept.
from ganpipe.gan.models import build_models
from ganpipe.gan.training.state import GanState, make_optimizers

p = tiny_with(True, d_learning_rate=1e-12, g_learning_rate=1e-12)
g, d = build_models((8, 8, 1), 10, p.model)
g_opt, d_opt = make_optimizers(p, g, d)
sn = d.get_layer("d_down1_sn")
u_before, kernel_before = np.asarray(sn.vector_u.value), np.asarray(sn.kernel.value)
expected_u, expected_kernel = (np.asarray(v) for v in sn.normalized_weights())
jstep = step_jax.JaxGanStep(GanState(g, d, g_opt, d_opt))
rng = np.random.default_rng(0)
jstep.step(
    rng.uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32),
    np.array([0, 1, 2, 3], np.int32),
    rng.standard_normal((4, 8)).astype(np.float32),
)
jstep.sync_to_keras()
out["sn_step"] = {
    "u_moved": not np.allclose(np.asarray(sn.vector_u.value), u_before),
    "u_diff": float(np.max(np.abs(np.asarray(sn.vector_u.value) - expected_u))),
    "kernel_diff": float(np.max(np.abs(np.asarray(sn.kernel.value) - expected_kernel))),
    "kernel_moved": not np.allclose(np.asarray(sn.kernel.value), kernel_before),
}

# gSR in the stateless step: the penalty's gradient reaches G's class-conditional BatchNorm.
from tests.train_fixtures import gsr_effect


def jax_one_step(state, images, labels, noise):
    runner = step_jax.JaxGanStep(state)
    runner.step(images, labels, noise)
    runner.sync_to_keras()


out["gsr"] = gsr_effect(jax_one_step)

# eps / DiffAugment draws on JAX: Uniform[0, 1).
import jax

key = jax.random.key(0)
draws = np.concatenate(
    [np.asarray(step_jax.step_uniforms(jax.random.fold_in(key, t), 64, 1)).ravel()
     for t in range(100)]
)
out["uniforms"] = [float(draws.min()), float(draws.max()), float(draws.mean()), float(draws.var())]

# wgan_gp through jax.grad on a linear D: d_loss = mean(f) - mean(r) + 10 (||w|| - 1)^2.
import jax.numpy as jnp
from ganpipe.gan.training.losses import StepOptions, gan_losses

w = jnp.asarray(rng.normal(size=(1, 2, 2, 1)), jnp.float32)
real, fake = (jnp.asarray(x, jnp.float32) for x in rng.uniform(-1, 1, (2, 4, 2, 2, 1)))


def linear_forward(images, labels, gp_rows):
    def target(x):
        logits = jnp.sum(x * w, axis=(1, 2, 3))[:, None]
        return jnp.sum(logits[-gp_rows:]), logits
    grads, logits = jax.grad(target, has_aux=True)(images)
    return logits, grads


d_loss, g_loss, *_ = gan_losses(
    StepOptions(loss="wgan_gp"), real, fake, jnp.arange(4), jnp.full((8, 1), 0.3), linear_forward
)
r = np.sum(np.asarray(real * w), axis=(1, 2, 3))
f = np.sum(np.asarray(fake * w), axis=(1, 2, 3))
out["wgan_gp_linear"] = [
    float(d_loss), float(f.mean() - r.mean() + 10 * (np.linalg.norm(np.asarray(w)) - 1) ** 2)
]

out["imported_by_import"] = imported_by_import
out["imported"] = sorted(m for m in HEAVY if m in sys.modules and m not in baseline)
out["tensorflow_in_sys_modules"] = "tensorflow" in sys.modules
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def jax_run(data_dir, tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("jax")
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHECKS, str(data_dir), str(tmp)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), tmp


@requires_tf
def test_jax_run_writes_what_the_tensorflow_run_writes(jax_run, data_dir, tmp_path):
    result, tmp = jax_run
    assert result["backend"] == "jax"
    tf_summary = train(tiny(epochs=2), data_dir, tmp_path / "tf", tmp_path / "ck", progress=False)
    jax_summary = result["summaries"][2]
    assert jax_summary["backend"] == "jax" and tf_summary["backend"] == "tensorflow"
    assert jax_summary.keys() == tf_summary.keys()
    assert jax_summary["steps"] == tf_summary["steps"] == 2 * STEPS_PER_EPOCH
    assert jax_summary["run_key"] != tf_summary["run_key"]  # the backend is part of the key

    def listing(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*"))

    assert listing(tmp / "m3") == listing(tmp_path / "tf")
    h_jax = pd.read_csv(tmp / "m3" / "history.csv")
    h_tf = pd.read_csv(tmp_path / "tf" / "history.csv")
    assert list(h_jax.columns) == list(h_tf.columns)
    pd.testing.assert_frame_equal(h_jax[["step", "epoch"]], h_tf[["step", "epoch"]])
    assert np.isfinite(h_jax.drop(columns=["step", "epoch"]).to_numpy()).all()
    assert h_jax[["d_real", "d_fake"]].stack().between(0, 1).all()

    # The JAX-trained generator loads and runs here, on TensorFlow.
    import keras

    g = keras.models.load_model(tmp / "m3" / "generator.keras")
    images = g.predict([np.zeros((2, 8), np.float32), np.array([1, 2], np.int32)], verbose=0)
    assert images.shape == (2, 8, 8, 1) and np.all(np.abs(images) <= 1)


def test_jax_resume_is_exact(jax_run):
    result, _ = jax_run
    first, resumed, straight = result["summaries"]
    assert first["resumed_from_step"] == 0
    assert resumed["resumed_from_step"] == STEPS_PER_EPOCH
    assert resumed["run_key"] == first["run_key"]
    assert straight["resumed_from_step"] == 0
    assert result["history_max_abs_diff"] <= 1e-6
    assert result["resume_max_abs_diff"] <= 1e-6


def test_jax_mixed_precision_gives_finite_losses(jax_run):
    result, _ = jax_run
    for precision in ("mixed_bfloat16", "mixed_float16"):
        assert result[precision] == {
            "finite": True,
            "rows": STEPS_PER_EPOCH,
            "precision": precision,
        }


def test_jax_path_imports_no_tensorflow(jax_run):
    result, _ = jax_run
    assert result["imported_by_import"] == []  # importing the trainer and step_jax: nothing heavy
    assert result["tensorflow_in_sys_modules"] is False  # whole runs with TensorFlow uninstallable
    assert result["imported"] == []


def test_backend_param_is_checked_under_jax(jax_run):
    result, _ = jax_run
    assert "train.backend: is 'tensorflow' but Keras is running on 'jax'" in result["backend_error"]


def test_jax_training_options(jax_run):
    result, _ = jax_run
    assert result["hinge_sn"] == {
        "finite": True,
        "rows": STEPS_PER_EPOCH,
        "loss": "hinge",
        "sn_layers": 6,  # every D layer with weights, the label embeddings included
        "final_png": True,
    }
    resume = result["options_resume"]
    assert resume["resumed_from"] == STEPS_PER_EPOCH
    assert resume["exported"] == ["ema"] * 3 and resume["finite"]
    assert resume["history_max_abs_diff"] <= 1e-6
    assert resume["weights_max_abs_diff"] <= 1e-6


def test_jax_exports_the_ema_generator(jax_run):
    resume = jax_run[0]["options_resume"]
    assert resume["ema_vs_export"] == 0.0
    assert resume["stats_vs_live"] == 0.0
    assert resume["live_vs_export_min"] > 0.0


def test_jax_spectral_norm_keeps_the_normalised_kernel_and_u(jax_run):
    sn = jax_run[0]["sn_step"]
    assert sn["u_moved"] and sn["kernel_moved"]
    assert sn["u_diff"] <= 1e-6
    assert sn["kernel_diff"] <= 1e-6  # the learning rate is 1e-12: the kernel is kernel / sigma


def test_jax_gsr_shrinks_the_class_conditional_spread(jax_run):
    """As the TensorFlow step (tests/test_losses.py, where the sizes are explained): at weight
    1000 one step lowers the penalty ten times more than the same step without it moves it."""
    effect = jax_run[0]["gsr"]
    assert effect["parameters"] == 2
    drop, chance = (
        effect["before"] - effect["after_1000"],
        abs(effect["before"] - effect["after_0"]),
    )
    assert drop > 0.005 and drop > 10 * chance


def test_jax_uniform_draws_and_gradient_penalty(jax_run):
    result, _ = jax_run
    lo, hi, mean, var = result["uniforms"]
    assert 0.0 <= lo and hi < 1.0
    assert abs(mean - 0.5) < 0.015 and abs(var - 1 / 12) < 0.006
    got, expected = result["wgan_gp_linear"]
    assert got == pytest.approx(expected, rel=1e-5)


@requires_tf
def test_backend_param_is_checked_under_tensorflow(data_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.backend: .*set KERAS_BACKEND=jax"):
        train(tiny(backend="jax"), data_dir, tmp_path / "m", tmp_path / "ck", progress=False)
    assert not (tmp_path / "m").exists() and not (tmp_path / "ck").exists()
