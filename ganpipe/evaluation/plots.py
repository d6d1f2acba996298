"""The figures of the evaluation wing, drawn with matplotlib's Agg canvas (no pyplot, no display).

The evaluate stage's per_class_accuracy.png (`plot_per_class`), feature_space.png
(`plot_feature_space`) and nearest_copies.png (`nearest_copies_figure`, the memorization guard's
nearest training images); the utility stage's utility.png (`plot_utility`). matplotlib is imported
only to draw: without it the evaluate stage warns once and writes no plots (`has_matplotlib`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.evaluation.downstream import METRICS
from ganpipe.evaluation.metrics.memorization import NearCopies
from ganpipe.io import atomic_path

PER_CLASS_PLOT = "per_class_accuracy.png"
FEATURE_PLOT = "feature_space.png"
NEAREST_PLOT = "nearest_copies.png"
# Synthetic samples drawn in nearest_copies.png.
NEAREST_SHOWN = 20
# Points per set in the feature-space figure.
PLOT_POINTS = 2000


def has_matplotlib(warn: bool = True) -> bool:
    """Whether matplotlib is installed; if not and `warn`, a UserWarning pointed at whoever called
    the evaluate stage's library function (has_matplotlib <- evaluation_plots <- evaluate)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if warn:
            warnings.warn("matplotlib is not installed: no evaluation plots", stacklevel=4)
        return False
    return True


def save_figure(fig: Any, path: Path) -> None:
    """`fig` as a 100 dpi PNG at `path`, atomically."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)


# ---- the evaluate stage ----------------------------------------------------------------------------


def evaluation_plots(
    out: Path, rows: list[dict[str, Any]], fd_key: str, real: Any, syn: Any
) -> list[Path]:
    """per_class_accuracy.png (from the per-class `rows`) and feature_space.png (from the `real`
    and `syn` feature sets) in `out`; the files written: none, with a warning, without
    matplotlib."""
    if not has_matplotlib():
        return []
    plot_per_class(out / PER_CLASS_PLOT, rows, fd_key)
    plot_feature_space(out / FEATURE_PLOT, real.features, real.labels, syn.features, syn.labels)
    return [out / PER_CLASS_PLOT, out / FEATURE_PLOT]


def memorization_plots(
    out: Path, syn_images: np.ndarray, train_images: np.ndarray, near: NearCopies
) -> list[Path]:
    """nearest_copies.png in `out` when matplotlib is installed (silently skipped otherwise:
    `evaluation_plots` warns, once); the files written."""
    if not has_matplotlib(warn=False):
        return []
    nearest_copies_figure(out / NEAREST_PLOT, syn_images, train_images, near, NEAREST_SHOWN)
    return [out / NEAREST_PLOT]


def plot_per_class(path: Path, rows: list[dict[str, Any]], fd_key: str) -> None:
    """Bar charts of per-class conditional accuracy and Fréchet distance (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [str(r["class_name"]) for r in rows]
    acc = [r["conditional_accuracy"] for r in rows]
    fd = [r[fd_key] for r in rows]
    fig = Figure(figsize=(max(6.0, 0.5 * len(rows) + 2), 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(rows))
    top.bar(x, np.nan_to_num(acc), color="tab:blue")
    top.set_ylim(0, 1)
    top.set_ylabel("conditional accuracy")
    top.set_title("per class: does a sample look like its label? (higher is better)")
    bottom.bar(x, np.nan_to_num(fd), color="tab:orange")
    bottom.set_ylabel(fd_key)
    bottom.set_title("per class: Fréchet distance to the real class (lower is better)")
    bottom.set_xticks(x, names, rotation=45 if len(rows) > 12 else 0)
    save_figure(fig, path)


def plot_feature_space(
    path: Path, real: np.ndarray, real_labels: np.ndarray, syn: np.ndarray, syn_labels: np.ndarray
) -> None:
    """Real and synthetic features projected on the real set's first two principal axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0)
    r_idx = rng.permutation(len(real))[:PLOT_POINTS]
    s_idx = rng.permutation(len(syn))[:PLOT_POINTS]
    r = real[r_idx].astype(np.float64)
    centre = r.mean(axis=0)
    _, _, vt = np.linalg.svd(r - centre, full_matrices=False)
    axes = vt[:2].T
    pr, ps = (r - centre) @ axes, (syn[s_idx] - centre) @ axes
    k = int(max(real_labels.max(initial=0), syn_labels.max(initial=0))) + 1
    colours = {"cmap": "tab10" if k <= 10 else "tab20" if k <= 20 else "viridis"}
    colours.update(vmin=-0.5, vmax=k - 0.5)  # the same colour for a class in both panels
    fig = Figure(figsize=(11.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, pts, lab, title in (
        (left, pr, real_labels[r_idx], "real (train)"),
        (right, ps, syn_labels[s_idx], "synthetic"),
    ):
        sc = ax.scatter(pts[:, 0], pts[:, 1], c=lab, s=4, alpha=0.6, **colours)
        ax.set_title(f"{title}, {len(pts)} points")
        ax.set_xlabel("PC 1 of real features")
    left.set_ylabel("PC 2 of real features")
    fig.colorbar(sc, ax=[left, right], label="class")
    save_figure(fig, path)


def nearest_copies_figure(
    path: str | os.PathLike[str],
    syn_images: np.ndarray,
    train_images: np.ndarray,
    near: NearCopies,
    n: int = 20,
) -> None:
    """PNG of the `n` synthetic samples closest to a training image in pixels, each beside that
    training image, titled with the distance (red: flagged as a near-copy)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = np.argsort(near.pixel_distance, kind="stable")[: max(n, 0)]
    cols = 5  # pairs per row
    rows = max(1, -(-len(order) // cols))
    fig = Figure(figsize=(2.0 * cols * 1.1, 1.25 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(rows, 2 * cols, squeeze=False))
    for ax in axes.flat:
        ax.set_axis_off()
    for k, i in enumerate(order):
        r, c = divmod(k, cols)
        left, right = axes[r, 2 * c], axes[r, 2 * c + 1]
        _show(left, syn_images[i])
        _show(right, train_images[near.pixel_index[i]])
        colour = "tab:red" if near.mask[i] else "black"
        left.set_title(f"d={near.pixel_distance[i]:.3g}", fontsize=8, color=colour)
        right.set_title(f"train #{near.pixel_index[i]}", fontsize=8)
    fig.suptitle(
        "synthetic (left) beside its nearest training image (right), pixel distance "
        "(red: a near-copy)",
        fontsize=9,
    )
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _show(ax: Any, image: np.ndarray) -> None:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
    ax.set_axis_off()


# ---- the utility stage -----------------------------------------------------------------------------


def plot_utility(path: Path, result: dict[str, Any]) -> None:
    """A row per scenario (Agg, no pyplot): every arm's mean verdict metric on the test split with
    std error bars (the chosen baseline and treatment outlined); the headline difference per metric
    with its 95% interval, for each architecture; the worth-in-real-images curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scenarios = result.get("scenarios", {})
    rows = max(1, len(scenarios))
    fig = Figure(figsize=(15.0, 3.8 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.asarray(fig.subplots(rows, 3, squeeze=False))
    if not scenarios:
        for ax in axes.ravel():
            ax.set_axis_off()
        axes[0, 0].text(0, 0.5, "utility stage disabled (utility.enabled: false)")
    metric = result.get("verdict_metric", "balanced_accuracy")
    for r, (name, study) in enumerate(scenarios.items()):
        _utility_arms(axes[r, 0], name, study, metric)
        _utility_deltas(axes[r, 1], study)
        _utility_worth(axes[r, 2], study.get("worth"))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _utility_arms(ax: Any, name: str, study: dict[str, Any], metric: str) -> None:
    arms = list(study["arms"])
    means = [study["arms"][a][metric]["mean"] for a in arms]
    stds = [study["arms"][a][metric]["std"] for a in arms]
    chosen = (study["baseline"], study["treatment"])
    colours = ["tab:green" if a.startswith("synthetic") else "tab:blue" for a in arms]
    edges = ["black" if a in chosen else "none" for a in arms]
    y = np.arange(len(arms))
    ax.barh(y, means, xerr=stds, capsize=3, color=colours, edgecolor=edges, linewidth=1.5)
    low = min(mu - s for mu, s in zip(means, stds, strict=True))
    ax.set_xlim(max(0.0, low - 0.02), min(1.0, max(means) + max(stds) + 0.02))
    ax.set_yticks(y, arms, fontsize=6)
    ax.invert_yaxis()
    ax.set_title(f"{name}: {metric} per arm (test; outlined: chosen on validation)", fontsize=9)


def _utility_deltas(ax: Any, study: dict[str, Any]) -> None:
    comparisons = study["comparisons"]
    y = np.arange(len(METRICS))
    for j, (label, comp) in enumerate(comparisons.items()):
        d = [comp["metrics"][m] for m in METRICS]
        mean = np.array([v["mean"] for v in d])
        err = np.array([[v["mean"] - v["low"] for v in d], [v["high"] - v["mean"] for v in d]])
        ax.errorbar(mean, y + 0.2 * j, xerr=err, fmt="o", capsize=3, label=label)
    ax.axvline(0, color="gray", linewidth=1)
    ax.set_yticks(y, list(METRICS), fontsize=7)
    ax.invert_yaxis()
    ax.legend(fontsize=7)
    head = comparisons["headline"]
    ax.set_title(f"{head['treatment']} - {head['baseline']} (95%): {study['verdict']}", fontsize=9)


def _utility_worth(ax: Any, worth: dict[str, Any] | None) -> None:
    if not worth:
        ax.set_axis_off()
        ax.text(0, 0.5, "worth in real images: not measured\n(no held-out real images)", fontsize=8)
        return
    x, y = np.array(worth["multiples"]), np.array(worth["curve"])
    std = np.array(worth["curve_std"])
    ax.plot(x, y, "o-", color="tab:blue", label="real only (more rare images)")
    ax.fill_between(x, y - std, y + std, color="tab:blue", alpha=0.2)
    ax.axhline(worth["treatment"], color="tab:green", label="real + synthetic")
    ax.axvspan(worth["low"], worth["high"], color="tab:green", alpha=0.15)
    ax.axvline(worth["worth"], color="tab:green", linestyle="--")
    ax.set_xlabel("rare classes' real images (x their count)")
    ax.set_ylabel(worth["metric"])
    ax.legend(fontsize=7)
    ax.set_title(
        f"worth {worth['worth']:.2f}x the rare real images (95% {worth['low']:.2f}-"
        f"{worth['high']:.2f})",
        fontsize=9,
    )
