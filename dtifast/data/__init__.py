"""Datasets: procedural multi-object generators with exact ground truth, upstream's folder format,
single-object image folders, and loaders.

Public API::

    make_dataset(kind, out, n, seed=0, workers=None, progress=True) -> Path    # generate
    MultiObjectDataset(root, name, split, target, img_size)                    # tetrominoes, dsprites_gray, clevr6
    FolderDataset(root, img_size, split, labels, masks, ...)                   # GTSRB-8, horse, Instagram, …
    SVHNDataset(folder, split, img_size)                                       # torchvision's .mat files
    build_dataset(cfg_dataset, split, data_root, **kwargs)                     # from a config's dataset section
    make_loader(dataset, batch_size, shuffle, workers, drop_last, seed)        # DataLoader
    preview(folder, out, n)                                                    # PNG grid
"""
from .folder import FolderDataset
from .generators import GENERATORS
from .loader import make_loader
from .make import dataset_folder, make_dataset
from .multi_object import MultiObjectDataset, split_indices
from .preview import preview
from .registry import build_dataset, default_data_root
from .svhn import SVHNDataset

__all__ = ["FolderDataset", "GENERATORS", "MultiObjectDataset", "SVHNDataset", "build_dataset", "dataset_folder",
           "default_data_root", "make_dataset", "make_loader", "preview", "split_indices"]
