"""Generate labelled synthetic samples with a trained class-conditional generator.

`<out_dir>/samples.npz` holds `images` (uint8, N x H x W x C) and `labels` (int64, N) in the
prepared-data format, ordered by class; `manifest.csv` lists every row, `summary.json` the counts
and the generator version; `images/<class>/<index:06d>.png` (optional) and `grid.png` are for
looking at. The whole directory is built aside and swapped in at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ganpipe.config import Params
from ganpipe.data.prepared import read_summary
from ganpipe.data.synthetic import (
    PNG_CHANNELS,
    class_counts,
    class_dir_names,
    headroom_of,
    write_png_tree,
)
from ganpipe.errors import DataError
from ganpipe.gan.generator import check_fits, inspect_generator, load_generator, sample
from ganpipe.images import save_class_grid
from ganpipe.io import atomic_dir, file_sha256, save_npz, write_json
from ganpipe.paths import Paths
from ganpipe.tracker import Tracker

GENERATOR_FILE = "generator.keras"


def run(params: Params, paths: Paths, tracker: Tracker, progress: bool = True) -> dict[str, Any]:
    """The stage: `paths.models`/generator.keras -> `paths.synthetic`, as many per class as
    the augment stage's mode needs (generate.per_class: auto) or at least checked against it."""
    result = generate(params, paths.models, paths.prepared, paths.synthetic)
    tracker.log_metrics({"generated_samples": float(result["total"])})
    tracker.log_artifact(paths.synthetic / "grid.png", "generate")
    return result


def generate(
    all_params: Params,
    model_dir: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
) -> dict[str, Any]:
    """Sample images per class (`class_counts`: generate.per_class, checked against what
    augment.mode needs) and write them to `out_dir`.

    Returns the summary written to `out_dir/summary.json`, plus `paths` (absolute output paths).
    Raises DataError for a missing generator or data summary, a generator that does not fit
    the dataset (class count, image shape), or a fixed per_class that gives some class fewer
    samples than augment's mode needs: before anything is written.
    """
    params = all_params.generate
    latent_dim = all_params.model.latent_dim  # only when the model does not tell its own
    model_path = Path(model_dir) / GENERATOR_FILE
    data_summary = read_summary(data_dir)
    class_names = [str(c) for c in data_summary["class_names"]]
    num_classes = len(class_names)
    image_shape = tuple(int(s) for s in data_summary["shape"])

    if params.write_png and image_shape[-1] not in PNG_CHANNELS:
        raise DataError(
            f"cannot write {image_shape[-1]}-channel images as PNG: set generate.write_png=false"
        )
    model = load_generator(model_path)
    gen = inspect_generator(model, model_path, latent_dim)
    check_fits(gen, model_path, Path(data_dir), class_names, image_shape)

    counts = class_counts(params, data_summary.get("train_counts"), class_names, all_params.augment)
    generator_sha256 = file_sha256(model_path)
    generator_version = generator_sha256[:12]
    images, labels = sample(model, gen, counts, params.seed, params.batch_size)
    if images.shape[1:] != image_shape:
        raise DataError(
            f"{model_path}: generator produced images of shape {images.shape[1:]}, "
            f"but {data_dir}/summary.json says {image_shape}"
        )
    class_dirs = class_dir_names(class_names)

    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        save_npz(tmp / "samples.npz", images=images, labels=labels)
        files = [""] * len(labels)
        if params.write_png:
            files = write_png_tree(tmp, images, labels, class_dirs)
        pd.DataFrame(
            {
                "file": files,
                "index": np.arange(len(labels), dtype=np.int64),
                "label": labels,
                "class_name": [class_names[k] for k in labels],
                "seed": params.seed,
                "generator_version": generator_version,
            }
        ).to_csv(tmp / "manifest.csv", index=False)
        save_class_grid(tmp / "grid.png", images, labels, num_classes)
        summary: dict[str, Any] = {
            "total": len(labels),
            "counts": [int(c) for c in counts],
            "counts_by_class": {name: int(c) for name, c in zip(class_names, counts, strict=True)},
            "class_names": class_names,
            "class_dirs": dict(zip(class_names, class_dirs, strict=True))
            if params.write_png
            else {},
            "num_classes": num_classes,
            "shape": list(image_shape),
            "seed": params.seed,
            "per_class": params.per_class,
            # as used: auto resolved for the real counts (per_class auto only)
            "headroom": headroom_of(params, np.asarray(data_summary["train_counts"]))
            if params.per_class == "auto"
            else None,
            "proportional": params.proportional,
            "latent_dim": gen.latent_dim,
            "generator_version": generator_version,
            "generator_sha256": generator_sha256,
            "data_content_hash": data_summary.get("content_hash"),
            "files": {
                "samples": "samples.npz",
                "manifest": "manifest.csv",
                "grid": "grid.png",
                "images": "images" if params.write_png else None,
            },
        }
        write_json(tmp / "summary.json", summary)

    paths = {
        key: str((out / name).resolve()) if name else None for key, name in summary["files"].items()
    }
    paths["out_dir"] = str(out.resolve())
    return {**summary, "paths": paths}
