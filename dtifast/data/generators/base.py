"""What every procedural generator returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scenes:
    """A batch of generated scenes with exact ground truth.

    Attributes:
        images: ``uint8 (N, H, W, 3)`` RGB.
        instance: ``uint8 (N, H, W)`` instance ids of the visible pixels (0 = background, objects 1..k
            in drawing order, back to front).
        semantic: ``uint8 (N, H, W)`` class ids (0 = background).
        objects: per-object parameters, arrays ``(N, max_objects, ...)``; ``objects["present"]`` (bool)
            marks the slots in use; slot ``j`` is instance ``j + 1``.
    """

    images: np.ndarray
    instance: np.ndarray
    semantic: np.ndarray
    objects: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def replace_rows(dst: dict[str, np.ndarray], src: dict[str, np.ndarray], rows: np.ndarray) -> None:
    """``dst[k][rows] = src[k]`` for every key (resampling rejected scenes in place)."""
    for k, v in src.items():
        dst[k][rows] = v
