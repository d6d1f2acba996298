"""The markdown reports the Prefect flows publish as artifacts: one for a pipeline run, one for a
sweep. Plain functions of the results, so they are tested without Prefect; the flows only publish.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganpipe.orchestration.run_links import RunLinks

if TYPE_CHECKING:
    from ganpipe.orchestration.sweep import Sweep
    from ganpipe.pipeline import Paths

# The sweep table's columns after the sweep's own metric.
SWEEP_METRICS = ("classifier_fd", "kid_mean", "conditional_accuracy", "precision", "recall")


def _cell(v: Any, count: bool = False) -> str:
    """A table cell: a count as an integer (MLflow hands back every metric as a float: the
    champion's `num_synthetic` is 500.0), other numbers with 4 decimals."""
    if v is None:
        return ""
    if count and isinstance(v, int | float) and float(v).is_integer():
        return str(int(v))
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def is_count(name: str, value: Any) -> bool:
    """A count: an int in this run's metrics (eval.json keeps them ints), or named num_*."""
    return (isinstance(value, int) and not isinstance(value, bool)) or name.startswith("num_")


def pipeline_report(
    metrics: dict[str, Any],
    paths: Paths,
    links: RunLinks | None = None,
    promotion: dict[str, Any] | None = None,
    utility: dict[str, Any] | None = None,
    augment: dict[str, Any] | None = None,
) -> str:
    """The run's report. On top, the two answers a reader looks for (does it help? does this run's
    generator hold the `champion` alias?) and the sample grid as an image; then the metrics (beside
    the champion's when promotion compared them), the utility details, what augment's filters kept
    and dropped, the promotion decision (`Decision.as_dict()`), the run's own artifacts in MLflow
    (`links`: ganpipe/orchestration/run_links.py), and last the workspace paths the next run overwrites."""
    links = links or RunLinks()
    text = (
        "# ganpipe run\n\n"
        f"**Does it help?** {utility_summary(utility)}\n\n"
        f"**Champion:** {champion_summary(promotion, links)}\n"
    )
    if links.image:
        text += f"\n![sample grid: one row per class]({links.image})\n\n*{links.image_note}*\n"
    else:
        text += "\n*no sample grid: the generate stage wrote none*\n"
    champ = (promotion or {}).get("champion_metrics") or {}
    if champ:
        label = f"champion v{promotion['champion_version']} ({promotion['basis']})"
        head = f"| metric | this run | {label} |\n|---|---|---|\n"
        rows = "\n".join(
            f"| {k} | {_cell(v, is_count(k, v))} | {_cell(champ.get(k), is_count(k, v))} |"
            for k, v in sorted(metrics.items())
        )
    else:
        head = "| metric | value |\n|---|---|\n"
        rows = "\n".join(
            f"| {k} | {_cell(v, is_count(k, v))} |" for k, v in sorted(metrics.items())
        )
    text += f"\n## Metrics\n{head}{rows}\n"
    text += per_class_section(paths.metrics / "per_class.csv")
    text += utility_section(utility) + filters_section(augment)
    if promotion:
        text += (
            f"\n## Champion: {promotion['decision']}\n"
            f"- model: `{promotion['model_name']}` version {promotion['version']}"
            f" ({promotion['metric']}, {promotion['mode']} is better)\n"
            f"- reason: {promotion['reason']}\n"
        )
    return text + run_section(links) + outputs_section(paths)


def utility_summary(utility: dict[str, Any] | None) -> str:
    """The one-line answer under the title: the verdict and the headline scenario's difference."""
    if not utility or utility.get("skipped"):
        return "not known: the utility stage's result is missing"
    if not utility.get("enabled"):
        return "not measured: the utility stage is disabled (`utility.enabled: false`)"
    m = utility.get("verdict_metric")
    scenarios = utility.get("scenarios") or {}
    name = utility.get("headline_scenario") or next(iter(scenarios), None)
    line = f"**{utility.get('verdict')}** on {m}"
    if name in scenarios:
        sc = scenarios[name]
        comp = sc["comparisons"][sc["headline_comparison"]]
        d = comp["metrics"][m]
        line += (
            f": {comp['treatment']} vs {comp['baseline']} {d['mean']:+.4f}"
            f" (95% interval {d['low']:+.4f} .. {d['high']:+.4f}, scenario {name})"
        )
    return line


def champion_summary(promotion: dict[str, Any] | None, links: RunLinks) -> str:
    """Whether this run's registered generator holds the `champion` alias after promotion."""
    if not promotion:
        why = "tracking is off" if links.run_id is None else "promotion did not run"
        return f"no promotion ({why}); the `champion` alias is unchanged"
    name, version = promotion["model_name"], promotion.get("version")
    held = promotion.get("champion_version")
    if not version:
        return (
            f"this run registered no model version; `champion` is unchanged ({promotion['reason']})"
        )
    if promotion["decision"] == "promoted":
        was = f"; it was v{held}" if held else " (no version held it before)"
        return f"this run's `{name}` v{version} now holds the `champion` alias{was}"
    if str(held) == str(version):
        return f"this run's `{name}` v{version} already holds the `champion` alias"
    return (
        f"this run's `{name}` v{version} does **not** hold the `champion` alias; "
        f"v{held} keeps it ({promotion['reason']})"
    )


# per_class.csv's columns the report shows, with their headings: a rare class's samples can be
# on-label (accuracy) yet cover little of its real variety (recall, coverage) and sit nearer its
# few training images than held-out ones (closer_to_train_fraction above 0.5).
PER_CLASS_SHOWN = {
    "class_name": "class",
    "n_real": "real images",
    "n_synthetic": "samples",
    "conditional_accuracy": "on-label",
    "recall": "recall",
    "coverage": "coverage",
    "closer_to_train_fraction": "closer to train",
}


def per_class_section(per_class_csv: Path) -> str:
    """The evaluate stage's per-class table (empty when the file is absent): "" cells are
    numbers a class had too few samples for."""
    if not per_class_csv.is_file():
        return ""
    with open(per_class_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in PER_CLASS_SHOWN if rows and c in rows[0]]
    head = "| " + " | ".join(PER_CLASS_SHOWN[c] for c in cols) + " |\n"
    head += "|" + "---|" * len(cols) + "\n"

    def cell(value: str) -> str:
        try:
            number = float(value)
        except ValueError:
            return value
        return value if number.is_integer() and "." not in value else f"{number:.3f}"

    body = "\n".join("| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows)
    return f"\n## Per class\n{head}{body}\n"


def run_section(links: RunLinks) -> str:
    """This run's own records, which later runs do not overwrite."""
    if links.run_id is None:
        return "\n## MLflow\ntracking off: no run recorded\n"
    run = f"[{links.run_id}]({links.run_page})" if links.run_page else f"`{links.run_id}`"
    lines = [f"\n## This run in MLflow\n- run: {run}"]
    lines += [f"- generator: {m}" for m in links.model]
    for label, (path, where) in links.files.items():
        lines.append(f"- {label}: [{path}]({where})" if links.server else f"- {label}: `{where}`")
    return "\n".join(lines) + "\n"


def outputs_section(paths: Paths) -> str:
    """The workspace's outputs: the latest, which the next run replaces."""
    models, synthetic, metrics_dir = paths.models, paths.synthetic, paths.metrics
    return (
        "\n## Latest outputs (overwritten by the next run)\n"
        f"- generator: `{models / 'generator.keras'}`"
        f" (sample grid `{models / 'samples' / 'final.png'}`)\n"
        f"- synthetic data: `{synthetic}/`"
        f" (samples.npz, images/, manifest.csv, grid `{synthetic / 'grid.png'}`)\n"
        f"- augmented data: `{paths.augmented / 'train.npz'}`\n"
        f"- metrics: `{metrics_dir / 'eval.json'}`, `{metrics_dir / 'per_class.csv'}`\n"
    )


def utility_section(utility: dict[str, Any] | None) -> str:
    """Does it help? The verdict and, per scenario, the headline comparison on the verdict
    metric: both arms' means and the paired difference with its 95% interval."""
    if not utility or not utility.get("enabled"):
        return ""
    m = utility.get("verdict_metric")
    lines = [f"\n## Does it help? **{utility.get('verdict')}** ({m})\n"]
    for name, sc in (utility.get("scenarios") or {}).items():
        comp = sc["comparisons"][sc["headline_comparison"]]
        base, treat = sc["arms"][comp["baseline"]][m], sc["arms"][comp["treatment"]][m]
        d = comp["metrics"][m]
        lines.append(
            f"- {name}: **{sc['verdict']}**: {comp['treatment']} {treat['mean']:.4f} vs "
            f"{comp['baseline']} {base['mean']:.4f} (the strongest of each, chosen on validation), "
            f"difference {d['mean']:+.4f} (95% interval {d['low']:+.4f} .. {d['high']:+.4f}, "
            f"{len(base['per_seed'])} seeds; this run could detect {d['detectable']:.4f} or more)"
        )
        second = sc["comparisons"].get("second_architecture")
        if second:
            d2 = second["metrics"][m]
            lines.append(
                f"  - second opinion ({sc['second_architecture']}): **{d2['verdict']}**, "
                f"difference {d2['mean']:+.4f} (95% interval {d2['low']:+.4f} .. {d2['high']:+.4f})"
            )
        worth = sc.get("worth")
        if worth:
            bound = " (at least: beyond the curve)" if worth["above"] else ""
            bound = " (at most: below the curve)" if worth["below"] else bound
            lines.append(
                f"  - worth: the samples are worth {worth['worth']:.2f}x the rare classes' "
                f"{worth['rare_real_images']} real images{bound} (95% interval "
                f"{worth['low']:.2f} .. {worth['high']:.2f}x)"
            )
    return "\n".join(lines) + "\n"


def filters_section(augment: dict[str, Any] | None) -> str:
    """Per filter: dropped per class; then what was exported."""
    filters = ((augment or {}).get("filters") or {}).get("filters") or {}
    if not filters:
        return ""
    names = list(next(iter(filters.values()))["dropped_by_class"])
    head = "| filter | " + " | ".join(names) + " | dropped |\n|---|" + "---|" * (len(names) + 1)
    rows = [
        f"| {f} | "
        + " | ".join(str(v["dropped_by_class"][n]) for n in names)
        + f" | {v['dropped']} |"
        for f, v in filters.items()
    ]
    added = f"{augment['num_synthetic']} synthetic added to {augment['num_real']} real"
    return (
        "\n## Filters (samples dropped per class)\n"
        + head
        + "\n"
        + "\n".join(rows)
        + (f"\n\n{added} (augment.mode {augment.get('mode')})\n")
    )


def sweep_report(
    sweep: Sweep, sweep_id: str, results: list[dict[str, Any]], best: dict[str, Any]
) -> str:
    """A table of every configuration (its overrides, metrics or error, MLflow run, outputs) under
    a line naming the best by the sweep's metric. `best` must be one of `results` (it is bolded)."""
    cols = [sweep.metric, *(m for m in SWEEP_METRICS if m != sweep.metric)]
    head = "| config | overrides | " + " | ".join(cols) + " | MLflow run | outputs |"
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    overrides = {c.name: c.overrides for c in sweep.configs}
    for r in results:
        name = f"**{r['name']}** (best)" if r is best else r["name"]
        ov = ", ".join(f"`{k}={v}`" for k, v in overrides[r["name"]].items())
        if "error" in r:
            vals = ["failed: " + r["error"].replace("|", "/")[:120]] + [""] * (len(cols) - 1)
        else:
            vals = [_fmt(r["metrics"].get(c, "")) for c in cols]
        lines.append(
            f"| {name} | {ov} | {' | '.join(vals)} | {r.get('run_id') or '-'} | `{r['root']}` |"
        )
    return (
        f"# ganpipe sweep {sweep_id}\n\n"
        f"Best by {sweep.metric} ({sweep.mode}): **{best['name']}** = "
        f"{_fmt(best['metrics'][sweep.metric])}, outputs `{best['root']}`\n\n"
        + "\n".join(lines)
        + "\n"
    )


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
