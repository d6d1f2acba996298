"""Shared fixtures. Tests use tiny configs and the embedded data; full MNIST only where present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_npz() -> Path:
    """The full MNIST .npz: $GANPIPE_MNIST_NPZ, or the copy beside the checkout; skip if absent."""
    env = os.environ.get("GANPIPE_MNIST_NPZ")
    path = Path(env) if env else REPO.parent / "shared" / "datasets" / "mnist.npz"
    if not path.exists():
        pytest.skip("full MNIST .npz not available (set GANPIPE_MNIST_NPZ)")
    return path
