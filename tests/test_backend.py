"""No Keras backend installed (a plain install without the cpu/cuda/jax extra): `prepare` still
works and the first stage that needs Keras stops with one message naming the extras.

The backends are hidden from a real `ganpipe` process by setting their `sys.modules` entries to
None, which makes `import tensorflow` fail exactly as when it is not installed (and find_spec
answer None); a venv built without any extra behaves the same (checked by hand, issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ganpipe.backend import keras_backend_name, require_keras_backend
from ganpipe.errors import ConfigError
from tests.helpers import has_jax, quiet_env, tiny_project


def run_without(hidden: list[str], args: list[str], cwd: Path, **env: str):
    """`ganpipe ARGS` in a fresh interpreter where the modules `hidden` cannot be imported."""
    code = (
        "import sys\n"
        f"for m in {hidden!r}: sys.modules[m] = None\n"
        "from ganpipe.cli import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    full_env = quiet_env(KERAS_HOME=str(cwd / ".keras"), **env)
    if "KERAS_BACKEND" not in env:
        full_env.pop("KERAS_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=full_env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_no_backend_prepare_works_train_names_the_extras(tmp_path: Path) -> None:
    root = tiny_project(tmp_path / "p")
    prep = run_without(["tensorflow", "jax"], ["prepare", "--quiet"], root)
    assert prep.returncode == 0, prep.stderr
    assert (root / "data" / "prepared" / "train.npz").is_file()

    train = run_without(["tensorflow", "jax"], ["train", "--quiet"], root)
    assert train.returncode == 2, train.stderr
    assert "Traceback" not in train.stderr
    msg = train.stderr.strip()
    assert msg.startswith("ganpipe train: error: no Keras backend is installed"), msg
    for extra in ("'.[cpu]'", "'.[cuda]'", "'.[jax]'", "KERAS_BACKEND=jax"):
        assert extra in msg, msg
    assert not (root / "models").exists()

    # `run` gets as far as prepare and stops at train with the same message.
    run = run_without(["tensorflow", "jax"], ["run", "--quiet"], root)
    assert run.returncode == 2 and "no Keras backend is installed" in run.stderr, run.stderr


def test_tensorflow_missing_but_jax_installed_says_set_keras_backend(tmp_path: Path) -> None:
    if not has_jax():
        pytest.skip("jax not installed")
    root = tiny_project(tmp_path / "p")
    r = run_without(["tensorflow"], ["evaluate", "--quiet"], root)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "TensorFlow, which is not installed, but JAX is: set KERAS_BACKEND=jax" in r.stderr


def test_jax_alone_runs_the_whole_pipeline(tmp_path: Path) -> None:
    # The jax / jax-cuda extra without cpu or cuda: no stage may need TensorFlow on JAX.
    if not has_jax():
        pytest.skip("jax not installed")
    root = tiny_project(tmp_path / "p", tracking=True)
    r = run_without(["tensorflow"], ["run", "--quiet"], root, KERAS_BACKEND="jax")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((root / "models" / "train_summary.json").read_text())
    assert summary["backend"] == "jax"
    assert json.loads((root / "metrics" / "eval.json").read_text())


def test_keras_backend_jax_without_jax_names_it(tmp_path: Path) -> None:
    root = tiny_project(tmp_path / "p")
    r = run_without(["jax"], ["generate", "--quiet"], root, KERAS_BACKEND="jax")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "Keras's backend is 'jax'" in r.stderr and "'jax' module is not installed" in r.stderr


def test_backend_name_read_as_keras_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "keras", raising=False)  # not imported yet: read the config
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert keras_backend_name() == "tensorflow"  # no keras.json: Keras's default
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    assert keras_backend_name() == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # the variable wins over the file
    assert keras_backend_name() == "torch"
    monkeypatch.setenv("KERAS_BACKEND", "no_such_backend")
    with pytest.raises(ConfigError, match="'no_such_backend' module is not installed"):
        require_keras_backend()


def test_installed_backend_passes() -> None:
    # This suite runs with a backend installed (make setup: the cpu and jax extras).
    out = subprocess.run(
        [sys.executable, "-c", "from ganpipe.backend import require_keras_backend as r; print(r())"],
        env=quiet_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() in {"tensorflow", "jax"}, out.stderr


@pytest.mark.skipif(not has_jax(), reason="needs jax (the jax extra)")
def test_utility_classifier_trains_jitted_on_jax(tmp_path: Path) -> None:
    """Keras marks its random shift/rotation layers not jittable, which once made every utility
    training on JAX run op by op (~60 s a training on an H200, seconds with jit): the classifier
    with its classic augmentation must compile to one jitted train step there."""
    code = (
        "import numpy as np, keras\n"
        "from ganpipe.evaluation.downstream_net import build_network\n"
        "m = build_network('cnn', (28, 28, 1), 10, 0, (0.1, 10.0))\n"
        "m.compile(optimizer='adam', loss='sparse_categorical_crossentropy')\n"
        "m.fit(np.zeros((8, 28, 28, 1), 'float32'), np.zeros(8, 'int32'), verbose=0)\n"
        "print(keras.backend.backend(), m.jit_compile)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=quiet_env(KERAS_BACKEND="jax"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["jax", "True"], out.stdout
