"""SVHN from torchvision's files (``train_32x32.mat``, ``test_32x32.mat``, ``extra_32x32.mat``).

Upstream's splits (its torchvision wrapper): ``train`` = test + train + extra, ``eval`` = test + train,
``val`` = 10 % of test (at least 100) drawn by ``numpy.random.seed(46); choice``. Labels 0–9 (the
files' 10 is digit 0).
"""
from __future__ import annotations

import os
import pathlib
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from .folder import ImageArrayDataset, _as_size

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}
PARTS = {"train": ("test", "train", "extra"), "eval": ("test", "train"), "val": ("test",)}
VAL_RATIO, VAL_SEED = 0.1, 46


def _load_mat(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    from scipy.io import loadmat
    if not path.is_file():
        raise FileNotFoundError(f"SVHN file not found: {path} (torchvision's {path.name})")
    try:
        mat = loadmat(path)
        x, y = mat["X"], mat["y"]
    except Exception as e:  # scipy raises several types on a corrupt file
        raise ValueError(f"cannot read SVHN file {path}: {e}") from e
    return np.ascontiguousarray(np.transpose(x, (3, 0, 1, 2))).astype(np.uint8), (y.reshape(-1) % 10).astype(np.int64)


class SVHNDataset(ImageArrayDataset):
    """SVHN digits (32×32 RGB) from torchvision's ``.mat`` files in ``folder``; labels 0–9."""

    name = "svhn"
    n_classes = 10

    def __init__(self, folder: str | os.PathLike, split: str = "train",
                 img_size: Optional[int | Sequence[int]] = None) -> None:
        if split not in PARTS:
            raise ValueError(f"split must be one of {tuple(PARTS)}, got {split!r}")
        folder = pathlib.Path(folder)
        self.folder, self.split = folder, split
        parts = [_load_mat(folder / FILES[p]) for p in PARTS[split]]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        if split == "val":
            n_val = max(round(VAL_RATIO * len(images)), 100)
            if n_val < len(images):
                idx = np.random.RandomState(VAL_SEED).choice(len(images), n_val, replace=False)
                images, labels = images[idx], labels[idx]
        self.img_size = (32, 32) if img_size is None else _as_size(img_size)
        if self.img_size != (32, 32):
            images = np.stack([np.asarray(Image.fromarray(im).resize(self.img_size[::-1], Image.BILINEAR))
                               for im in images])
        self._images, self.labels = images, labels

    def _image(self, i: int) -> np.ndarray:
        return self._images[i]
