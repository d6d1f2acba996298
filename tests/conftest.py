"""Shared fixtures. Tests use tiny configs and the embedded data; full MNIST only where present."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# The JAX subprocesses (test_train_jax, test_ada, test_backend, test_distributed, test_models) spend
# most of their time having XLA compile many small programs; LLVM's optimisation level 0 about
# halves that. Same programs; their float results differ from the default level's only in
# rounding (~1e-7 after a tiny run), and runs compared for exactness all use this level. Users'
# runs keep XLA's default.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
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


# The modules that take tens of seconds (servers, pipelines in subprocesses, DVC, sweeps, JAX),
# longest first: run first, so that under `pytest -n 2` (make test) the two workers take them
# longest first and finish together, instead of one of them finishing late on its own. By their
# durations under `pytest -n 2` on 2 cores; the two harness modules are one unit (below), placed
# by their sum.
SLOW_FIRST = (
    "test_concurrency.py",
    "test_flow.py",
    "test_sweep.py",
    "test_dvc.py",
    "test_damaged_files.py",
    "test_serve.py",
    "test_cli.py",
    "test_train.py",
    "test_kill_resume.py",
    "test_backend.py",
    "test_evaluate.py",
    "test_remote.py",
    "test_distributed.py",
    "test_tracking_server.py",
    "test_ada.py",
    "test_train_jax.py",
    "test_bad_inputs.py",
    "test_disk_full.py",
    "test_promotion.py",
    "test_models.py",
    "test_mlflow_runs.py",
    "test_utility.py",
    "test_extractors.py",
)
# The modules whose tests use the Prefect `harness`: one scheduling unit, so one worker and one
# Prefect test server serve them all.
HARNESS_MODULES = ("tests/test_flow.py", "tests/test_sweep.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow modules first, in SLOW_FIRST's order; each module's tests stay together and in
    their own order (a stable sort), so module-scoped fixtures are still built once."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`pytest -n N`: whole modules per worker, so a module-scoped fixture (a tiny pipeline run, a
    DVC repository, a subprocess's results) is built once, not once per worker; the harness
    modules as one unit; units handed out in collection order (slow first, see above)."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "prefect-harness" if module in HARNESS_MODULES else module

    config.option.loadscopereorder = False
    return ModuleScheduling(config, log)


def pytest_terminal_summary(terminalreporter) -> None:
    """Name every skipped test (pytest's own summary groups skips by the line that skipped)."""
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.section(f"{len(skipped)} skipped", sep="-")
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
            terminalreporter.write_line(f"SKIPPED {report.nodeid}: {reason}")
