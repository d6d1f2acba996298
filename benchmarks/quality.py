"""Run the pipeline on a params file (a preset) and print the quality table.

    python benchmarks/quality.py presets/mnist-best.yaml --set data.path=/path/to/mnist.npz
    python benchmarks/quality.py params.yaml --workdir /tmp/q --set train.epochs=5

Runs prepare → train → generate → classifier → evaluate with tracking off into --workdir, then
prints each headline metric, the Fréchet classifier distance as a multiple of its floor (real test
vs real train, same code), and the training time and throughput. Uses the same `run_stage` as the
CLI, DVC and Prefect.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("params", help="params file or preset")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--workdir", default="quality-run", help="where the run's outputs go")
    ap.add_argument("--json", help="also write the table as JSON here")
    args = ap.parse_args(argv)

    import keras

    from ganpipe.config import load_params
    from ganpipe.pipeline import Paths, run_stage

    params = load_params(args.params, [*args.overrides, "tracking.enabled=false"])
    paths = Paths.under(args.workdir)
    seconds: dict[str, float] = {}
    results: dict[str, dict] = {}
    for name in ("prepare", "train", "generate", "classifier", "evaluate"):
        t0 = time.perf_counter()
        results[name] = run_stage(name, params, paths, progress=sys.stderr.isatty())
        seconds[name] = round(time.perf_counter() - t0, 1)

    m = results["evaluate"]
    t = results["train"]
    table = {
        "params": args.params,
        "overrides": args.overrides,
        "backend": keras.backend.backend(),
        "machine": platform.node(),
        "devices": _devices(),
        "num_train": results["prepare"]["num_train"],
        "train_steps": t.get("steps"),
        "train_seconds": t.get("train_seconds"),
        "train_images_per_sec": t.get("images_per_sec"),
        "fd_over_floor": m["classifier_fd"] / m["classifier_fd_floor"],
        **m,
        "stage_seconds": seconds,
    }
    width = max(len(k) for k in table)
    for k, v in table.items():
        print(f"{k:{width}s}  {v:.4f}" if isinstance(v, float) else f"{k:{width}s}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2, default=str) + "\n")
    return 0


def _devices() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return ", ".join(str(d) for d in jax.devices())
    return "cpu"


if __name__ == "__main__":
    sys.exit(main())
