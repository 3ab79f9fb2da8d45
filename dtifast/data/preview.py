"""``preview``: a PNG grid of a dataset folder's images and masks (rows: images, instances, classes)."""
from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image

from .io import list_images, read_image, read_label_map, require_dir

# Distinct colours for ids 1..; id 0 (background) is black; ids beyond the table wrap around.
PALETTE = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
    [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
    [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195], [128, 128, 0], [255, 215, 180],
    [0, 0, 128], [128, 128, 128]], np.uint8)


def colorize(labels: np.ndarray) -> np.ndarray:
    """``uint8 (H, W)`` ids → ``uint8 (H, W, 3)``: black background, a fixed colour per id."""
    out = PALETTE[(labels.astype(np.int64) - 1) % len(PALETTE)]
    out[labels == 0] = 0
    return out


def preview(folder: str | os.PathLike, out: str | os.PathLike | None = None, n: int = 8,
            cell: int = 96, gap: int = 2) -> pathlib.Path:
    """Draw the first ``n`` items of a dataset folder as a grid and save it as PNG.

    Args:
        folder: a multi-object folder (``images/``, ``masks/``, ``sem_masks/``; the mask rows are drawn
            when present) or a plain image folder.
        out: the PNG (default ``<folder>/preview.png``).
        n: items (columns).
        cell: each cell's side in pixels (nearest-neighbour upscaling).
        gap: white pixels between cells.

    Returns:
        The PNG's path.
    """
    folder = require_dir(folder)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rows: list[list[np.ndarray]] = []
    if (folder / "images").is_dir():
        count = min(n, len(list_images(folder / "images")))
        if count == 0:
            raise ValueError(f"no images in {folder / 'images'}")
        rows.append([read_image(folder / "images" / f"{i}.png") for i in range(count)])
        for sub in ("masks", "sem_masks"):
            if (folder / sub).is_dir():
                rows.append([colorize(read_label_map(folder / sub / f"{i}.png")) for i in range(count)])
    else:
        files = list_images(folder, recursive=True)[:n]
        if not files:
            raise ValueError(f"no images in {folder}")
        rows.append([read_image(f, "RGB", (cell, cell)) for f in files])
    ncol = len(rows[0])
    grid = np.full((len(rows) * (cell + gap) - gap, ncol * (cell + gap) - gap, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, a in enumerate(row):
            h, w = a.shape[:2]
            s = cell / max(h, w)
            im = Image.fromarray(a).resize((max(1, round(w * s)), max(1, round(h * s))), Image.NEAREST)
            y, x = r * (cell + gap), c * (cell + gap)
            grid[y:y + im.height, x:x + im.width] = np.asarray(im)
    path = pathlib.Path(out) if out is not None else folder / "preview.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return path
