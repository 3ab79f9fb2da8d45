"""``build_dataset``: the dataset named by a config's ``dataset:`` section, found under a data root.

Where each dataset is looked for (upstream's ``datasets/`` layout; ``dataset.path`` overrides it)::

    tetrominoes, dsprites_gray, clevr6   <root>/<name>/{images,masks,sem_masks}/{i}.png
    gtsrb8                               <root>/GTSRB/train/<class id>/*.ppm   (8 classes kept)
    svhn                                 <root>/{train,test,extra}_32x32.mat  (or <root>/svhn/…, or an
                                         image folder <root>/svhn/<digit>/*.png)
    weizmann_horse                       <root>/weizmann_horse/{images/*.jpg, masks/*.png}
    instagram (tag T)                    <root>/instagram/T/train/*.jpg

The data root is the ``data_root`` argument, else ``$DTIFAST_DATA_ROOT``, else ``./datasets``.
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping

from torch.utils.data import Dataset

from .folder import FolderDataset
from .multi_object import KNOWN_N_CLASSES, MultiObjectDataset
from .svhn import FILES as SVHN_FILES
from .svhn import SVHNDataset

MULTI_OBJECT = tuple(KNOWN_N_CLASSES)
SINGLE_OBJECT = ("gtsrb8", "svhn", "weizmann_horse", "instagram")
GTSRB_CLASSES = (3, 7, 9, 11, 17, 18, 25, 35)  # upstream's 8 GTSRB classes, in label order
DEFAULT_SIZES = {"gtsrb8": 28, "svhn": 32, "weizmann_horse": 128, "instagram": 128}


def default_data_root() -> pathlib.Path:
    """``$DTIFAST_DATA_ROOT`` or ``./datasets`` (upstream's folder name)."""
    return pathlib.Path(os.environ.get("DTIFAST_DATA_ROOT", "datasets"))


def build_dataset(cfg_dataset: Mapping[str, Any], split: str, data_root: str | os.PathLike | None = None,
                  **kwargs: Any) -> Dataset:
    """The dataset of a config's ``dataset`` section.

    Args:
        cfg_dataset: ``{"name": ..., "tag": ..., "img_size": ..., "path": ...}`` (upstream's names:
            tetrominoes, dsprites_gray, clevr6, gtsrb8, svhn, weizmann_horse, instagram with a tag).
            ``path`` (absolute, or relative to the data root) is the dataset folder itself.
        split: "train", "val" or "eval".
        data_root: the folder holding the datasets (default: :func:`default_data_root`).
        kwargs: passed to the dataset class: ``target`` ("semantic" | "instance" | "both") and ``cache``
            for multi-object sets; ``cache`` for image folders.

    Returns:
        A :class:`MultiObjectDataset`, :class:`FolderDataset` or :class:`SVHNDataset`, all with
        ``img_size``, ``n_channels``, ``n_classes``, ``name`` and ``multi_object``.

    Raises:
        ValueError: unknown name or missing ``tag``; FileNotFoundError: a missing folder or file (named).
    """
    if not isinstance(cfg_dataset, Mapping) or "name" not in cfg_dataset:
        raise ValueError(f"the dataset config needs a 'name', got {cfg_dataset!r}")
    name = str(cfg_dataset["name"])
    root = pathlib.Path(data_root) if data_root is not None else default_data_root()
    path = cfg_dataset.get("path")
    path = (pathlib.Path(path) if pathlib.Path(path).is_absolute() else root / path) if path else None
    img_size = cfg_dataset.get("img_size")
    target = kwargs.pop("target", "semantic")
    if name in MULTI_OBJECT or (name not in SINGLE_OBJECT and ((path or root / name) / "images").is_dir()):
        return MultiObjectDataset(root, name, split, target=target, img_size=img_size, path=path, **kwargs)
    size = img_size if img_size is not None else DEFAULT_SIZES.get(name)
    if name == "gtsrb8":
        folder = path or root / "GTSRB" / "train"
        return FolderDataset(folder, size, split, labels="subfolders", name=name, n_classes=len(GTSRB_CLASSES),
                             class_map={c: i for i, c in enumerate(GTSRB_CLASSES)}, val_size=100, val_seed=46,
                             **kwargs)
    if name == "svhn":
        for folder in ([path] if path else [root, root / "svhn"]):
            if (folder / SVHN_FILES["test"]).is_file():
                return SVHNDataset(folder, split, img_size)
        folder = path or root / "svhn"
        if not folder.is_dir():
            raise FileNotFoundError(f"SVHN not found: no {SVHN_FILES['test']} in {root} or {root / 'svhn'}, and "
                                    f"no image folder {folder}")
        return FolderDataset(folder, size, split, labels="auto", name=name, n_classes=10, val_size=100,
                             val_seed=46, **kwargs)
    if name == "weizmann_horse":
        folder = path or root / name
        return FolderDataset(folder / "images", size, split, labels="none", masks=folder / "masks", name=name,
                             n_classes=2, val_size=30, val_seed=None, **kwargs)
    if name == "instagram":
        tag = cfg_dataset.get("tag")
        if not tag:
            raise ValueError("dataset 'instagram' needs a tag (dataset.tag, e.g. santaphoto)")
        folder = path or root / name / str(tag)
        return FolderDataset(folder, size, split, labels="none", resize="center_crop", name=f"{name}/{tag}",
                             n_classes=0, val_size=100, val_seed=42, **kwargs)
    raise ValueError(f"unknown dataset {name!r}: expected one of {MULTI_OBJECT + SINGLE_OBJECT}, or a folder "
                     f"{root / name} with images/ (multi-object layout)")
