"""Which Keras backend a stage will run on, and one message when it is not installed.

No backend is a hard dependency: TensorFlow comes from the `cpu` or `cuda` extra (`tensorflow-cpu`
and `tensorflow` both provide the `tensorflow` module, so they cannot both be required), JAX from
`jax` or `jax-cuda`. Without one, `import keras` fails with a bare ModuleNotFoundError deep in
Keras; `require_keras_backend` runs before any stage that imports Keras (ganpipe.pipeline) and
says what to install instead. `prepare` needs no backend (except to download a Keras dataset).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from ganpipe.errors import ConfigError

INSTALL_HINT = (
    "install one with an extra: pip install -c constraints.txt -e '.[cpu]' (TensorFlow, CPU), "
    "'.[cuda]' (TensorFlow, NVIDIA GPU), or '.[jax]' / '.[jax-cuda]' and set KERAS_BACKEND=jax "
    "(installed as a package: pip install 'ganpipe[cpu]', 'ganpipe[cuda]', 'ganpipe[jax]')"
)


def keras_backend_name() -> str:
    """The backend `import keras` will pick, read the way Keras reads it ($KERAS_BACKEND, else
    keras.json in $KERAS_HOME or ~/.keras, else tensorflow) but without importing Keras, which
    would fail on exactly the case this module is for."""
    keras = sys.modules.get("keras")
    if keras is not None:  # already imported: its choice is fixed
        return str(keras.backend.backend())
    if "KERAS_BACKEND" in os.environ:
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME")
    if home is None:
        base = Path.home() if os.access(Path.home(), os.W_OK) else Path("/tmp")
        home = str(base / ".keras")
    try:
        config = json.loads((Path(home) / "keras.json").read_text())
        return str(config.get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken or half-removed install
        return False


def require_keras_backend() -> str:
    """The Keras backend's name, or ConfigError saying which extra installs it."""
    backend = keras_backend_name()
    module = backend  # each Keras backend is named after the module it imports
    if _installed(module):
        return backend
    if backend == "tensorflow" and "KERAS_BACKEND" not in os.environ:
        if _installed("jax"):
            raise ConfigError(
                "Keras would run on TensorFlow, which is not installed, but JAX is: set "
                "KERAS_BACKEND=jax, or " + INSTALL_HINT
            )
        raise ConfigError("no Keras backend is installed (TensorFlow or JAX): " + INSTALL_HINT)
    raise ConfigError(
        f"Keras's backend is {backend!r} (KERAS_BACKEND or keras.json), but the {module!r} "
        f"module is not installed: " + INSTALL_HINT
    )
