"""A utility study's metrics/utility.json as the markdown tables docs/results.md quotes: every arm
(mean ± std over the seeds, test split; the validation score the choice was made on), the chosen
pair, the headline and second-architecture differences with their 95% intervals and detectable
effects, the worth-in-real-images curve, and the cost.

    python benchmarks/utility_table.py /work/lt/metrics/utility.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "worst_class_recall")


def pm(v: dict[str, Any]) -> str:
    return f"{v['mean']:.4f} ± {v['std']:.4f}"


def points(x: float) -> str:
    return f"{100 * x:+.2f}"


def arm_table(sc: dict[str, Any], metric: str) -> list[str]:
    head = ["arm (seeds)", *METRICS, f"validation {metric}", "s / training"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    seconds: dict[str, list[float]] = {}
    for t in sc.get("trainings", []):
        seconds.setdefault(t["arm"], []).append(t["seconds"])
    for arm, row in sc["arms"].items():
        mark = (
            " (**baseline**)"
            if arm == sc["baseline"]
            else " (**treatment**)"
            if arm == sc["treatment"]
            else ""
        )
        n = len(row[metric]["per_seed"])
        s = seconds.get(arm, [])
        cells = [f"`{arm}`{mark} ({n})", *(pm(row[m]) for m in METRICS)]
        val = sc.get("validation", {}).get(arm)
        cells += [pm(val[metric]) if val else "", f"{sum(s) / len(s):.0f}" if s else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def comparison(name: str, comp: dict[str, Any]) -> list[str]:
    lines = [
        f"{name}: `{comp['treatment']}` − `{comp['baseline']}`, paired by seed (points):",
        "",
        "| metric | difference | 95% interval | half-width | detectable | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for m in METRICS:
        c = comp["metrics"][m]
        half = (c["high"] - c["low"]) / 2
        lines.append(
            f"| {m} | {points(c['mean'])} | {points(c['low'])} .. {points(c['high'])} | "
            f"{100 * half:.2f} | {100 * c['detectable']:.2f} | {c['verdict']} |"
        )
    return lines


def worth_lines(w: dict[str, Any] | None) -> list[str]:
    if not w:
        return ["No worth curve (no held-out real images, or utility.worth_multiples is [])."]
    curve = ", ".join(
        f"{m:g}×: {c:.4f} ± {s:.4f}"
        for m, c, s in zip(w["multiples"], w["curve"], w["curve_std"], strict=True)
    )
    bound = " (below the 1× point: a bound)" if w["below"] else ""
    bound = " (above the last point: a bound)" if w["above"] else bound
    return [
        f"Worth in real images ({w['metric']}; rare classes {w['rare_classes']}, "
        f"{w['rare_real_images']} real images, held-out added {w['held_out_added']}): "
        f"baseline curve {curve}; with the samples {w['treatment']:.4f} → worth "
        f"**{w['worth']:.2f}×** (95% bootstrap {w['low']:.2f} .. {w['high']:.2f}){bound}."
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("utility_json")
    args = ap.parse_args(argv)
    u = json.loads(Path(args.utility_json).read_text())
    metric = u["verdict_metric"]
    print(f"verdict: **{u['verdict']}** ({metric})\n")
    for name, sc in u["scenarios"].items():
        total = len(sc.get("trainings", []))
        print(
            f"### scenario {name}: {sc['num_real']} real training images ({sc['num_validation']} "
            f"of them validation), {sc['num_synthetic']} synthetic, {sc['num_test']} test; "
            f"{sc['steps']} steps per training; {total} trainings on {sc['workers']} workers in "
            f"{sc['seconds']:.0f} s\n"
        )
        print("\n".join(arm_table(sc, metric)))
        print()
        for key, comp in sc["comparisons"].items():
            print("\n".join(comparison(key, comp)))
            print()
        print(f"verdicts: {sc['verdicts']} → {sc['verdict']}\n")
        print("\n".join(worth_lines(sc.get("worth"))))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
