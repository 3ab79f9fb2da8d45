"""Single-object image collections: a folder of images, optional class labels, optional masks.

Layouts understood (``root`` is the folder given):

* ``root/*.jpg|png|…`` — unlabelled images (label -1);
* ``root/<class>/*.…`` — one sub-folder per class (labels from the sorted folder names, or from
  ``class_map`` keyed by folder name, or by its integer value, e.g. GTSRB's ``00003`` → 3);
* a labels file (``labels=PATH``): one ``<relative file>,<label>`` (or whitespace-separated) line per
  image; lines whose label is not an int (a header) are skipped;
* ``masks=FOLDER``: a foreground mask per image, matched by file stem (``masks/<stem>.png``); the
  target is then the binary mask ``(H, W)`` (0 = background, 1 = foreground) and ``n_classes`` is 2;
* ``root/<split>/`` present (e.g. Instagram's ``<tag>/train``): that folder is used for the split.

Splits: ``train`` and ``eval`` = all images; ``val`` = ``val_size`` images drawn without replacement by
``numpy.random.seed(val_seed); choice(N, val_size)`` (upstream's GTSRB rule, seed 46), or the first
``val_size`` when ``val_seed`` is None (upstream's Weizmann Horse rule, 30).
"""
from __future__ import annotations

import logging
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from . import cache as _cache
from .io import IMG_EXTENSIONS, decode_many, read_image, read_image_fit, read_label_map, require_dir

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "eval")
RESIZE_MODES = ("resize", "center_crop")


def _as_size(img_size: int | Sequence[int]) -> tuple[int, int]:
    size = (int(img_size), int(img_size)) if isinstance(img_size, (int, np.integer)) else tuple(
        int(s) for s in img_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"img_size must be an int or (H, W), got {img_size!r}")
    return size  # type: ignore[return-value]


def val_indices(n: int, val_size: int, val_seed: Optional[int]) -> np.ndarray:
    """``val_size`` of ``n`` indices: random without replacement (legacy seeding, as upstream) or the first."""
    k = min(val_size, n)
    if val_seed is None:
        return np.arange(k)
    return np.random.RandomState(val_seed).choice(n, k, replace=False)


class ImageArrayDataset(Dataset):
    """Images (decoded ``uint8 (N, H, W, 3)`` or files decoded per item) with labels or masks.

    ``ds[i]`` → ``(image float32 (3, H, W) in [0, 1], target)``: the class label (int, -1 unknown), or
    the binary mask ``int64 (H, W)`` when the dataset has masks.
    """

    multi_object = False
    n_channels = 3

    def __len__(self) -> int:
        return int(len(self.labels))

    def _image(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def _mask(self, i: int) -> Optional[np.ndarray]:
        return None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        i = int(i) % len(self)
        image = torch.from_numpy(np.array(self._image(i))).permute(2, 0, 1).contiguous().float().div_(255)
        mask = self._mask(i)
        if mask is not None:
            return image, torch.from_numpy((np.asarray(mask) > 0).astype(np.int64))
        return image, int(self.labels[i])


    def get_batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Items ``indices`` batched: images ``(B, 3, H, W)`` and labels ``(B,)`` or masks ``(B, H, W)``."""
        idx = np.asarray(indices, dtype=np.int64)
        images = getattr(self, "_images", None)
        if images is None or (getattr(self, "mask_files", None) is not None and getattr(self, "_masks", None) is None):
            return torch.utils.data.default_collate([self[int(i)] for i in idx])
        x = torch.from_numpy(np.asarray(images[idx])).permute(0, 3, 1, 2).contiguous().float().div_(255)
        masks = getattr(self, "_masks", None)
        if masks is not None:
            return x, torch.from_numpy((np.asarray(masks[idx]) > 0).astype(np.int64))
        return x, torch.from_numpy(np.asarray(self.labels)[idx].astype(np.int64))


class FolderDataset(ImageArrayDataset):
    """A single-object image folder (see the module docstring for the layouts), resized to ``img_size``.

    Args:
        root: the image folder.
        img_size: ``(H, W)`` or int.
        split: "train", "val" or "eval".
        labels: "auto" (sub-folders when the images are in sub-folders, else none), "subfolders", "none",
            or a labels file.
        masks: folder of foreground masks (matched by stem), or None.
        class_map: original label (folder name, its int value, or the file's label) → class index;
            images whose label is not in it are left out.
        n_classes: default: 2 with masks, else the number of classes found (0 without labels).
        val_size, val_seed: the validation split (see the module docstring).
        resize: "resize" (bilinear to exactly ``img_size``) or "center_crop" (scale the shorter side,
            crop the centre).
        name: the dataset's name (reports, errors).
        cache: "auto" / "memory" (decode the split into memory; "auto" only when it fits
            ``DTIFAST_CACHE_GB``) or "none" (decode per item).

    Raises:
        FileNotFoundError: missing folder, labels file or mask (named).
        ValueError: corrupt image (named), empty folder, bad labels file line, bad arguments.
    """

    def __init__(self, root: str | os.PathLike, img_size: int | Sequence[int], split: str = "train",
                 labels: str | os.PathLike = "auto", masks: str | os.PathLike | None = None,
                 class_map: Optional[Mapping[Any, int]] = None, n_classes: Optional[int] = None,
                 val_size: int = 100, val_seed: Optional[int] = 46, resize: str = "resize",
                 name: Optional[str] = None, cache: str = "auto",
                 extensions: Sequence[str] = IMG_EXTENSIONS) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.cache_mode = _cache.check_mode(cache)
        self.img_size = _as_size(img_size)
        self.split, self.resize = split, resize
        root = require_dir(root)
        self.name = name or root.name
        split_dir = root / split
        self.folder = split_dir if split_dir.is_dir() else root
        files, raw_labels = self._scan(self.folder, labels, extensions)
        if not files:
            raise ValueError(f"no images ({', '.join(extensions)}) found in {self.folder}")
        label_ids = self._label_ids(raw_labels, class_map)
        keep = [i for i, lab in enumerate(label_ids) if lab is not None]
        files = [files[i] for i in keep]
        label_arr = np.asarray([label_ids[i] for i in keep], np.int64)
        if not files:
            raise ValueError(f"no image of {self.folder} has a label in class_map {dict(class_map or {})}")
        if split == "val" and not split_dir.is_dir():
            idx = val_indices(len(files), val_size, val_seed)
            files, label_arr = [files[i] for i in idx], label_arr[idx]
        self.files: list[pathlib.Path] = files
        self.labels = label_arr
        self.mask_files = self._match_masks(pathlib.Path(masks)) if masks is not None else None
        if n_classes is None:
            n_classes = 2 if masks is not None else (int(label_arr.max()) + 1 if (label_arr >= 0).any() else 0)
        self.n_classes = int(n_classes)
        self._images: Optional[np.ndarray] = None
        self._masks: Optional[np.ndarray] = None
        bytes_needed = len(files) * self.img_size[0] * self.img_size[1] * (4 if masks is not None else 3)
        if cache == "memory" or (cache in ("auto", "npy") and bytes_needed <= _cache.DEFAULT_LIMIT_BYTES):
            self._images = decode_many(files, "RGB", self.img_size, crop=resize == "center_crop",
                                       desc=f"decoding {self.name} ({split})")
            if self.mask_files is not None:
                self._masks = decode_many(self.mask_files, "L", self.img_size, Image.NEAREST,
                                          crop=resize == "center_crop", desc=f"decoding {self.name} masks")

    @staticmethod
    def _scan(folder: pathlib.Path, labels: str | os.PathLike, extensions: Sequence[str]
              ) -> tuple[list[pathlib.Path], list[Any]]:
        exts = {e.lower() for e in extensions}

        def is_image(p: pathlib.Path) -> bool:
            return p.suffix.lower() in exts and not p.name.startswith(".") and p.is_file()

        if labels not in ("auto", "subfolders", "none"):
            return FolderDataset._read_labels_file(folder, pathlib.Path(labels))
        direct = sorted(p for p in folder.iterdir() if is_image(p))
        if labels == "none" or (labels == "auto" and direct):
            return direct, [None] * len(direct)
        files = sorted(p for p in folder.rglob("*") if is_image(p) and p.parent != folder)
        return files, [p.relative_to(folder).parts[0] for p in files]

    @staticmethod
    def _read_labels_file(folder: pathlib.Path, path: pathlib.Path) -> tuple[list[pathlib.Path], list[Any]]:
        if not path.is_absolute() and not path.is_file():
            path = folder / path
        if not path.is_file():
            raise FileNotFoundError(f"labels file not found: {path}")
        files, labs = [], []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = [p.strip() for p in (line.split(",") if "," in line else line.split())]
            if len(parts) < 2:
                raise ValueError(f"{path}:{n}: expected '<file>,<label>', got {line!r}")
            try:
                lab = int(parts[-1])
            except ValueError:
                if not files:
                    continue  # a header line
                raise ValueError(f"{path}:{n}: label {parts[-1]!r} is not an int") from None
            f = folder / parts[0]
            if not f.is_file():
                raise FileNotFoundError(f"image file not found: {f} (listed in {path}:{n})")
            files.append(f)
            labs.append(lab)
        return files, labs

    @staticmethod
    def _label_ids(raw: list[Any], class_map: Optional[Mapping[Any, int]]) -> list[Optional[int]]:
        if all(r is None for r in raw):
            return [-1] * len(raw)
        if class_map is not None:
            def lookup(r: Any) -> Optional[int]:
                for key in (r, _int_or_none(r)):
                    if key is not None and key in class_map:
                        return int(class_map[key])
                return None
            return [lookup(r) for r in raw]
        if all(isinstance(r, int) for r in raw):
            return list(raw)
        names = sorted(set(raw))
        index = {n: i for i, n in enumerate(names)}
        return [index[r] for r in raw]

    def _match_masks(self, folder: pathlib.Path) -> list[pathlib.Path]:
        folder = require_dir(folder, "mask folder")
        by_stem = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS}
        out = []
        for f in self.files:
            m = by_stem.get(f.stem)
            if m is None:
                raise FileNotFoundError(f"mask file not found for image {f}: expected {folder / (f.stem + '.png')}")
            out.append(m)
        return out

    def _image(self, i: int) -> np.ndarray:
        if self._images is not None:
            return self._images[i]
        if self.resize == "center_crop":
            return read_image_fit(self.files[i], "RGB", self.img_size)
        return read_image(self.files[i], "RGB", self.img_size)

    def _mask(self, i: int) -> Optional[np.ndarray]:
        if self.mask_files is None:
            return None
        if self._masks is not None:
            return self._masks[i]
        if self.resize == "center_crop":
            return read_image_fit(self.mask_files[i], "L", self.img_size, Image.NEAREST)
        return read_label_map(self.mask_files[i], self.img_size)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
                f"img_size={self.img_size}, n_classes={self.n_classes}, folder={str(self.folder)!r})")


def _int_or_none(x: Any) -> Optional[int]:
    try:
        return int(x)
    except (TypeError, ValueError):
        return None
