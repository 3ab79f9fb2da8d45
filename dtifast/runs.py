"""The run folder: its layout, writing and reading a run, and whether a config or checkpoint fits a dataset.

A run folder (``dtifast train --out RUN``) holds:

=====================  ====================================================================
``config.yml``         the validated config (:data:`CONFIG_NAME`)
``checkpoint.pt``      the last good checkpoint, written atomically (:data:`CHECKPOINT_NAME`)
``train_metrics.csv``  one row per logging interval (:data:`TRAIN_LOG`)
``val_metrics.csv``    one row per validation pass (:data:`VAL_LOG`)
``train.log``          the trainer's messages (:data:`TEXT_LOG`)
``tensorboard/``       TensorBoard scalars and sprite grids, when enabled (:data:`TB_DIR`)
``eval.json``          ``dtifast eval``'s scores (:data:`EVAL_NAME`)
=====================  ====================================================================

Training, evaluation, pictures and reports all read and write runs through this module, so none of
them imports another to find its way around a run.
"""
from __future__ import annotations

import csv
import logging
import os
import pathlib
import sys
import time
from typing import Any, Mapping, Optional, Sequence

import torch
import yaml
from torch.utils.data import Dataset
from tqdm import tqdm

from . import checkpoint as ckpt
from .checkpoint import CHECKPOINT_NAME
from .config import validate_config
from .model import build_model

__all__ = ["CONFIG_NAME", "CHECKPOINT_NAME", "TRAIN_LOG", "VAL_LOG", "TEXT_LOG", "TB_DIR", "EVAL_NAME",
           "DatasetMismatchError", "load_run", "save_run_from_model", "load_datasets", "val_target_kwargs",
           "check_dataset_matches", "init_images", "RunLog"]

log = logging.getLogger("dtifast.train")

CONFIG_NAME = "config.yml"
TRAIN_LOG = "train_metrics.csv"
VAL_LOG = "val_metrics.csv"
TEXT_LOG = "train.log"
TB_DIR = "tensorboard"
EVAL_NAME = "eval.json"
INIT_IMAGES = 100  # dataset images handed to the "mean"/"sample" sprite and background inits


class DatasetMismatchError(ValueError):
    """The config (or a checkpoint) does not fit the dataset: image size, channels or classes."""


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu"
             ) -> tuple[dict[str, Any], torch.nn.Module, dict[str, Any]]:
    """The config, the model (eval mode, on ``device``) and the checkpoint of a run folder."""
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    state = ckpt.load_checkpoint(run_dir / ckpt.CHECKPOINT_NAME, map_location="cpu")
    cfg = validate_config(state["config"])
    meta = state["meta"]
    model = build_model(cfg, tuple(meta["img_size"]), int(meta["n_channels"]))
    model.load_state_dict(state["model"])
    return cfg, model.to(device).eval(), state


def save_run_from_model(run_dir: str | os.PathLike, cfg: Mapping[str, Any], model: torch.nn.Module,
                        epoch: int = 0) -> pathlib.Path:
    """Write a run folder from a model alone (no optimizer state), e.g. an imported upstream checkpoint.

    The folder gets ``config.yml`` and a ``"model"``-kind ``checkpoint.pt``. ``dtifast eval`` and
    ``dtifast pictures`` read it like any run; ``dtifast train --resume`` continues it from ``epoch``
    with a fresh optimizer and the learning-rate schedule caught up to that epoch.

    Args:
        run_dir: the folder to write (created if needed).
        cfg: the run's config (validated here).
        model: a :class:`~dtifast.model.DTISprites` (its ``img_size`` and ``n_channels`` are recorded).
        epoch: completed epochs.
    """
    run_dir = pathlib.Path(run_dir)
    cfg = validate_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_NAME).write_text(yaml.safe_dump(cfg, sort_keys=False))
    meta = {"img_size": [int(s) for s in model.img_size], "n_channels": int(model.n_channels), "n_classes": None}
    return ckpt.save_checkpoint(run_dir / CHECKPOINT_NAME, {
        "kind": "model", "config": cfg, "meta": meta, "model": model.state_dict(),
        "progress": {"epoch": int(epoch), "batch": 0, "iteration": None}})


def load_datasets(cfg: Mapping[str, Any], data_root: Optional[str | os.PathLike]) -> tuple[Dataset, Dataset]:
    """The train and validation datasets of a config (upstream: train = all images, val = 100 random)."""
    from .data import build_dataset
    train = build_dataset(cfg["dataset"], "train", data_root)
    val = build_dataset(cfg["dataset"], "val", data_root, **val_target_kwargs(train))
    return train, val


def val_target_kwargs(dataset: Dataset) -> dict[str, Any]:
    """What to ask a dataset for when scoring it: multi-object datasets give instance and semantic masks
    on demand, and the scores want both."""
    return {"target": "both"} if getattr(dataset, "multi_object", False) else {}


def check_dataset_matches(cfg: Mapping[str, Any], dataset: Dataset, meta: Optional[Mapping[str, Any]] = None
                          ) -> None:
    """Fail before training when the config (or a checkpoint's ``meta``) does not fit the dataset.

    Checks: the config's ``dataset.img_size`` (which the datasets resize to; one that does not is refused) /
    ``dataset.n_channels`` against the dataset's; the
    sprite size against the image size; a checkpoint's image size, channels and number of classes
    against the dataset's; ``eval_semantic`` on a dataset without semantic classes.
    """
    ds_size = tuple(int(s) for s in dataset.img_size)
    ds_ch = int(dataset.n_channels)
    name = cfg["dataset"]["name"]
    want = cfg["dataset"].get("img_size")
    if want is not None:
        want = (want, want) if isinstance(want, int) else tuple(want)
        if tuple(want) != ds_size:
            raise DatasetMismatchError(f"config dataset.img_size {list(want)} does not match dataset {name!r} "
                                       f"of size {list(ds_size)}")
    if cfg["dataset"].get("n_channels") not in (None, ds_ch):
        raise DatasetMismatchError(f"config dataset.n_channels {cfg['dataset']['n_channels']} does not match "
                                   f"dataset {name!r} with {ds_ch} channels")
    sprite = cfg["model"].get("sprite_size")
    if sprite is not None and (sprite[0] > ds_size[0] or sprite[1] > ds_size[1]):
        raise DatasetMismatchError(f"model.sprite_size {sprite} is larger than the images {list(ds_size)} "
                                   f"of dataset {name!r}")
    if cfg["training"].get("eval_semantic") and not getattr(dataset, "n_classes", None):
        raise DatasetMismatchError(f"training.eval_semantic is set but dataset {name!r} has no semantic classes")
    if meta:
        for key, have in (("img_size", list(ds_size)), ("n_channels", ds_ch),
                          ("n_classes", getattr(dataset, "n_classes", None))):
            if key in meta and meta[key] is not None and have is not None and meta[key] != have:
                raise DatasetMismatchError(f"the checkpoint was trained with {key} = {meta[key]} but dataset "
                                           f"{name!r} has {key} = {have}")


def init_images(cfg: Mapping[str, Any], dataset: Dataset) -> Optional[torch.Tensor]:
    """Dataset images for the ``mean``/``sample`` sprite and background inits, else None (loading them
    otherwise would slow every start)."""
    inits = (cfg["model"].get("proto_init"), cfg["model"].get("bkg_init"))
    if not any(i in ("mean", "sample") for i in inits):
        return None
    n = min(len(dataset), INIT_IMAGES)
    return torch.stack([dataset[i][0] for i in range(n)])


class RunLog:
    """The run folder's logs: ``train.log`` messages, the CSV tables and TensorBoard, written by the main
    process only (``enabled=False`` on the other ranks of a data-parallel run).

    Args:
        run_dir: the run folder.
        enabled: whether this process writes.
        tensorboard: also write TensorBoard events to ``TB_DIR``.
        resume_iteration: the iteration a resumed run continues from (its TensorBoard purges later steps).
    """

    def __init__(self, run_dir: pathlib.Path, enabled: bool, tensorboard: bool, resume_iteration: int = 0):
        self.run_dir, self.enabled = pathlib.Path(run_dir), enabled
        self.tb = self._tensorboard(resume_iteration) if enabled and tensorboard else None

    def message(self, msg: str) -> None:
        """A message to ``train.log``, the ``dtifast.train`` logger and the terminal."""
        if not self.enabled:
            return
        log.info(msg)
        with (self.run_dir / TEXT_LOG).open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        tqdm.write(msg, file=sys.stderr)

    def _tensorboard(self, resume_iteration: int) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.message("tensorboard is not installed: writing CSV logs only (pip install tensorboard)")
            return None
        return SummaryWriter(str(self.run_dir / TB_DIR), purge_step=resume_iteration + 1 if resume_iteration else None)

    def row(self, name: str, row: Mapping[str, Any], columns: Optional[Sequence[str]] = None) -> None:
        """Append ``row`` to the CSV table ``name`` (header written with the first row)."""
        if not self.enabled:
            return
        path = self.run_dir / name
        columns = list(columns or row.keys())
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in columns})

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        """TensorBoard scalars ``prefix/name``."""
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def truncate(self, iteration: int) -> None:
        """Drop the CSV rows after ``iteration``: a run resumed from there writes them again."""
        if not self.enabled:
            return
        for name in (TRAIN_LOG, VAL_LOG):
            path = self.run_dir / name
            if not path.exists():
                continue
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            if not rows:
                continue
            kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= iteration]
            with path.open("w", newline="") as f:
                csv.writer(f).writerows(kept)

    def close(self) -> None:
        """Flush and release the TensorBoard writer."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
