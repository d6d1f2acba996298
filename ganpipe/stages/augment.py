"""Export an augmented dataset: the real training split plus synthetic samples.

`<out_dir>` is a prepared-data directory (`train.npz`, `test.npz`, `summary.json`; see
`ganpipe.data.prepared`), so every loader of prepared data reads it. `train.npz` also holds
`is_synthetic` (bool, N) and is shuffled with augment.seed; `test.npz` is the real test split,
copied unchanged. With nothing synthetic to add (ratio 0) train.npz keeps the real order: a copy.

With `augment.reject_off_label`, samples the domain classifier does not assign to their label (see
`ganpipe.label_filter`) are dropped before the per-class draw; summary.json records how many per class.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ganpipe.config import AugmentParams
from ganpipe.data.prepared import Split, load_prepared, load_split, make_summary
from ganpipe.errors import DataError
from ganpipe.io import atomic_dir, file_sha256, read_json, save_npz, write_json


def augment(
    params: AugmentParams,
    data_dir: str | os.PathLike[str],
    synthetic_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    classifier: Any = None,
) -> dict[str, Any]:
    """Merge the real train split with `synthetic_ratio` synthetic images per real image, per
    class; write the result to `out_dir` atomically and return its summary.

    `classifier` (the domain classifier, `ganpipe.models.classifier.get_classifier`) is required
    when `params.reject_off_label` is set. Raises DataError if the synthetic samples are missing
    (ratio > 0), of another shape or class set, or too few (after rejection) for some class.
    """
    if params.reject_off_label and classifier is None:
        raise ValueError("augment.reject_off_label needs the domain classifier")
    data_dir, synthetic_dir, out = Path(data_dir), Path(synthetic_dir), Path(out_dir)
    real = load_prepared(data_dir)
    class_names = real.class_names
    k = len(class_names)
    real_counts = np.bincount(real.train.labels, minlength=k)
    wanted = synthetic_counts(params.synthetic_ratio, real_counts)

    synthetic_source: dict[str, Any] | None = None
    chosen = np.zeros(0, dtype=np.int64)
    syn = Split(np.zeros((0, *real.train.images.shape[1:]), np.uint8), np.zeros(0, np.int64))
    if wanted.sum() > 0:
        syn, synthetic_source = _load_synthetic(synthetic_dir, class_names)
        if syn.images.shape[1:] != real.train.images.shape[1:]:
            raise DataError(
                f"{synthetic_dir}/samples.npz: images are {syn.images.shape[1:]}, the real data "
                f"in {data_dir} is {real.train.images.shape[1:]}: generate from a generator "
                "trained on this data"
            )
    rng = np.random.default_rng(params.seed)
    rejection: dict[str, Any] | None = None
    if wanted.sum() > 0:
        pool = np.arange(len(syn))
        rejected = None
        if params.reject_off_label:
            from ganpipe.label_filter import classifier_accept_mask, rejection_summary

            mask = classifier_accept_mask(classifier, syn.images, syn.labels, params.min_confidence)
            pool = np.flatnonzero(mask)
            rejection = rejection_summary(syn.labels, mask, class_names, params.min_confidence)
            rejected = np.asarray(list(rejection["rejected_by_class"].values()))
        chosen = pool[select_synthetic(syn.labels[pool], wanted, rng, class_names, rejected)]

    n_real, n_syn = len(real.train), len(chosen)
    images = np.concatenate([real.train.images, syn.images[chosen]])
    labels = np.concatenate([real.train.labels, syn.labels[chosen]]).astype(np.int64)
    is_synthetic = np.concatenate([np.zeros(n_real, bool), np.ones(n_syn, bool)])
    if n_syn:  # nothing added: keep the real order, so ratio 0 is an exact copy
        order = rng.permutation(n_real + n_syn)
        images, labels, is_synthetic = images[order], labels[order], is_synthetic[order]

    summary = make_summary(Split(images, labels), real.test, class_names, source="augmented")
    summary.update(
        {
            "synthetic_ratio": params.synthetic_ratio,
            "seed": params.seed,
            "real_counts": real_counts.tolist(),
            "synthetic_counts": wanted.tolist(),
            "rejection": rejection,
            "num_real": n_real,
            "num_synthetic": n_syn,
            "counts_by_class": {
                name: {"real": int(r), "synthetic": int(s)}
                for name, r, s in zip(class_names, real_counts, wanted, strict=True)
            },
            "sources": {
                "real": {
                    "dir": str(data_dir),
                    "content_hash": real.summary.get("content_hash"),
                    "source": real.summary.get("source"),
                },
                "synthetic": synthetic_source,
            },
        }
    )
    with atomic_dir(out) as tmp:
        save_npz(tmp / "train.npz", images=images, labels=labels, is_synthetic=is_synthetic)
        shutil.copyfile(data_dir / "test.npz", tmp / "test.npz")
        write_json(tmp / "summary.json", summary)
    return summary


def synthetic_counts(ratio: float, real_counts: np.ndarray) -> np.ndarray:
    """Synthetic samples wanted per class: round(ratio * real count), halves rounded up."""
    return np.floor(ratio * np.asarray(real_counts, dtype=np.float64) + 0.5).astype(np.int64)


def select_synthetic(
    labels: np.ndarray,
    wanted: np.ndarray,
    rng: np.random.Generator,
    class_names: list[str],
    rejected: np.ndarray | None = None,
    remedy: str | None = None,
) -> np.ndarray:
    """Row indices: `wanted[k]` distinct rows of class k each, chosen with `rng`; a DataError
    listing every class that has too few. `rejected`: per-class counts already filtered out of
    `labels`; `remedy`: what the message tells the user to do (default: the augment stage's)."""
    available = np.bincount(labels, minlength=len(wanted))[: len(wanted)]
    short = [k for k in range(len(wanted)) if wanted[k] > available[k]]
    if short:
        detail = "; ".join(
            f"class {class_names[k]!r}: needs {wanted[k]}, has {available[k]}"
            + (f" ({rejected[k]} more rejected as off-label)" if rejected is not None else "")
            for k in short
        )
        if remedy is None:
            need = f"to at least {int(wanted.max())}"
            if rejected is not None:
                need = f"above {int(wanted.max())} (the rejection drops some)"
            remedy = (
                f"raise generate.per_class {need} with generate.proportional=false and re-run "
                "`ganpipe generate`, or lower augment.synthetic_ratio"
            )
            if rejected is not None:
                remedy += " or augment.min_confidence"
        raise DataError(f"not enough synthetic samples ({detail}): {remedy}")
    picks = [
        rng.choice(np.flatnonzero(labels == k), size=int(wanted[k]), replace=False)
        for k in range(len(wanted))
    ]
    return np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, np.int64)


def _load_synthetic(synthetic_dir: Path, class_names: list[str]) -> tuple[Split, dict[str, Any]]:
    path = synthetic_dir / "samples.npz"
    if not path.exists():
        raise DataError(f"{path}: not found (run `ganpipe generate` first)")
    split = load_split(path)
    source: dict[str, Any] = {"dir": str(synthetic_dir), "samples_sha256": file_sha256(path)}
    summary_path = synthetic_dir / "summary.json"
    if summary_path.exists():
        syn_summary = read_json(summary_path)
        names = syn_summary.get("class_names")
        if names is not None and list(names) != list(class_names):
            raise DataError(
                f"{summary_path}: synthetic classes {names} differ from the real classes "
                f"{class_names}: generate from a generator trained on this data"
            )
        source["generator_version"] = syn_summary.get("generator_version")
        source["seed"] = syn_summary.get("seed")
    bad = (split.labels < 0) | (split.labels >= len(class_names))
    if bad.any():
        raise DataError(
            f"{path}: labels outside 0..{len(class_names) - 1} (e.g. {split.labels[bad][0]}): "
            "generate from a generator trained on this data"
        )
    return split, source
