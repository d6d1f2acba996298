"""Image grids as PNG files (sample sheets for humans and MLflow)."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from ganpipe.io import atomic_path

# Samples per class (one row each) in a class grid (`save_class_grid`: generate's grid.png).
GRID_COLUMNS = 10


def grid(
    images_uint8: np.ndarray, rows: int, pad: int = 2, scale: int = 1, pad_value: int = 128
) -> np.ndarray:
    """Tile N x H x W x C uint8 images row by row into one (rows*(H*scale+pad)+pad) x
    (cols*(W*scale+pad)+pad) x C array, cols = ceil(N / rows); empty cells and padding are grey."""
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected uint8 N x H x W x 1|3 images, got {images.dtype} {images.shape}"
        )
    if rows < 1 or scale < 1 or pad < 0:
        raise ValueError(f"rows and scale must be >= 1 and pad >= 0 (got {rows}, {scale}, {pad})")
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, c = images.shape
    cols = max(1, math.ceil(n / rows))
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, np.uint8)
    for i, img in enumerate(images[: rows * cols]):
        r, col = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        out[y : y + h, x : x + w] = img
    return out


def save_grid(
    path: str | os.PathLike[str],
    images_uint8: np.ndarray,
    rows: int,
    pad: int = 2,
    scale: int = 1,
) -> None:
    """Write `grid(...)` as a grayscale or RGB PNG, atomically. `scale` enlarges each image
    (nearest neighbour), e.g. 4 for 8x8 digits."""
    g = grid(images_uint8, rows, pad=pad, scale=scale)
    img = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


def readable_scale(image_shape: tuple[int, ...], min_side: int = 28) -> int:
    """The integer scale that makes the smaller side of an image at least `min_side` pixels."""
    return max(1, math.ceil(min_side / max(1, min(image_shape[:2]))))


def class_grid(images: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """num_classes x GRID_COLUMNS images, row k the first samples of class k (black if fewer)."""
    grid = np.zeros((num_classes * GRID_COLUMNS, *images.shape[1:]), dtype=np.uint8)
    for k in range(num_classes):
        rows = images[labels == k][:GRID_COLUMNS]
        grid[k * GRID_COLUMNS : k * GRID_COLUMNS + len(rows)] = rows
    return grid


def save_class_grid(
    path: str | os.PathLike[str], images: np.ndarray, labels: np.ndarray, num_classes: int
) -> None:
    """`class_grid` as a PNG (RGBA drawn as RGB), each image enlarged to a readable size."""
    grid = class_grid(images, labels, num_classes)
    if grid.shape[-1] == 4:  # save_grid takes grayscale or RGB
        grid = grid[..., :3]
    save_grid(path, grid, rows=num_classes, scale=readable_scale(grid.shape[1:]))
