"""The markdown reports the Prefect flows publish as artifacts: one for a pipeline run, one for a
sweep. Plain functions of the results, so they are tested without Prefect; the flows only publish.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ganpipe.ops.sweep import Sweep
    from ganpipe.pipeline import Paths

# The sweep table's columns after the sweep's own metric.
SWEEP_METRICS = ("classifier_fd", "kid_mean", "conditional_accuracy", "precision", "recall")


def _cell(v: Any) -> str:
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def pipeline_report(
    metrics: dict[str, Any],
    paths: Paths,
    run_id: str | None,
    promotion: dict[str, Any] | None = None,
    run_url: str | None = None,
    utility: dict[str, Any] | None = None,
    augment: dict[str, Any] | None = None,
) -> str:
    """The run's report: metrics (beside the champion's when promotion compared them), the
    utility stage's verdict, what augment's filters kept and dropped, the promotion decision
    (`Decision.as_dict()`), and where the outputs are."""
    champ = (promotion or {}).get("champion_metrics") or {}
    if champ:
        label = f"champion v{promotion['champion_version']} ({promotion['basis']})"
        head = f"| metric | this run | {label} |\n|---|---|---|\n"
        rows = "\n".join(
            f"| {k} | {_cell(v)} | {_cell(champ.get(k))} |" for k, v in sorted(metrics.items())
        )
    else:
        head = "| metric | value |\n|---|---|\n"
        rows = "\n".join(f"| {k} | {_cell(v)} |" for k, v in sorted(metrics.items()))
    text = f"# ganpipe run\n\n{head}{rows}\n"
    text += utility_section(utility) + filters_section(augment)
    if promotion:
        text += (
            f"\n## Champion: {promotion['decision']}\n"
            f"- model: `{promotion['model_name']}` version {promotion['version']}"
            f" ({promotion['metric']}, {promotion['mode']} is better)\n"
            f"- reason: {promotion['reason']}\n"
        )
    run = f"[{run_id}]({run_url})" if run_id and run_url else f"`{run_id or 'tracking off'}`"
    models, synthetic, metrics_dir = paths.models, paths.synthetic, paths.metrics
    return text + (
        "\n## Outputs\n"
        f"- generator: `{models / 'generator.keras'}`"
        f" (sample grid `{models / 'samples' / 'final.png'}`)\n"
        f"- synthetic data: `{synthetic}/`"
        f" (samples.npz, images/, manifest.csv, grid `{synthetic / 'grid.png'}`)\n"
        f"- augmented data: `{paths.augmented / 'train.npz'}`\n"
        f"- metrics: `{metrics_dir / 'eval.json'}`, `{metrics_dir / 'per_class.csv'}`\n"
        f"- MLflow run: {run}\n"
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
            f"{comp['baseline']} {base['mean']:.4f}, difference {d['mean']:+.4f} "
            f"(95% interval {d['low']:+.4f} .. {d['high']:+.4f}, {len(base['per_seed'])} seeds)"
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
