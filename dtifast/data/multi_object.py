"""Multi-object datasets in upstream's folder format (Tetrominoes, Multi-dSprites, CLEVR6).

Folder: ``<root>/<name>/images/{i}.png`` (RGB), ``masks/{i}.png`` (instance ids, 0 = background),
``sem_masks/{i}.png`` (class ids, 0 = background), ``i = 0 .. N-1``; optional ``meta.json`` (written
by :func:`dtifast.data.make_dataset`). Splits as upstream: ``train`` = all N images, ``eval`` = the
first 320, ``val`` = 100 drawn without replacement by ``numpy.random.seed(42); choice(N, 100)``
(fewer when N is smaller).
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from . import cache as _cache
from .io import decode_many, read_image, read_label_map, require_dir

log = logging.getLogger(__name__)

N_EVAL = 320
N_VAL = 100
VAL_SEED = 42
SPLITS = ("train", "val", "eval")
TARGETS = ("semantic", "instance", "both")
# Upstream's multi-object sets: semantic classes including background.
KNOWN_N_CLASSES = {"tetrominoes": 20, "dsprites_gray": 4, "clevr6": 7}
_SOURCES = {"image": ("images", "RGB"), "instance": ("masks", "L"), "semantic": ("sem_masks", "L")}


def split_indices(n: int, split: str) -> np.ndarray:
    """Upstream's split of ``n`` images: train = all, eval = first 320, val = 100 random (seed 42)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "train":
        return np.arange(n)
    if split == "eval":
        return np.arange(min(N_EVAL, n))
    return np.random.RandomState(VAL_SEED).choice(n, min(N_VAL, n), replace=False)


def _count_images(folder: pathlib.Path) -> int:
    """N such that ``images/0.png .. images/{N-1}.png`` all exist; errors name the first missing file."""
    images = require_dir(folder / "images", "image folder")
    names = {e.name for e in os.scandir(images) if e.name.endswith(".png")}
    if not names:
        raise FileNotFoundError(f"no PNG images in {images}")
    n = len(names)
    for i in range(n):
        if f"{i}.png" not in names:
            raise FileNotFoundError(f"image file not found: {images / f'{i}.png'} (the folder holds {n} PNGs, "
                                    f"expected 0.png .. {n - 1}.png)")
    return n


class MultiObjectDataset(Dataset):
    """A multi-object dataset folder, with upstream's splits and instance or semantic targets.

    Args:
        root: the data root holding ``<name>/`` (ignored when ``path`` is given).
        name: upstream's folder name: "tetrominoes", "dsprites_gray", "clevr6" (any name works if the
            folder has the layout; ``n_classes`` then comes from ``meta.json`` or the masks).
        split: "train" (all), "val" (100 random, seed 42) or "eval" (first 320).
        target: "semantic" (class ids), "instance" (instance ids) or "both".
        img_size: ``(H, W)`` or int to resize to (bilinear images, nearest masks); None: as stored.
        path: the dataset folder itself (overrides ``root / name``).
        cache: "auto" (memory-map ``.dtifast_cache/*.npy`` beside the data, writing it on first use
            when the decoded set fits ``DTIFAST_CACHE_GB``, default 8; else decode the split into memory
            when it fits; else decode per item), "memory", "npy" or "none" (decode per item).

    Returns (``ds[i]``):
        ``(image, target)``: image ``float32 (C, H, W)`` in [0, 1]; target ``int64 (H, W)``, or a dict
        ``{"semantic": (H, W), "instance": (H, W)}`` for "both".

    Raises:
        FileNotFoundError: a missing folder or image (the message names it).
        ValueError: a corrupt PNG (named), a bad split / target, images of inconsistent size.

    Example:
        >>> ds = MultiObjectDataset("data", "tetrominoes", split="eval")  # doctest: +SKIP
        >>> ds[0][0].shape, ds[0][1].shape, ds.n_classes  # doctest: +SKIP
        (torch.Size([3, 35, 35]), torch.Size([35, 35]), 20)
    """

    multi_object = True
    n_channels = 3

    def __init__(self, root: str | os.PathLike | None, name: str, split: str = "train", target: str = "semantic",
                 img_size: Optional[int | Sequence[int]] = None, path: str | os.PathLike | None = None,
                 cache: str = "auto") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.cache_mode = _cache.check_mode(cache)
        self.name, self.split, self.target = name, split, target
        if path is None and root is None:
            raise ValueError("give the data root or the dataset path")
        self.folder = require_dir(pathlib.Path(path) if path is not None else pathlib.Path(root) / name)
        self.meta = self._read_meta()
        self.n_total = _count_images(self.folder)
        self.indices = split_indices(self.n_total, split)
        self.keys = ["image"] + (["semantic", "instance"] if target == "both" else [target])
        for key in self.keys[1:]:
            require_dir(self.folder / _SOURCES[key][0], f"{key} mask folder")
        native = read_image(self._file("image", 0)).shape[:2]
        self.native_size = (int(native[0]), int(native[1]))
        if img_size is None:
            self.img_size = self.native_size
        else:
            self.img_size = (int(img_size), int(img_size)) if isinstance(img_size, int) else tuple(
                int(s) for s in img_size)
            if len(self.img_size) != 2 or min(self.img_size) < 1:
                raise ValueError(f"img_size must be an int or (H, W), got {img_size!r}")
        self.n_classes = self._n_classes()
        self._arrays: dict[str, np.ndarray] = {}
        self._array_rows: Optional[np.ndarray] = None  # array row of each split item
        self._load_arrays()

    # -- set-up -------------------------------------------------------------------------------------------

    def _read_meta(self) -> dict[str, Any]:
        path = self.folder / "meta.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {path}: {e}") from e

    def _n_classes(self) -> Optional[int]:
        if "n_classes" in self.meta:
            return int(self.meta["n_classes"])
        return KNOWN_N_CLASSES.get(self.name, KNOWN_N_CLASSES.get(self.folder.name))

    def _file(self, key: str, i: int) -> pathlib.Path:
        return self.folder / _SOURCES[key][0] / f"{int(i)}.png"

    def _decode(self, key: str, idx: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        sub, mode = _SOURCES[key]
        resample = Image.BILINEAR if key == "image" else Image.NEAREST
        size = None if self.img_size == self.native_size else self.img_size
        return decode_many([self._file(key, i) for i in idx], mode, size, resample, out=out,
                           desc=f"decoding {self.folder.name}/{sub} ({self.split})")

    def _bytes(self, n: int) -> int:
        h, w = self.img_size
        return n * h * w * sum(3 if k == "image" else 1 for k in self.keys)

    def _load_arrays(self) -> None:
        mode = self.cache_mode
        if mode == "none":
            return
        fp = _cache.fingerprint(self.folder, self.n_total)
        limit = _cache.DEFAULT_LIMIT_BYTES
        if mode in ("auto", "npy"):
            mapped = {k: _cache.open_npy(_cache.cache_path(self.folder, k, self.img_size), fp) for k in self.keys}
            if all(a is not None for a in mapped.values()):
                self._arrays, self._array_rows = mapped, self.indices
                return
            whole = self.split == "train" or mode == "npy"
            if whole and (mode == "npy" or self._bytes(self.n_total) <= limit):
                everything = np.arange(self.n_total)
                for k in self.keys:
                    arr = mapped[k]
                    if arr is None:
                        arr = self._decode(k, everything)
                        _cache.save_npy(_cache.cache_path(self.folder, k, self.img_size), arr, fp)
                    self._arrays[k] = arr
                self._array_rows = self.indices
                return
        if self._bytes(len(self.indices)) <= limit or mode == "memory":
            self._arrays = {k: self._decode(k, self.indices) for k in self.keys}
            self._array_rows = np.arange(len(self.indices))
        else:
            log.info("%s: %d images do not fit the cache limit; decoding per item", self.folder, len(self.indices))

    # -- access -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(len(self.indices))

    def _get(self, key: str, i: int) -> np.ndarray:
        if key in self._arrays:
            return np.array(self._arrays[key][self._array_rows[i]])  # a copy: memmaps are read-only
        j = self.indices[i]
        size = None if self.img_size == self.native_size else self.img_size
        if key == "image":
            return read_image(self._file(key, j), "RGB", size)
        return read_label_map(self._file(key, j), size)

    def raw(self, i: int) -> dict[str, np.ndarray]:
        """Item ``i`` as stored: ``uint8`` image ``(H, W, 3)`` and label maps ``(H, W)``."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        i = int(i) % len(self)
        return {k: self._get(k, i) for k in self.keys}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]:
        item = self.raw(i)
        image = torch.from_numpy(item["image"]).permute(2, 0, 1).contiguous().float().div_(255)
        if self.target == "both":
            return image, {"semantic": torch.from_numpy(item["semantic"]).long(),
                           "instance": torch.from_numpy(item["instance"]).long()}
        return image, torch.from_numpy(item[self.target]).long()

    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]:
        """Items ``indices`` already batched: images ``(B, C, H, W)``, targets ``(B, H, W)`` (or a dict).

        One fancy-indexing read per array when the set is cached (what :func:`make_loader` uses).
        """
        idx = np.asarray(indices, dtype=np.int64)
        if len(self._arrays) != len(self.keys):
            items = [self[int(i)] for i in idx]
            return torch.utils.data.default_collate(items)
        rows = self._array_rows[idx]
        image = torch.from_numpy(np.asarray(self._arrays["image"][rows])).permute(0, 3, 1, 2).contiguous()
        image = image.float().div_(255)
        maps = {k: torch.from_numpy(np.asarray(self._arrays[k][rows])).long() for k in self.keys[1:]}
        return image, (maps if self.target == "both" else maps[self.target])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}/{self.n_total}, "
                f"img_size={self.img_size}, target={self.target!r}, folder={str(self.folder)!r})")
