"""Shared fixtures. Tests use tiny configs and the embedded data; full MNIST only where present."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Subprocesses (dvc's stage commands, Prefect workers) find `ganpipe`, `dvc`, `prefect` by name, as
# in an activated venv; CI runs .venv/bin/pytest without activating it.
_bin = str(Path(sys.executable).parent)
if _bin not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = f"{_bin}{os.pathsep}{os.environ.get('PATH', '')}"

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_npz() -> Path:
    """The full MNIST .npz: $GANPIPE_MNIST_NPZ, or the copy beside the checkout; skip if absent."""
    env = os.environ.get("GANPIPE_MNIST_NPZ")
    path = Path(env) if env else REPO.parent / "shared" / "datasets" / "mnist.npz"
    if not path.exists():
        pytest.skip("full MNIST .npz not available (set GANPIPE_MNIST_NPZ)")
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Prepared 8x8 digits for the trainer tests: N_TRAIN to train on, 50 to test."""
    import numpy as np
    from sklearn.datasets import load_digits

    from ganpipe.data.prepared import Prepared, Split, make_summary, save_prepared
    from tests.train_fixtures import N_TRAIN

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    train = Split(images[:N_TRAIN], labels[:N_TRAIN])
    test = Split(images[N_TRAIN : N_TRAIN + 50], labels[N_TRAIN : N_TRAIN + 50])
    out = tmp_path_factory.mktemp("prepared")
    names = [str(i) for i in range(10)]
    save_prepared(out, Prepared(train, test, make_summary(train, test, names, "digits")))
    return out


@pytest.fixture(scope="session")
def harness():
    """One Prefect test server for the whole test run, shared by every flow test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def pytest_terminal_summary(terminalreporter) -> None:
    """Name every skipped test (pytest's own summary groups skips by the line that skipped)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.section(f"{len(skipped)} skipped", sep="-")
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            terminalreporter.write_line(f"SKIPPED {report.nodeid}: {reason}")
