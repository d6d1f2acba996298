"""Generate labelled synthetic samples with a trained class-conditional generator.

`<out_dir>/samples.npz` holds `images` (uint8, N x H x W x C) and `labels` (int64, N) in the
prepared-data format, ordered by class; `manifest.csv` lists every row, `summary.json` the counts
and the generator version; `images/<class>/<index:06d>.png` (optional) and `grid.png` are for
looking at. The whole directory is built aside and swapped in at once.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from ganpipe.config import AugmentParams, GenerateParams, Params
from ganpipe.data.prepared import read_summary, to_uint8
from ganpipe.data.sampling import largest_remainder
from ganpipe.data.synthetic import wanted_counts
from ganpipe.errors import DataError
from ganpipe.images import readable_scale, save_grid
from ganpipe.io import atomic_dir, file_sha256, keras_file_damage, save_npz, write_json
from ganpipe.paths import Paths
from ganpipe.tracker import Tracker

GENERATOR_FILE = "generator.keras"
GRID_COLUMNS = 10
_PNG_CHANNELS = (1, 3, 4)  # grayscale, RGB, RGBA


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

    if params.write_png and image_shape[-1] not in _PNG_CHANNELS:
        raise DataError(
            f"cannot write {image_shape[-1]}-channel images as PNG: set generate.write_png=false"
        )
    model = _load_generator(model_path)
    gen = _inspect_generator(model, model_path, latent_dim)
    _check_fits(gen, model_path, Path(data_dir), class_names, image_shape)

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
            files = _write_png_tree(tmp, images, labels, class_dirs)
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
        _write_grid(tmp / "grid.png", images, labels, num_classes)
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


def class_counts(
    params: GenerateParams,
    train_counts: list[int] | None,
    class_names: list[str],
    augment_params: AugmentParams | None = None,
) -> np.ndarray:
    """Samples per class.

    per_class auto: what `augment_params.mode` asks for per class times `headroom` (rounded up),
    at least `min_per_class`. A number: that many each, or with `proportional` that times the
    class count split in proportion to the real training counts by largest remainder (ties to
    the lower class index, so the total is exact); with `augment_params`, a DataError naming every
    class that would get fewer than augment needs.
    """
    num_classes = len(class_names)
    real = _real_counts(train_counts, num_classes, params)
    if params.per_class == "auto":
        if augment_params is None:
            raise DataError(
                "generate.per_class auto needs the augment params (the stage passes them)"
            )
        need = wanted_counts(augment_params, real, class_names)
        return np.maximum(np.ceil(need * params.headroom), params.min_per_class).astype(np.int64)
    if not params.proportional:
        counts = np.full(num_classes, params.per_class, dtype=np.int64)
    else:
        if real.sum() <= 0:
            raise DataError(f"generate.proportional: bad real train_counts {list(train_counts)}")
        counts = largest_remainder(real.astype(np.float64), params.per_class * num_classes)
    if augment_params is not None:
        need = wanted_counts(augment_params, real, class_names)
        short = [k for k in range(num_classes) if counts[k] < need[k]]
        if short:
            detail = "; ".join(
                f"class {class_names[k]!r}: needs {need[k]}, would get {counts[k]}" for k in short
            )
            raise DataError(
                f"generate.per_class={params.per_class} is too few for augment.mode="
                f"{augment_params.mode} ({detail}): set generate.per_class: auto (it generates "
                "what augment needs, with headroom for its filters) or a larger number"
            )
    return counts


def _real_counts(
    train_counts: list[int] | None, num_classes: int, params: GenerateParams
) -> np.ndarray:
    """The real training counts from the data summary (zeros when absent and not needed)."""
    needed = params.per_class == "auto" or params.proportional
    if train_counts is None or len(train_counts) != num_classes:
        if needed:
            raise DataError(
                "generate.per_class auto and generate.proportional need the real train_counts "
                "per class in the data summary.json (re-run `ganpipe prepare`)"
            )
        return np.zeros(num_classes, dtype=np.int64)
    real = np.asarray(train_counts, dtype=np.int64)
    if (real < 0).any():
        raise DataError(f"bad real train_counts {list(train_counts)} in the data summary.json")
    return real


def sample(
    model: Any, gen: GeneratorInfo, counts: np.ndarray, seed: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Run the generator on seeded noise; rows are ordered by class. Returns uint8 images and
    int64 labels."""
    labels = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    n = len(labels)
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="generate", unit="batch", file=sys.stderr, disable=None):
        lab = labels[start : start + batch_size]
        z = rng.standard_normal((len(lab), gen.latent_dim), dtype=np.float32)
        pred = np.asarray(model.predict_on_batch(gen.feeds(z, lab)))
        if pred.ndim != 4 or len(pred) != len(lab):
            raise DataError(
                f"generator output has shape {pred.shape}; expected N x H x W x C images"
            )
        out.append(to_uint8(pred))
    if not out:
        return np.zeros((0, *gen.output_shape), dtype=np.uint8), labels
    return np.concatenate(out), labels


def class_dir_names(class_names: list[str]) -> list[str]:
    """A safe, unique folder name per class (letters, digits, `.`, `_`, `-`; never `.`/`..`)."""
    used: set[str] = set()
    names = []
    for k, name in enumerate(class_names):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or f"class_{k}"
        candidate = safe
        if candidate.lower() in used:
            candidate = f"{safe}_{k}"
        while candidate.lower() in used:  # case-insensitive file systems
            candidate = f"{candidate}_"
        used.add(candidate.lower())
        names.append(candidate)
    return names


# -- internals ---------------------------------------------------------------------------------


def _load_generator(path: Path) -> Any:
    if not path.exists():
        raise DataError(f"{path}: not found (run `ganpipe train` first)")
    import keras

    import ganpipe.gan.models.layers  # noqa: F401  (registers the layers a saved generator may use)

    again = "rerun `ganpipe train` to write it again"
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # a damaged zip, an unknown layer, code safe_mode refuses, ...
        if not zipfile.is_zipfile(path) or isinstance(e, (zipfile.BadZipFile, OSError)):
            raise DataError(f"{path} is damaged ({keras_file_damage(path, e)}); {again}") from None
        raise DataError(f"{path}: cannot load the generator ({e}); {again}") from None


@dataclass(frozen=True)
class GeneratorInfo:
    """What generate needs to know about a loaded generator."""

    latent_dim: int
    z_index: int  # position of `z` in model.inputs
    label_index: int
    z_dtype: str
    label_dtype: str
    label_rank: int  # 1: (N,), 2: (N, 1)
    num_classes: int | None  # from the label embedding; None if it cannot be told
    output_shape: tuple[int | None, ...]

    def feeds(self, z: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
        """The model's inputs, in model.inputs order."""
        lab = labels.astype(self.label_dtype)
        if self.label_rank == 2:
            lab = lab.reshape(-1, 1)
        out = [z, z]
        out[self.z_index] = z.astype(self.z_dtype)
        out[self.label_index] = lab
        return out


def _inspect_generator(model: Any, path: Path, latent_dim: int | None) -> GeneratorInfo:
    """Find the `z` and `label` inputs, the latent size, the number of classes and output shape."""
    inputs = list(model.inputs)
    names = [getattr(t, "name", "") for t in inputs]
    if len(inputs) != 2:
        raise DataError(f"{path}: expected a generator with inputs `z` and `label`, got {names}")
    if "z" in names and "label" in names:
        z_idx, label_idx = names.index("z"), names.index("label")
    else:  # unnamed: the contract's order is (z, label)
        z_idx, label_idx = 0, 1
    z_in, label_in = inputs[z_idx], inputs[label_idx]
    latent = z_in.shape[-1] if len(z_in.shape) == 2 else None
    if latent is None:
        latent = latent_dim
    if latent is None:
        raise DataError(f"{path}: cannot tell the latent size from the `z` input {z_in.shape}")
    embeddings = {layer.input_dim for layer in _walk_layers(model)}
    return GeneratorInfo(
        latent_dim=int(latent),
        z_index=z_idx,
        label_index=label_idx,
        z_dtype=str(getattr(z_in, "dtype", None) or "float32"),
        label_dtype=str(getattr(label_in, "dtype", None) or "int32"),
        label_rank=len(label_in.shape),
        num_classes=int(next(iter(embeddings))) if len(embeddings) == 1 else None,
        output_shape=tuple(model.outputs[0].shape[1:]),
    )


def _walk_layers(model: Any) -> list[Any]:
    found = []
    for layer in getattr(model, "layers", []):
        if layer.__class__.__name__ == "Embedding":
            found.append(layer)
        found.extend(_walk_layers(layer))
    return found


def _check_fits(
    gen: GeneratorInfo,
    model_path: Path,
    data_dir: Path,
    class_names: list[str],
    image_shape: tuple[int, ...],
) -> None:
    g_classes = gen.num_classes
    if g_classes is not None and g_classes != len(class_names):
        raise DataError(
            f"{model_path}: the generator was trained for {g_classes} classes, but "
            f"{data_dir}/summary.json has {len(class_names)} ({', '.join(class_names[:10])}"
            f"{', ...' if len(class_names) > 10 else ''}); it was probably trained on another "
            "dataset: re-run `ganpipe train` on this data or point at the matching data dir"
        )
    g_shape = gen.output_shape
    if None not in g_shape and tuple(g_shape) != tuple(image_shape):
        raise DataError(
            f"{model_path}: the generator makes {tuple(g_shape)} images, but "
            f"{data_dir}/summary.json has shape {tuple(image_shape)}; it was probably trained on "
            "another dataset: re-run `ganpipe train` on this data or point at the matching data dir"
        )


def _write_png(path: Path, image: np.ndarray) -> None:
    """One uint8 H x W x C image as a PNG (grayscale for C=1, RGB for C=3)."""
    channels = image.shape[-1]
    if channels not in _PNG_CHANNELS:
        raise DataError(f"cannot write {channels}-channel images as PNG (set generate.write_png)")
    Image.fromarray(image[..., 0] if channels == 1 else image).save(path)


def _write_png_tree(
    root: Path, images: np.ndarray, labels: np.ndarray, class_dirs: list[str]
) -> list[str]:
    files = []
    for k in np.unique(labels):
        (root / "images" / class_dirs[k]).mkdir(parents=True, exist_ok=True)
    for i, (image, k) in enumerate(zip(images, labels, strict=True)):
        rel = f"images/{class_dirs[k]}/{i:06d}.png"
        _write_png(root / rel, image)
        files.append(rel)
    return files


def _grid_images(images: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """num_classes x GRID_COLUMNS images, row k the first samples of class k (black if fewer)."""
    grid = np.zeros((num_classes * GRID_COLUMNS, *images.shape[1:]), dtype=np.uint8)
    for k in range(num_classes):
        rows = images[labels == k][:GRID_COLUMNS]
        grid[k * GRID_COLUMNS : k * GRID_COLUMNS + len(rows)] = rows
    return grid


def _write_grid(path: Path, images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    grid = _grid_images(images, labels, num_classes)
    if grid.shape[-1] == 4:  # save_grid takes grayscale or RGB
        grid = grid[..., :3]
    save_grid(path, grid, rows=num_classes, scale=readable_scale(grid.shape[1:]))
