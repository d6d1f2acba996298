"""Export an augmented dataset: the real training split plus synthetic samples.

`<out_dir>` is a prepared-data directory (`train.npz`, `test.npz`, `summary.json`; see
`ganpipe.data.prepared`), so every loader of prepared data reads it. `train.npz` also holds
`is_synthetic` (bool, N) and is shuffled with augment.seed; `test.npz` is the real test split,
copied unchanged. With nothing synthetic to add (ratio 0) train.npz keeps the real order: a copy.

With `augment.reject_off_label`, samples the evaluator does not assign to their label (see
`ganpipe.evaluator.accept_mask`) are dropped before the per-class draw; summary.json records how many
per class.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ganpipe.config import AugmentParams, Params
from ganpipe.data.prepared import Split, load_prepared, make_summary
from ganpipe.data.synthetic import load_synthetic, select_synthetic, synthetic_counts
from ganpipe.io import atomic_dir, save_npz, write_json
from ganpipe.ops.tracking import Tracker
from ganpipe.paths import Paths

if TYPE_CHECKING:
    from ganpipe.evaluator import Evaluator


def run(params: Params, paths: Paths, tracker: Tracker, progress: bool = True) -> dict[str, Any]:
    """The stage: prepared + synthetic (+ the evaluator, for the off-label filter) -> augmented."""
    evaluator = None
    if params.augment.reject_off_label:
        from ganpipe.evaluator import get_evaluator

        evaluator = get_evaluator(paths.prepared, params.evaluate, paths.evaluator)
    return augment(params.augment, paths.prepared, paths.synthetic, paths.augmented, evaluator)


def augment(
    params: AugmentParams,
    data_dir: str | os.PathLike[str],
    synthetic_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    evaluator: Evaluator | None = None,
) -> dict[str, Any]:
    """Merge the real train split with `synthetic_ratio` synthetic images per real image, per
    class; write the result to `out_dir` atomically and return its summary.

    `evaluator` (`ganpipe.evaluator.get_evaluator`) is required
    when `params.reject_off_label` is set. Raises DataError if the synthetic samples are missing
    (ratio > 0), of another shape or class set, or too few (after rejection) for some class.
    """
    if params.reject_off_label and evaluator is None:
        raise ValueError("augment.reject_off_label needs the evaluator")
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
        syn, synthetic_source = load_synthetic(synthetic_dir, class_names, real.image_shape)
    rng = np.random.default_rng(params.seed)
    rejection: dict[str, Any] | None = None
    if wanted.sum() > 0:
        pool = np.arange(len(syn))
        rejected = None
        if params.reject_off_label:
            from ganpipe.evaluator import rejection_summary

            mask = evaluator.accept_mask(syn.images, syn.labels, params.min_confidence)
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
