"""Training: upstream's schedule around the DTI-Sprites model, with checkpoints that resume bit-exactly.

The schedule is the authors' (github.com/monniert/dti-sprites, ``src/trainer.py``):

* Adam (or another torch optimizer) with two parameter groups: sprites / masks / backgrounds with the
  ``optimizer.cluster`` options (no weight decay) and the networks with ``optimizer.transformer``
  (weight decay 1e-6 in the configs);
* a scheduler stepped once per epoch (or per batch with ``update_range: batch``); ``multi_step`` takes
  one ``gamma`` per group (``[1, 0.1]`` decays only the networks), milestones in epochs or, when
  floats, as fractions of the run;
* ``model.step_epoch()`` after each epoch, which advances the transformation curriculum and unfreezes
  the sprites;
* every ``check_cluster_interval`` iterations, the sprite usage averaged since the last check goes to
  ``model.reassign_empty_clusters`` (one random layer's usage for multi-object models, as upstream);
* every ``train_stat_interval`` iterations a row of the train log, every ``val_stat_interval`` a
  validation pass on the 100 validation images and, by default, a checkpoint.

dtifast adds: exact ``n_iterations`` stops, batch-size / LR scaling, ``bf16`` autocast, ``torch.compile``,
DDP under ``torchrun`` (one process per device, ``training.batch_size`` split over the processes),
CSV and TensorBoard logs, atomic checkpoints, a stop on non-finite loss that keeps the last good
checkpoint, and bit-exact resume.

Bit-exact resume: a checkpoint holds the model (its curriculum and freeze state are buffers), the
optimizer and scheduler, every global RNG (Python, NumPy, torch CPU/CUDA), the position in the run
(epoch, batch, iteration) and the running meters. The data order does not depend on any saved
generator: epoch ``e``'s permutation is drawn from a generator seeded with ``(seed, e)``, so a resumed
run starts at the same batch of the same permutation without reading the batches before it.
"""
from __future__ import annotations

import copy
import csv
import logging
import math
import os
import pathlib
import random
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler

from . import checkpoint as ckpt
from .config import ConfigError, validate_config

log = logging.getLogger("dtifast.train")

DEFAULT_SEED = 4321  # upstream's default when a config gives none
CONFIG_NAME = ckpt.CONFIG_NAME
TRAIN_LOG = "train_metrics.csv"
VAL_LOG = "val_metrics.csv"
TEXT_LOG = "train.log"
TB_DIR = "tensorboard"
INIT_IMAGES = 100  # dataset images handed to the "mean"/"sample" sprite and background inits
TRAIN_COLUMNS = ["iteration", "epoch", "batch", "loss", "time_per_img", "lr_cluster", "lr_network"]
# Keys that may differ between a checkpoint's config and the one a resumed run uses: they change how
# long the run goes or how it logs, not what one step computes.
RESUMABLE_KEYS = {"training.n_epoches", "training.n_iterations", "training.n_workers",
                  "training.train_stat_interval", "training.val_stat_interval", "training.checkpoint_interval",
                  "training.tensorboard", "training.resume", "training.pretrained", "training.visualizer_port"}
SCHEDULERS = ("constant_lr", "multi_step", "cosine_annealing", "exp_lr")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "rmsprop": torch.optim.RMSprop, "adamax": torch.optim.Adamax, "adagrad": torch.optim.Adagrad}
FUSED_OPTIMIZERS = ("adam", "adamw")  # torch has a fused CPU and CUDA update for these


class TrainingDivergedError(RuntimeError):
    """The loss (or a parameter) became NaN or inf; the message names the iteration and the last checkpoint."""


class DatasetMismatchError(ValueError):
    """The config (or a checkpoint) does not fit the dataset: image size, channels or classes."""


# ----------------------------------------------------------------------------------------------------
# Building blocks: optimizer, scheduler, sampler, distributed setup
# ----------------------------------------------------------------------------------------------------

def lr_scale_factor(batch_size: int, reference: Optional[int], rule: str) -> float:
    """Factor applied to every learning rate when training with ``batch_size`` instead of ``reference``.

    ``linear`` (Goyal et al.) scales with the batch, ``sqrt`` with its square root, ``none`` keeps it.
    """
    if rule not in ("none", "linear", "sqrt"):
        raise ConfigError(f"training.lr_scaling must be 'none', 'linear' or 'sqrt', got {rule!r}")
    if rule == "none" or reference is None:
        return 1.0
    if reference < 1:
        raise ConfigError(f"training.lr_reference_batch_size must be >= 1, got {reference}")
    ratio = batch_size / reference
    return ratio if rule == "linear" else math.sqrt(ratio)


def build_optimizer(model: torch.nn.Module, opt_cfg: Mapping[str, Any], lr_factor: float = 1.0
                    ) -> torch.optim.Optimizer:
    """The optimizer over two groups, in upstream's order: cluster parameters, then networks.

    Adam and AdamW use torch's fused update (one kernel over every parameter; 7x faster than the
    per-tensor loop for ResNet-18 on the CPU) unless ``fused: false``: the same Adam update, rounded differently in the last bits.

    ``opt_cfg`` is the ``training.optimizer`` section; its ``cluster`` / ``transformer`` dicts override
    the top-level options per group (upstream puts the networks' weight decay in ``transformer``).
    """
    opt_cfg = dict(opt_cfg)
    name = opt_cfg.pop("name", "adam")
    if name not in OPTIMIZERS:
        raise ConfigError(f"training.optimizer.name must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    cluster_kw = dict(opt_cfg.pop("cluster", None) or {})
    network_kw = dict(opt_cfg.pop("transformer", None) or {})
    if "betas" in opt_cfg and name not in ("adam", "adamw", "adamax"):
        opt_cfg.pop("betas")
    if "betas" in opt_cfg:
        opt_cfg["betas"] = tuple(opt_cfg["betas"])
    fused = opt_cfg.pop("fused", None)
    if fused and name not in FUSED_OPTIMIZERS:
        raise ConfigError(f"training.optimizer.fused: {name!r} has no fused implementation; "
                          f"fused is available for {sorted(FUSED_OPTIMIZERS)}")
    defaults = {k: v for k, v in opt_cfg.items() if v is not None}
    groups = []
    for params, kw in ((model.cluster_parameters(), cluster_kw), (model.network_parameters(), network_kw)):
        group = {**defaults, **kw, "params": list(params)}
        group["lr"] = float(group.get("lr", 1e-3)) * lr_factor
        groups.append(group)
    if fused is None:  # auto: the fused update wherever torch has one for these parameters
        fused = name in FUSED_OPTIMIZERS and all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    extra = {"fused": True} if fused else {}
    try:
        return OPTIMIZERS[name](groups, **extra)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"training.optimizer: {err}") from err


class _Schedule:
    """A learning-rate factor as a function of the step count (epochs or iterations).

    A plain object rather than a lambda so that ``LambdaLR.state_dict`` stores its settings.
    """

    def __init__(self, kind: str, gamma: float, milestones: Sequence[int], total: int):
        self.kind, self.gamma, self.milestones, self.total = kind, float(gamma), sorted(milestones), max(total, 1)

    def __call__(self, step: int) -> float:
        if self.kind == "multi_step":
            return self.gamma ** sum(1 for m in self.milestones if step >= m)
        if self.kind == "cosine_annealing":
            return 0.5 * (1 + math.cos(math.pi * min(step, self.total) / self.total))
        if self.kind == "exp_lr":
            return self.gamma ** step
        return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: Optional[Mapping[str, Any]], n_epochs: int,
                    n_iterations: int) -> tuple[torch.optim.lr_scheduler.LambdaLR, str]:
    """The LR scheduler and its update range (``"epoch"`` or ``"batch"``).

    ``multi_step``: factor ``gamma_g ** (number of milestones passed)`` per group ``g`` (``gamma`` a number
    or one per group); float milestones are fractions of the run. ``cosine_annealing``: half cosine to 0
    over the run. ``exp_lr``: ``gamma ** step``. ``constant_lr`` / null: constant.
    """
    sched_cfg = dict(sched_cfg or {})
    name = sched_cfg.get("name") or "constant_lr"
    if name not in SCHEDULERS:
        raise ConfigError(f"training.scheduler.name must be one of {SCHEDULERS} or null, got {name!r}")
    update_range = sched_cfg.get("update_range", "epoch")
    if update_range not in ("epoch", "batch"):
        raise ConfigError(f"training.scheduler.update_range must be 'epoch' or 'batch', got {update_range!r}")
    total = n_epochs if update_range == "epoch" else n_iterations
    milestones = [round(m * total) if isinstance(m, float) else int(m) for m in sched_cfg.get("milestones", [])]
    gamma = sched_cfg.get("gamma", 0.1)
    n_groups = len(optimizer.param_groups)
    gammas = list(gamma) if isinstance(gamma, list) else [gamma] * n_groups
    if len(gammas) != n_groups:
        raise ConfigError(f"training.scheduler.gamma has {len(gammas)} values but the optimizer has {n_groups} "
                          "parameter groups (cluster, network)")
    lambdas = [_Schedule(name, g, milestones, total) for g in gammas]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas), update_range


class EpochSampler(Sampler[int]):
    """Indices of one epoch for one process: a permutation seeded by ``(seed, epoch)``, sharded over ranks.

    Like :class:`torch.utils.data.DistributedSampler` (the index list is padded by wrapping so that every
    rank gets the same count; rank r takes every ``world_size``-th index from r), plus ``start``: skip the
    first ``start`` indices of this rank, so that a resumed run continues mid-epoch without loading the
    images before.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 start: int = 0):
        if n < 1:
            raise ValueError("the dataset is empty (0 images); nothing to train on")
        self.n, self.seed, self.epoch, self.shuffle = n, seed, epoch, shuffle
        self.rank, self.world_size, self.start = rank, world_size, start
        self.per_rank = math.ceil(n / world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Serve epoch ``epoch`` from its ``start``-th index on (the DataLoader keeps this sampler)."""
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / self.n))[:total]
        return order[self.rank::self.world_size][self.start:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.per_rank - self.start


@dataclass
class DistContext:
    """Where this process sits in a (possibly single-process) run."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment (RANK, WORLD_SIZE, …).

    Uses NCCL on CUDA and gloo on CPU; a single process (no WORLD_SIZE, or 1) gets no group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistContext(rank, world, local)


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------

def load_datasets(cfg: Mapping[str, Any], data_root: Optional[str | os.PathLike]) -> tuple[Dataset, Dataset]:
    """The train and validation datasets of a config (upstream: train = all images, val = 100 random)."""
    from .data import build_dataset
    train = build_dataset(cfg["dataset"], "train", data_root)
    val = build_dataset(cfg["dataset"], "val", data_root, **_val_target_kwargs(train))
    return train, val


def _val_target_kwargs(dataset: Dataset) -> dict[str, Any]:
    # Multi-object datasets give instance and semantic masks on demand; validation scores want both.
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


def _init_images(cfg: Mapping[str, Any], dataset: Dataset) -> Optional[torch.Tensor]:
    # Only the "mean"/"sample" inits read images; loading them otherwise would slow every start.
    inits = (cfg["model"].get("proto_init"), cfg["model"].get("bkg_init"))
    if not any(i in ("mean", "sample") for i in inits):
        return None
    n = min(len(dataset), INIT_IMAGES)
    return torch.stack([dataset[i][0] for i in range(n)])


# ----------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------

class _Meter:
    """Running sums between two log rows (saved in checkpoints so that logs resume exactly too)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss, self.steps, self.images, self.seconds = 0.0, 0, 0, 0.0

    def state(self) -> dict[str, float]:
        return {"loss": self.loss, "steps": self.steps, "images": self.images, "seconds": self.seconds}

    def load(self, state: Mapping[str, float]) -> None:
        self.loss, self.steps = float(state["loss"]), int(state["steps"])
        self.images, self.seconds = int(state["images"]), float(state["seconds"])


class Trainer:
    """Train a DTI-Sprites model from a validated config into a run folder.

    Args:
        cfg: a validated config (:func:`dtifast.config.load_config`).
        run_dir: the run folder: ``config.yml``, ``checkpoint.pt``, ``train_metrics.csv``,
            ``val_metrics.csv``, ``train.log``, ``tensorboard/``.
        data_root: folder holding the datasets (``<root>/<name>/images/…``); None: the data module's default.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``…; None picks CUDA when available. Under ``torchrun``
            each process uses ``cuda:LOCAL_RANK`` (CUDA) or the CPU (gloo).
        resume: continue from ``run_dir/checkpoint.pt``; ``cfg`` may then differ only in
            :data:`RESUMABLE_KEYS` (None: use the checkpoint's config).
        progress: show a tqdm bar (None: only on a terminal).

    Example::

        cfg = load_config("configs/tetro-tiny.yml")
        Trainer(cfg, "runs/tetro", data_root="data").run()
    """

    def __init__(self, cfg: Optional[Mapping[str, Any]], run_dir: str | os.PathLike, *,
                 data_root: Optional[str | os.PathLike] = None, device: Optional[str | torch.device] = None,
                 resume: bool = False, progress: Optional[bool] = None):
        self.run_dir = pathlib.Path(run_dir)
        self.data_root = data_root
        state = None
        if resume:
            state = ckpt.load_checkpoint(self.run_dir / ckpt.CHECKPOINT_NAME)
            cfg = _merge_resume_config(state["config"], cfg)
        elif cfg is None:
            raise ValueError("a config is needed to start a run (cfg=None is only valid with resume=True)")
        elif (self.run_dir / ckpt.CHECKPOINT_NAME).exists():
            raise FileExistsError(f"{self.run_dir} already holds a checkpoint; resume it (--resume) or choose "
                                  "another --out")
        self.cfg = validate_config(cfg)
        tcfg = self.cfg["training"]
        want_device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.dist = init_distributed(want_device.type)
        if want_device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device {want_device} requested but CUDA is not available")
            if self.dist.enabled:
                want_device = torch.device("cuda", self.dist.local_rank)
            if want_device.index is not None:
                torch.cuda.set_device(want_device)
        self.device = want_device
        self.amp = tcfg["amp"]
        if self.amp not in (None, "bf16"):
            raise ConfigError(f"training.amp must be null or 'bf16', got {self.amp!r}")

        for key in ("train_stat_interval", "val_stat_interval", "check_cluster_interval", "checkpoint_interval"):
            if tcfg[key] is not None and tcfg[key] < 1:
                raise ConfigError(f"training.{key} must be >= 1, got {tcfg[key]}")
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.seed = tcfg["seed"] if tcfg["seed"] is not None else DEFAULT_SEED
        _seed_everything(self.seed)

        # Data
        self.train_set, self.val_set = load_datasets(self.cfg, data_root)
        meta = state.get("meta") if state is not None else None
        check_dataset_matches(self.cfg, self.train_set, meta)
        global_batch = tcfg["batch_size"]
        if global_batch % self.dist.world_size:
            raise ConfigError(f"training.batch_size {global_batch} must be divisible by the number of processes "
                              f"{self.dist.world_size}")
        self.batch_size = global_batch // self.dist.world_size
        self.n_batches = math.ceil(math.ceil(len(self.train_set) / self.dist.world_size) / self.batch_size)
        # n_iterations wins when both are set, so that `--set training.n_iterations=N` shortens any config.
        if tcfg["n_iterations"] is not None:
            self.total_iterations = int(tcfg["n_iterations"])
            self.n_epochs = math.ceil(self.total_iterations / self.n_batches)
        elif tcfg["n_epoches"] is not None:
            self.n_epochs = int(tcfg["n_epoches"])
            self.total_iterations = self.n_epochs * self.n_batches
        else:
            raise ConfigError("training.n_epoches or training.n_iterations is required")
        if self.total_iterations < 1:
            raise ConfigError(f"the run must have at least one iteration, got {self.total_iterations}")

        # Model, optimizer, scheduler
        from .model import build_model
        self.meta = {"img_size": [int(s) for s in self.train_set.img_size],
                     "n_channels": int(self.train_set.n_channels),
                     "n_classes": getattr(self.train_set, "n_classes", None)}
        init = None if state is not None else _init_images(self.cfg, self.train_set)
        self.model = build_model(self.cfg, tuple(self.meta["img_size"]), self.meta["n_channels"], init).to(self.device)
        if self.amp == "bf16":
            autocast_encoder(self.model, self.device.type)
        lr_factor = lr_scale_factor(global_batch, tcfg["lr_reference_batch_size"], tcfg["lr_scaling"])
        self.optimizer = build_optimizer(self.model, tcfg["optimizer"], lr_factor)
        self.scheduler, self.update_range = build_scheduler(self.optimizer, tcfg["scheduler"], self.n_epochs,
                                                            self.total_iterations)

        # Position in the run and running statistics
        self.epoch, self.batch, self.iteration = 0, 0, 0
        self.meter = _Meter()
        self.prop_sum: Optional[torch.Tensor] = None
        self.prop_steps = 0
        self.last_checkpoint_iteration: Optional[int] = None
        if state is not None:
            self._load_state(state)
        elif self.dist.is_main:
            (self.run_dir / CONFIG_NAME).write_text(yaml.safe_dump(self.cfg, sort_keys=False))

        self.forward_model: torch.nn.Module = self.model
        if self.dist.enabled:
            # Curriculum modules not yet active and frozen sprites get no gradient in some steps.
            self.forward_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        compile_opt = tcfg["compile"]
        if compile_opt:
            # Compiling the DDP wrapper (not the reverse) lets dynamo split graphs at DDP's buckets.
            backend = compile_opt if isinstance(compile_opt, str) else "inductor"
            self.forward_model = torch.compile(self.forward_model, backend=backend)
        self.progress = progress
        self._train_loader: Optional[DataLoader] = None
        self._sampler: Optional[EpochSampler] = None
        self.tb = self._tensorboard() if self.dist.is_main and tcfg["tensorboard"] else None
        self.checkpoint_interval = tcfg["checkpoint_interval"] or tcfg["val_stat_interval"]
        self._log(f"run {self.run_dir}: {len(self.train_set)} train / {len(self.val_set)} val images, "
                  f"{self.n_epochs} epochs of {self.n_batches} batches ({self.total_iterations} iterations), "
                  f"batch {global_batch} over {self.dist.world_size} process(es), device {self.device}, "
                  f"lr factor {lr_factor:g}, amp {self.amp}, compile {compile_opt}")

    # -- logging ---------------------------------------------------------------------------------------

    def _log(self, msg: str) -> None:
        """A message to ``train.log``, the ``dtifast.train`` logger and the terminal (main process only)."""
        if not self.dist.is_main:
            return
        log.info(msg)
        with (self.run_dir / TEXT_LOG).open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        from tqdm import tqdm
        tqdm.write(msg, file=sys.stderr)

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self._log("tensorboard is not installed: writing CSV logs only (pip install tensorboard)")
            return None
        return SummaryWriter(str(self.run_dir / TB_DIR), purge_step=self.iteration + 1 if self.iteration else None)

    def _append_csv(self, name: str, row: Mapping[str, Any], columns: Optional[Sequence[str]] = None) -> None:
        if not self.dist.is_main:
            return
        path = self.run_dir / name
        columns = list(columns or row.keys())
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in columns})

    def _truncate_logs(self) -> None:
        # Rows written after the checkpoint we resume from would be written again: drop them.
        if not self.dist.is_main:
            return
        for name in (TRAIN_LOG, VAL_LOG):
            path = self.run_dir / name
            if not path.exists():
                continue
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            if not rows:
                continue
            kept = [rows[0]] + [r for r in rows[1:] if r and int(float(r[0])) <= self.iteration]
            with path.open("w", newline="") as f:
                csv.writer(f).writerows(kept)

    # -- state -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run bit-exactly."""
        return {
            "kind": "training",
            "config": copy.deepcopy(self.cfg),
            "meta": dict(self.meta),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ckpt.capture_rng_state(),
            "progress": {"epoch": self.epoch, "batch": self.batch, "iteration": self.iteration},
            "meter": self.meter.state(),
            "proportions": {"sum": self.prop_sum, "steps": self.prop_steps},
            "world_size": self.dist.world_size,
        }

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        # The curriculum lives in buffers; re-derive anything computed from the epoch counter.
        self.model.set_epoch(int(self.model.cur_epoch))
        prog = state["progress"]
        self.epoch, self.batch = int(prog["epoch"]), int(prog.get("batch", 0))
        if state.get("kind") == "training":
            if state.get("world_size", 1) != self.dist.world_size:
                raise ckpt.CheckpointError(
                    f"the checkpoint was written by {state['world_size']} process(es) but this run has "
                    f"{self.dist.world_size}; resume with the same number of processes")
            self.iteration = int(prog["iteration"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.meter.load(state["meter"])
            self.prop_sum = state["proportions"]["sum"]
            if self.prop_sum is not None:
                self.prop_sum = self.prop_sum.to(self.device)
            self.prop_steps = int(state["proportions"]["steps"])
            ckpt.restore_rng_state(state["rng"])
            self._truncate_logs()
        else:
            # A model-only checkpoint (e.g. `dtifast import-upstream`): fresh optimizer, schedule caught up.
            self.batch = 0
            self.iteration = self.epoch * self.n_batches
            with warnings.catch_warnings():
                # Catching up on steps already taken: torch's "step before optimizer.step()" warning
                # does not apply.
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(self.epoch if self.update_range == "epoch" else self.iteration):
                    self.scheduler.step()
        self.last_checkpoint_iteration = self.iteration
        self._log(f"resumed at epoch {self.epoch}, batch {self.batch}, iteration {self.iteration} "
                  f"({state.get('kind', 'model')} checkpoint)")

    def save_checkpoint(self) -> pathlib.Path:
        """Write ``checkpoint.pt`` atomically (main process only), refusing to save non-finite weights."""
        path = self.run_dir / ckpt.CHECKPOINT_NAME
        bad = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise TrainingDivergedError(
                f"parameters {bad[:5]} hold NaN or inf at iteration {self.iteration}; not overwriting the last good "
                f"checkpoint {path} (iteration {self.last_checkpoint_iteration})")
        if self.dist.is_main:
            ckpt.save_checkpoint(path, self.state_dict())
        self.last_checkpoint_iteration = self.iteration
        return path

    # -- one step --------------------------------------------------------------------------------------

    def _train_step(self, images: torch.Tensor) -> float:
        start = time.perf_counter()
        self.model.train()
        images = images.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        out = self.forward_model(images)
        loss = out.loss.float()
        finite = torch.isfinite(loss.detach()).float()
        if self.dist.enabled:
            # Every rank must stop together, else the others wait forever in the gradient all-reduce.
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite):
            where = (f"iteration {self.iteration} (epoch {self.epoch + 1}, batch {self.batch})")
            last = (f"the last good checkpoint is {self.run_dir / ckpt.CHECKPOINT_NAME} (iteration "
                    f"{self.last_checkpoint_iteration})" if self.last_checkpoint_iteration is not None
                    else "no checkpoint was written yet")
            raise TrainingDivergedError(f"non-finite loss ({float(loss.detach())}) at {where}; training stopped, {last}. "
                                        "Lower the learning rate or use float32 and resume or restart.")
        loss.backward()
        self.optimizer.step()
        props = self.model.cluster_proportions(out).detach().to(torch.float64)
        self.prop_sum = props if self.prop_sum is None else self.prop_sum + props
        self.prop_steps += 1
        value = float(loss.detach())
        self.meter.loss += value
        self.meter.steps += 1
        self.meter.images += images.shape[0]
        self.meter.seconds += time.perf_counter() - start
        return value

    def _check_clusters(self) -> None:
        avg = self.prop_sum / max(self.prop_steps, 1)
        if self.dist.enabled:
            avg = avg.to(self.device)
            dist.all_reduce(avg)
            avg = avg / self.dist.world_size
        if avg.dim() == 2:
            # Upstream checks one random layer at a time (NumPy's global generator, saved in checkpoints).
            layer = int(np.random.randint(0, avg.shape[0]))
            props, where = avg[layer], f" for layer {layer}"
        else:
            props, where = avg, ""
        reassigned, idx = self.model.reassign_empty_clusters(props.cpu(), self.optimizer)
        if reassigned:
            self._log(f"iteration {self.iteration}: reassigned sprites {reassigned} from sprite {idx}{where}")
            if self.dist.enabled:
                # Ranks decide alike (same proportions and RNG); broadcasting makes sure weights stay equal.
                for t in self.model.state_dict().values():
                    dist.broadcast(t, 0)
        self.prop_sum, self.prop_steps = None, 0

    def _log_train(self) -> None:
        if self.meter.steps == 0:
            return
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        row = {"iteration": self.iteration, "epoch": self.epoch + 1, "batch": self.batch,
               "loss": self.meter.loss / self.meter.steps,
               "time_per_img": self.meter.seconds / max(self.meter.images, 1),
               "lr_cluster": lrs[0], "lr_network": lrs[-1]}
        self._append_csv(TRAIN_LOG, row, TRAIN_COLUMNS)
        if self.tb is not None:
            self.tb.add_scalar("train/loss", row["loss"], self.iteration)
            self.tb.add_scalar("train/time_per_img", row["time_per_img"], self.iteration)
            self.tb.add_scalar("lr/cluster", lrs[0], self.iteration)
            self.tb.add_scalar("lr/network", lrs[-1], self.iteration)
        self.last_train_loss = row["loss"]
        self.meter.reset()

    def validate(self) -> dict[str, float]:
        """Loss and scores on the validation images (all processes compute them; only the main one logs)."""
        from .evaluate import evaluate_model
        torch_state = torch.get_rng_state()  # validation draws no random numbers, but keep the stream intact
        scores = evaluate_model(self.model, self.val_set, batch_size=self.batch_size, device=self.device, workers=0)
        torch.set_rng_state(torch_state)
        row = {"iteration": self.iteration, "epoch": self.epoch + 1, **{k: v for k, v in scores.items()
                                                                          if isinstance(v, (int, float))}}
        self._append_csv(VAL_LOG, row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("iteration", "epoch"):
                    self.tb.add_scalar(f"val/{k}", v, self.iteration)
            from .visualize import sprite_grid
            grid = sprite_grid(self.model.prototypes, self.model.masks)
            self.tb.add_image("sprites", np.asarray(grid), self.iteration, dataformats="HWC")
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                          if k not in ("iteration", "epoch"))
        self._log(f"val {shown} (iteration {self.iteration})")
        return scores

    def _loader(self, epoch: int, start_batch: int) -> DataLoader:
        """The training DataLoader, set to serve ``epoch`` from batch ``start_batch`` on.

        Built once (so worker processes persist across epochs) around an :class:`EpochSampler`; not
        :func:`dtifast.data.make_loader`, whose shuffling state cannot start mid-epoch or shard over ranks.
        """
        if self._train_loader is None:
            self._sampler = EpochSampler(len(self.train_set), self.seed, rank=self.dist.rank,
                                         world_size=self.dist.world_size)
            workers = self.cfg["training"]["n_workers"]
            extra = {"persistent_workers": True, "prefetch_factor": 4} if workers > 0 else {}
            # Its own generator: starting an epoch must not draw from torch's global stream, or a resumed
            # run (which starts one mid-epoch) would see different random numbers afterwards.
            self._train_loader = DataLoader(self.train_set, batch_size=self.batch_size, sampler=self._sampler,
                                            num_workers=workers, generator=torch.Generator().manual_seed(self.seed),
                                            pin_memory=self.device.type == "cuda", drop_last=False, **extra)
        self._sampler.set_epoch(epoch, start_batch * self.batch_size)
        return self._train_loader

    # -- the loop --------------------------------------------------------------------------------------

    def run(self, stop_at: Optional[int] = None) -> dict[str, Any]:
        """Train to the end of the schedule (or to iteration ``stop_at``), checkpointing along the way.

        Args:
            stop_at: save a checkpoint and return once this many iterations are done (for time-sliced
                jobs; continue with ``resume=True``).

        Returns:
            dict with ``iteration``, ``epoch``, ``loss`` (mean train loss of the last logged window),
            ``seconds`` and ``checkpoint`` (path).

        Raises:
            TrainingDivergedError: the loss became NaN/inf; the checkpoint on disk is the last good one.
        """
        from tqdm import tqdm
        tcfg = self.cfg["training"]
        end = self.total_iterations if stop_at is None else min(stop_at, self.total_iterations)
        self.last_train_loss = math.nan
        start_time = time.perf_counter()
        # disable=None lets tqdm show the bar only on a terminal.
        disable = True if not self.dist.is_main or self.progress is False else (None if self.progress is None
                                                                                 else False)
        bar = tqdm(total=self.total_iterations, initial=self.iteration, unit="it", dynamic_ncols=True,
                   disable=disable)
        try:
            while self.iteration < end:
                for images, _ in self._loader(self.epoch, self.batch):
                    self.batch += 1
                    self.iteration += 1
                    loss = self._train_step(images)
                    bar.update(1)
                    if self.iteration % 10 == 0 or self.iteration == end:
                        bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.4g}", refresh=False)
                    if self.update_range == "batch":
                        self.scheduler.step()
                    if (self.iteration % tcfg["train_stat_interval"] == 0
                            or self.iteration == self.total_iterations):
                        self._log_train()
                    if self.iteration % tcfg["check_cluster_interval"] == 0:
                        self._check_clusters()
                    if self.iteration % tcfg["val_stat_interval"] == 0:
                        self.validate()
                    if self.iteration % self.checkpoint_interval == 0:
                        self.save_checkpoint()
                    if self.iteration >= end:
                        break
                if self.batch >= self.n_batches:
                    self._end_epoch()
        finally:
            bar.close()
        finished = self.iteration >= self.total_iterations
        if self.meter.steps:  # a stop_at pause keeps its partial window for the resumed run to log
            self.last_train_loss = self.meter.loss / self.meter.steps
        path = self.save_checkpoint()
        seconds = time.perf_counter() - start_time
        self._log(f"stopped at iteration {self.iteration}/{self.total_iterations} (epoch {self.epoch}) after "
                  f"{seconds:.1f}s; checkpoint {path}")
        if self.tb is not None:
            self.tb.flush()
        return {"iteration": self.iteration, "epoch": self.epoch, "loss": self.last_train_loss,
                "seconds": seconds, "checkpoint": str(path), "finished": finished}

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        was_frozen = self.model.are_sprites_frozen
        self.model.step_epoch()
        if was_frozen and not self.model.are_sprites_frozen:
            self._log(f"epoch {self.epoch}: sprites unfrozen")
        if self.update_range == "epoch":
            before = [g["lr"] for g in self.optimizer.param_groups]
            self.scheduler.step()
            after = [g["lr"] for g in self.optimizer.param_groups]
            if after != before:
                self._log(f"epoch {self.epoch}: learning rates {before} -> {after}")

    def close(self) -> None:
        """Release the TensorBoard writer."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def autocast_encoder(model: torch.nn.Module, device_type: str) -> None:
    """Run ``model.encoder`` under bf16 autocast and hand float32 features to the rest (``--amp bf16``).

    The encoder's convolutions are where bf16 pays; the transformation heads, the warps and the
    compositing stay in float32, where the greedy selection compares small reconstruction errors (and
    where the fused ops expect one dtype for images and parameters). Only this instance's ``forward`` is
    replaced, so the state dict and checkpoints are unchanged.
    """
    encoder = model.encoder
    inner = encoder.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return inner(x).float()

    encoder.forward = forward


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _merge_resume_config(saved: Mapping[str, Any], given: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The config of a resumed run: the checkpoint's, where ``given`` may change only resumable keys."""
    if given is None:
        return copy.deepcopy(dict(saved))
    a, b = _flatten(validate_config(saved)), _flatten(validate_config(given))
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_KEYS)
    if changed:
        diffs = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:8])
        raise ConfigError(f"cannot resume with a different config ({diffs}); only {sorted(RESUMABLE_KEYS)} may "
                          "change on resume")
    return copy.deepcopy(dict(given))



def parse_k_range(spec: str) -> list[int]:
    """``"10:25"`` (inclusive), ``"10:25:5"`` (with a step) or ``"4,8,12"`` → sorted distinct K values."""
    try:
        if ":" in spec:
            parts = [int(p) for p in spec.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            lo, hi, step = parts[0], parts[1], parts[2] if len(parts) == 3 else 1
            if step < 1 or hi < lo:
                raise ValueError
            ks = list(range(lo, hi + 1, step))
        else:
            ks = [int(p) for p in spec.split(",")]
    except ValueError:
        raise ValueError(f"--k must look like LO:HI, LO:HI:STEP or K1,K2,... with LO <= HI, got {spec!r}") from None
    if not ks or min(ks) < 1:
        raise ValueError(f"K values must be >= 1, got {spec!r}")
    return sorted(set(ks))


def sweep_k(cfg: Mapping[str, Any], ks: Sequence[int], out_dir: str | os.PathLike, *,
            data_root: Optional[str | os.PathLike] = None, device: Optional[str | torch.device] = None,
            progress: Optional[bool] = None) -> dict[str, Any]:
    """Train one run per number of sprites K and plot the final loss against K (the paper's Fig. 1).

    Each run lives in ``out_dir/k{K}``; a run folder that already holds a checkpoint is resumed (and a
    finished one only re-evaluated), so an interrupted sweep continues where it stopped. The final loss
    is the evaluation loss (no mask noise) on the first 320 images. Writes ``sweep_k.csv`` and
    ``sweep_k.png`` (elbow marked) in ``out_dir``.

    Returns:
        dict with ``k`` (list), ``loss`` (list), ``elbow`` (the K at the elbow), ``csv`` and ``figure`` paths.
    """
    from .evaluate import evaluate_run
    from .visualize import find_elbow, save_figure, sweep_figure
    if not ks:
        raise ValueError("sweep_k needs at least one K")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    losses = []
    for k in ks:
        run_cfg = copy.deepcopy(dict(cfg))
        run_cfg["model"] = {**run_cfg["model"], "n_sprites": int(k)}
        run_dir = out_dir / f"k{k}"
        resume = (run_dir / ckpt.CHECKPOINT_NAME).exists()
        trainer = Trainer(run_cfg, run_dir, data_root=data_root, device=device, resume=resume, progress=progress)
        try:
            trainer.run()
        finally:
            trainer.close()
        losses.append(float(evaluate_run(run_dir, data_root=data_root, device=device)["loss"]))
    elbow = find_elbow(ks, losses)
    csv_path = out_dir / "sweep_k.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["k", "loss", "run", "elbow"])
        for i, (k, loss) in enumerate(zip(ks, losses)):
            w.writerow([k, loss, str(out_dir / f"k{k}"), int(i == elbow)])
    fig_path = save_figure(sweep_figure(list(ks), losses, elbow), out_dir / "sweep_k.png")
    return {"k": list(ks), "loss": losses, "elbow": int(ks[elbow]), "csv": csv_path, "figure": fig_path}
