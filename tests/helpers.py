"""Running the real `ganpipe` console script, as users and dvc.yaml do."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny.yaml"
GANPIPE = str(Path(sys.executable).parent / "ganpipe")


def has_jax() -> bool:
    """Whether the JAX tests can run. `make test` installs the jax extra and sets
    GANPIPE_REQUIRE_JAX=1: there a missing or broken jax fails the suite instead of skipping."""
    if os.environ.get("GANPIPE_REQUIRE_JAX") == "1":
        import jax  # noqa: F401

        return True
    import importlib.util

    return importlib.util.find_spec("jax") is not None


def quiet_env(**extra: str) -> dict[str, str]:
    # The venv's bin first, as after `. .venv/bin/activate`: dvc.yaml's commands call `ganpipe`
    # by name, and CI runs .venv/bin/pytest without activating the venv.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {
        **os.environ,
        "PATH": path,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONWARNINGS": "ignore",
        **extra,
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run(
    cmd: list[str], cwd: Path, timeout: int = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    """`cmd` from the venv (as after activating it), quietly; `env`: extra environment."""
    exe = GANPIPE if cmd[0] == "ganpipe" else shutil.which(cmd[0], path=Path(sys.executable).parent)
    return subprocess.run(
        [exe or cmd[0], *cmd[1:]], cwd=cwd, env=quiet_env(**env), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def tiny_project(root: Path, tracking: bool = False) -> Path:
    """A working directory holding the tiny params as params.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    text = TINY.read_text()
    if tracking:
        text = text.replace("enabled: false", "enabled: true")
    (root / "params.yaml").write_text(text)
    return root


def digits_prepared():
    """sklearn's 8x8 digits as prepared data: uint8 8x8x1, a seeded 80/20 split."""
    import numpy as np
    from sklearn.datasets import load_digits

    from ganpipe.data.prepared import Prepared, Split, make_summary

    d = load_digits()
    images = np.rint(d.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(labels))
    cut = int(0.8 * len(idx))
    train = Split(images[idx[:cut]], labels[idx[:cut]])
    test = Split(images[idx[cut:]], labels[idx[cut:]])
    return Prepared(train, test, make_summary(train, test, [str(i) for i in range(10)], "digits"))


def utility_study(shift: float, second_shift: float | None = None) -> dict:
    """A utility study as `ganpipe.evaluation.downstream_study.run_study` returns it, from hand-made
    per-seed scores (0.90, 0.91, 0.92) where the chosen treatment's are the chosen baseline's +
    `shift` (+ a little spread), and the second architecture's + `second_shift` (None: none)."""
    from ganpipe.evaluation.downstream import METRICS, combine_verdicts
    from ganpipe.evaluation.downstream_study import compare, summary

    def scores(s: float) -> list[dict]:
        return [
            {"seed_index": i, "test": dict.fromkeys(METRICS, b + s + 0.001 * i * (s != 0))}
            for i, b in enumerate([0.90, 0.91, 0.92])
        ]

    results = {"real_weighted": scores(0.0), "synthetic_weighted": scores(shift)}
    comparisons = {"headline": compare(results, "real_weighted", "synthetic_weighted")}
    if second_shift is not None:
        results |= {"resnet:real_weighted": scores(0.0),
                    "resnet:synthetic_weighted": scores(second_shift)}  # fmt: skip
        comparisons["second_architecture"] = compare(
            results, "resnet:real_weighted", "resnet:synthetic_weighted"
        )
    verdicts = [c["metrics"]["balanced_accuracy"]["verdict"] for c in comparisons.values()]
    return {
        "arms": {arm: summary(rs, "test") for arm, rs in results.items()},
        "baseline": "real_weighted",
        "treatment": "synthetic_weighted",
        "comparisons": comparisons,
        "headline_comparison": "headline",
        "second_architecture": "resnet" if second_shift is not None else None,
        "verdict": combine_verdicts(verdicts),
        "worth": None,
        "num_real": 15,
        "num_synthetic": 8,
        "steps": 10,
    }
