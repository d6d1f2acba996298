"""What the utility stage costs: the pipeline up to `classifier`, then `utility`, timed.

Runs in a work directory (default: a new temporary one) holding a copy of params.yaml; the stages
are the pipeline's own (`ganpipe.pipeline.run_stage`), tracking off. Prints each stage's seconds,
then the utility stage's seconds per arm (summed over seeds), its steps per training and the verdict.
Rerun with the same `--workdir` to time `utility` alone: the earlier stages reuse their outputs and
checkpoints (keys: params + data + code).

  python benchmarks/utility_cost.py                          # default params (mnist_5k)
  python benchmarks/utility_cost.py --workdir /tmp/uc --set utility.seeds=5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEFORE = ("prepare", "train", "generate", "classifier")


def seconds_per_arm(trainings: list[dict]) -> dict[str, float]:
    """Each arm's training seconds, summed over its seeds (worker time, not wall time)."""
    out: dict[str, float] = {}
    for t in trainings:
        out[t["arm"]] = round(out.get(t["arm"], 0.0) + t["seconds"], 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", type=Path, help="reused between runs (default: a new temp dir)")
    p.add_argument("--params", type=Path, default=REPO / "params.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="S.K=V")
    args = p.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("tensorflow", "absl", "matplotlib", "PIL", "h5py"):
        logging.getLogger(name).setLevel(logging.WARNING)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="utility_cost."))
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.params, work / "params.yaml")
    os.chdir(work)  # the default Paths are relative to the working directory

    from ganpipe.config import load_params
    from ganpipe.pipeline import Paths, run_stage

    params = load_params("params.yaml", ["tracking.enabled=false", *args.overrides])
    paths = Paths()
    seconds: dict[str, float] = {}
    result: dict = {}
    for stage in (*BEFORE, "utility"):
        t0 = time.perf_counter()
        result = run_stage(stage, params, paths, progress=False)
        seconds[stage] = round(time.perf_counter() - t0, 1)
        print(f"{stage:10s} {seconds[stage]:8.1f} s", file=sys.stderr, flush=True)
    report = {
        "workdir": str(work),
        "stage_seconds": seconds,
        "verdict": result.get("verdict"),
        "verdict_metric": result.get("verdict_metric"),
        "scenarios": {
            name: {
                "seconds": s["seconds"],
                "workers": s["workers"],
                "steps": s["steps"],
                "seconds_per_arm": seconds_per_arm(s["trainings"]),
                "num_real": s["num_real"],
                "num_synthetic": s["num_synthetic"],
                "verdict": s["verdict"],
                "means": {
                    arm: {m: round(v["mean"], 4) for m, v in metrics.items()}
                    for arm, metrics in s["arms"].items()
                },
            }
            for name, s in result.get("scenarios", {}).items()
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
