"""Plot time-to-quality curves (the --json files of benchmarks/time_to_quality.py) in one figure:
Fréchet distance / floor (log scale) and conditional accuracy against seconds of training.

    python benchmarks/plot_ttq.py docs/img/ttq.png base=/tmp/base.json ema=/tmp/ema.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("curves", nargs="+", help="label=path.json")
    ap.add_argument("--title", default="time to quality")
    args = ap.parse_args(argv)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    fd_ax, acc_ax = fig.subplots(1, 2)
    for spec in args.curves:
        label, _, path = spec.partition("=")
        data = json.loads(Path(path).read_text())
        seconds = [row["seconds"] for row in data["curve"]]
        fd_ax.plot(seconds, [row["fd_over_floor"] for row in data["curve"]], "o-", label=label)
        acc_ax.plot(seconds, [row["conditional_accuracy"] for row in data["curve"]], "o-")
    clock = json.loads(Path(args.curves[0].partition("=")[2]).read_text()).get("clock", "wall")
    fd_ax.set(yscale="log", xlabel=f"seconds of training ({clock} clock)", ylabel="FD / floor")
    acc_ax.set(xlabel=f"seconds of training ({clock} clock)", ylabel="conditional accuracy")
    fd_ax.grid(True, which="both", alpha=0.3)
    acc_ax.grid(True, alpha=0.3)
    fd_ax.legend(fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
