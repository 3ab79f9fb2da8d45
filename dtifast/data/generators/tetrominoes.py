"""Tetrominoes look-alike: 35×35 images, 3 non-overlapping tetrominoes on black.

Each tetromino is one of the 19 fixed tetrominoes (the 7 free shapes under rotation: I×2, O×1, T×4,
S×2, Z×2, J×4, L×4), drawn as 4 square blocks of ``BLOCK`` pixels in one of 6 saturated colours, at
an integer pixel position fully inside the image. Tetrominoes never overlap (scenes that would are
resampled); they may touch.

Classes: 0 = background, ``1 + s`` for shape ``s`` in :data:`SHAPE_NAMES` order (20 classes).
"""
from __future__ import annotations

import numpy as np

from .base import Scenes, replace_rows

NAME = "tetrominoes"
IMG_SIZE = (35, 35)
N_OBJECTS = 3
BLOCK = 5

# Block coordinates (row, col) of the 19 fixed tetrominoes.
_CELLS: dict[str, tuple[tuple[int, int], ...]] = {
    "I_h": ((0, 0), (0, 1), (0, 2), (0, 3)),
    "I_v": ((0, 0), (1, 0), (2, 0), (3, 0)),
    "O": ((0, 0), (0, 1), (1, 0), (1, 1)),
    "T_up": ((0, 1), (1, 0), (1, 1), (1, 2)),
    "T_right": ((0, 0), (1, 0), (1, 1), (2, 0)),
    "T_down": ((0, 0), (0, 1), (0, 2), (1, 1)),
    "T_left": ((0, 1), (1, 0), (1, 1), (2, 1)),
    "S_h": ((0, 1), (0, 2), (1, 0), (1, 1)),
    "S_v": ((0, 0), (1, 0), (1, 1), (2, 1)),
    "Z_h": ((0, 0), (0, 1), (1, 1), (1, 2)),
    "Z_v": ((0, 1), (1, 0), (1, 1), (2, 0)),
    "J_up": ((0, 0), (1, 0), (1, 1), (1, 2)),
    "J_right": ((0, 0), (0, 1), (1, 0), (2, 0)),
    "J_down": ((0, 0), (0, 1), (0, 2), (1, 2)),
    "J_left": ((0, 1), (1, 1), (2, 0), (2, 1)),
    "L_up": ((0, 2), (1, 0), (1, 1), (1, 2)),
    "L_right": ((0, 0), (1, 0), (2, 0), (2, 1)),
    "L_down": ((0, 0), (0, 1), (0, 2), (1, 0)),
    "L_left": ((0, 0), (0, 1), (1, 1), (2, 1)),
}
SHAPE_NAMES = tuple(_CELLS)
COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]],
                  np.uint8)
COLOR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan")
CLASS_NAMES = ("background",) + SHAPE_NAMES
N_CLASSES = len(CLASS_NAMES)


def _templates() -> tuple[np.ndarray, np.ndarray]:
    """``(19, 4B, 4B)`` bool footprints (top-left aligned) and ``(19, 2)`` extents (h, w) in pixels."""
    size = 4 * BLOCK
    tpl = np.zeros((len(SHAPE_NAMES), size, size), bool)
    ext = np.zeros((len(SHAPE_NAMES), 2), np.int64)
    for s, name in enumerate(SHAPE_NAMES):
        for r, c in _CELLS[name]:
            tpl[s, r * BLOCK:(r + 1) * BLOCK, c * BLOCK:(c + 1) * BLOCK] = True
        rows, cols = zip(*_CELLS[name])
        ext[s] = ((max(rows) + 1) * BLOCK, (max(cols) + 1) * BLOCK)
    return tpl, ext


TEMPLATES, EXTENTS = _templates()


def footprints(shape: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Pixel footprints of tetrominoes.

    Args:
        shape, y, x: int arrays of the same shape ``S`` (shape id, top-left row and column).

    Returns:
        bool ``(*S, 35, 35)``.
    """
    size = TEMPLATES.shape[-1]
    rows = np.arange(IMG_SIZE[0]) - y[..., None]  # (*S, H)
    cols = np.arange(IMG_SIZE[1]) - x[..., None]  # (*S, W)
    ok = ((rows >= 0) & (rows < size))[..., :, None] & ((cols >= 0) & (cols < size))[..., None, :]
    r = np.clip(rows, 0, size - 1)[..., :, None]
    c = np.clip(cols, 0, size - 1)[..., None, :]
    return TEMPLATES[shape[..., None, None], r, c] & ok


def _sample(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    shape = rng.integers(0, len(SHAPE_NAMES), (n, N_OBJECTS))
    color = rng.integers(0, len(COLORS), (n, N_OBJECTS))
    ext = EXTENTS[shape]
    y = (rng.random((n, N_OBJECTS)) * (IMG_SIZE[0] - ext[..., 0] + 1)).astype(np.int64)
    x = (rng.random((n, N_OBJECTS)) * (IMG_SIZE[1] - ext[..., 1] + 1)).astype(np.int64)
    return {"shape": shape, "color": color, "y": y, "x": x}


def generate(rng: np.random.Generator, n: int) -> Scenes:
    """``n`` Tetrominoes scenes drawn from ``rng`` (see the module docstring)."""
    obj = _sample(rng, n)
    fp = footprints(obj["shape"], obj["y"], obj["x"])  # (n, 3, H, W)
    bad = np.flatnonzero(fp.sum(1).max((1, 2)) > 1)
    while bad.size:  # resample the scenes whose tetrominoes overlap
        new = _sample(rng, bad.size)
        replace_rows(obj, new, bad)
        fp[bad] = footprints(new["shape"], new["y"], new["x"])
        bad = bad[fp[bad].sum(1).max((1, 2)) > 1]
    slot = np.arange(1, N_OBJECTS + 1, dtype=np.uint8)[None, :, None, None]
    instance = (fp * slot).sum(1, dtype=np.uint8)  # no overlap: at most one term is non-zero
    cls = (obj["shape"] + 1).astype(np.uint8)[:, :, None, None]
    semantic = (fp * cls).sum(1, dtype=np.uint8)
    palette = np.concatenate([np.zeros((n, 1, 3), np.uint8), COLORS[obj["color"]]], axis=1)  # (n, 4, 3)
    images = palette[np.arange(n)[:, None, None], instance]  # (n, H, W, 3)
    obj["present"] = np.ones((n, N_OBJECTS), bool)
    return Scenes(images, instance, semantic, obj)


def params() -> dict:
    """The generation parameters recorded in ``meta.json``."""
    return {"img_size": list(IMG_SIZE), "n_objects": N_OBJECTS, "block": BLOCK, "shapes": list(SHAPE_NAMES),
            "colors": dict(zip(COLOR_NAMES, COLORS.tolist())), "background": [0, 0, 0]}
