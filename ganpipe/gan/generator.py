"""A trained generator as the generate stage uses it: load `generator.keras`, find its inputs,
check that it fits the dataset, and sample labelled images from seeded noise.

What generate expects of a generator: two inputs, `z` (N x latent) and `label` (N or N x 1 class
indices), in that order when unnamed; one output, N x H x W x C images in [-1, 1].
"""

from __future__ import annotations

import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ganpipe.data.prepared import to_uint8
from ganpipe.errors import DataError
from ganpipe.io import keras_file_damage


def load_generator(path: Path) -> Any:
    """The Keras generator saved at `path` (safe mode, not compiled); DataError when it is missing,
    damaged or cannot be loaded, saying what to rerun."""
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


def inspect_generator(model: Any, path: Path, latent_dim: int | None) -> GeneratorInfo:
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


def check_fits(
    gen: GeneratorInfo,
    model_path: Path,
    data_dir: Path,
    class_names: list[str],
    image_shape: tuple[int, ...],
) -> None:
    """DataError when the generator was made for another class count or image shape than the
    prepared data in `data_dir` (when the model tells them)."""
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
