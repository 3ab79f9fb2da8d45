"""Multi-dSprites (gray background) look-alike: 64×64, 1–4 occluding sprites on a uniform gray.

Each image has a uniform gray background (level uniform in [0, 255]) and 1–4 sprites drawn back to
front; each sprite is a square, an ellipse or a heart with a random saturated colour (HSV saturation
and value in [0.6, 1], so never gray), scale, rotation and position (fully inside the image). Pixels
are hard (no anti-aliasing), so every pixel belongs to exactly one sprite or to the background. A
sprite's instance mask is its footprint minus the footprints drawn after it; scenes where a sprite
keeps fewer than :data:`MIN_VISIBLE` pixels are resampled.

Classes: 0 = background, 1 = square, 2 = ellipse, 3 = heart (4 classes).
"""
from __future__ import annotations

import numpy as np

from .base import Scenes, replace_rows

NAME = "dsprites_gray"
IMG_SIZE = (64, 64)
MAX_OBJECTS = 4
SHAPE_NAMES = ("square", "ellipse", "heart")
CLASS_NAMES = ("background",) + SHAPE_NAMES
N_CLASSES = len(CLASS_NAMES)
RADIUS = (6.0, 13.0)  # every shape fits in a disc of this radius (pixels) around its centre
ELLIPSE_RATIO = 0.5
MIN_VISIBLE = 12


def footprints(shape: np.ndarray, radius: np.ndarray, angle: np.ndarray, cy: np.ndarray, cx: np.ndarray
               ) -> np.ndarray:
    """Pixel footprints of sprites, sampled at pixel centres.

    Args:
        shape: int ``S`` (index into :data:`SHAPE_NAMES`); radius, angle (radians), cy, cx (pixels,
            pixel ``(i, j)`` has centre ``(i + 0.5, j + 0.5)``): float arrays of the same shape ``S``.

    Returns:
        bool ``(*S, 64, 64)``.
    """
    f32 = np.float32
    flat_shape = np.asarray(shape).reshape(-1)
    out = np.zeros((flat_shape.size, *IMG_SIZE), bool)
    ys = np.arange(IMG_SIZE[0], dtype=f32) + f32(0.5)
    xs = np.arange(IMG_SIZE[1], dtype=f32) + f32(0.5)
    for sid in range(len(SHAPE_NAMES)):  # each shape only on its own sprites
        idx = np.flatnonzero(flat_shape == sid)
        if idx.size == 0:
            continue
        r = np.asarray(radius, f32).reshape(-1)[idx, None, None]
        a = np.asarray(angle, f32).reshape(-1)[idx, None, None]
        dy = (ys[None, :, None] - np.asarray(cy, f32).reshape(-1)[idx, None, None]) / r
        dx = (xs[None, None, :] - np.asarray(cx, f32).reshape(-1)[idx, None, None]) / r
        c, s = np.cos(a), np.sin(a)
        u = c * dx + s * dy  # sprite frame; the unit disc is the bounding circle
        v = c * dy - s * dx
        if sid == 0:
            fp = np.maximum(np.abs(u), np.abs(v)) <= f32(1 / np.sqrt(2))
        elif sid == 1:
            v = v / f32(ELLIPSE_RATIO)
            fp = u * u + v * v <= 1
        else:
            # Heart (x² + y² − 1)³ − x² y³ ≤ 0 with y up; its extent is x ∈ ±1.14, y ∈ [−1, 1.24]:
            # shifted and scaled into the unit disc.
            hx, hy = u * f32(1.25), f32(0.12) - v * f32(1.25)
            q = hx * hx + hy * hy - 1
            fp = q * q * q <= hx * hx * hy * hy * hy
        out[idx] = fp
    return out.reshape(*np.shape(shape), *IMG_SIZE)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6).astype(np.int64) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, -1) for c in
                      ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))], 0)  # (6, *S, 3)
    return np.take_along_axis(table, i[None, ..., None].repeat(3, -1), 0)[0]


def _sample(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    k = rng.integers(1, MAX_OBJECTS + 1, n)
    shape = (n, MAX_OBJECTS)
    radius = rng.uniform(*RADIUS, shape)
    rgb = _hsv_to_rgb(rng.random(shape), rng.uniform(0.6, 1.0, shape), rng.uniform(0.6, 1.0, shape))
    return {
        "present": np.arange(MAX_OBJECTS)[None] < k[:, None],
        "shape": rng.integers(0, len(SHAPE_NAMES), shape),
        "radius": radius,
        "angle": rng.uniform(0, 2 * np.pi, shape),
        "cy": rng.uniform(radius, IMG_SIZE[0] - radius),
        "cx": rng.uniform(radius, IMG_SIZE[1] - radius),
        "color": np.round(rgb * 255).astype(np.uint8),
        "background": rng.integers(0, 256, n).astype(np.uint8),
    }


def _instances(obj: dict[str, np.ndarray]) -> np.ndarray:
    fp = footprints(obj["shape"], obj["radius"], obj["angle"], obj["cy"], obj["cx"]) & obj["present"][..., None,
                                                                                                       None]
    slot = np.arange(1, MAX_OBJECTS + 1, dtype=np.uint8)[None, :, None, None]
    return (fp * slot).max(1)  # the last sprite drawn over a pixel owns it


def _too_hidden(obj: dict[str, np.ndarray], instance: np.ndarray) -> np.ndarray:
    counts = (instance[:, None] == np.arange(1, MAX_OBJECTS + 1, dtype=np.uint8)[None, :, None, None]).sum((2, 3))
    return ((counts < MIN_VISIBLE) & obj["present"]).any(1)


def generate(rng: np.random.Generator, n: int) -> Scenes:
    """``n`` Multi-dSprites scenes drawn from ``rng`` (see the module docstring)."""
    obj = _sample(rng, n)
    instance = _instances(obj)
    bad = np.flatnonzero(_too_hidden(obj, instance))
    while bad.size:
        new = _sample(rng, bad.size)
        replace_rows(obj, new, bad)
        instance[bad] = _instances(new)
        bad = bad[_too_hidden(new, instance[bad])]
    rows = np.arange(n)[:, None, None]
    palette = np.concatenate([np.repeat(obj["background"][:, None, None], 3, -1), obj["color"]], 1)  # (n, 5, 3)
    images = palette[rows, instance]
    classes = np.concatenate([np.zeros((n, 1), np.uint8), (obj["shape"] + 1).astype(np.uint8)], 1)
    semantic = classes[rows, instance]
    return Scenes(images, instance, semantic, obj)


def params() -> dict:
    """The generation parameters recorded in ``meta.json``."""
    return {"img_size": list(IMG_SIZE), "n_objects": [1, MAX_OBJECTS], "shapes": list(SHAPE_NAMES),
            "radius": list(RADIUS), "ellipse_ratio": ELLIPSE_RATIO, "min_visible_pixels": MIN_VISIBLE,
            "color": "HSV, s and v uniform in [0.6, 1]", "background": "uniform gray level in [0, 255]"}
