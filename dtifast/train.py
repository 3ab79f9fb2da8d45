"""Training: upstream's schedule around the DTI-Sprites model, with checkpoints that resume bit-exactly.

The schedule is the authors' (github.com/monniert/dti-sprites, ``src/trainer.py``; the optimizer and
learning-rate schedule are built by :mod:`dtifast.optim`):

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

No host syncs between logging points: a step keeps its loss on the device (summed there for the log),
the model validates its input on the device (:meth:`~dtifast.model.DTISprites.check_input`), and a
non-finite loss is detected on the device too: the fused Adam update skips that step (``found_inf``),
the first such iteration is recorded, and the run stops at the next logging point (or checkpoint, or
validation) with the last good checkpoint on disk.

Bit-exact resume: a checkpoint holds the model (its curriculum and freeze state are buffers), the
optimizer and scheduler, every global RNG (Python, NumPy, torch CPU/CUDA), the position in the run
(epoch, batch, iteration) and the running meters. The data order does not depend on any saved
generator: epoch ``e``'s permutation is drawn from a generator seeded with ``(seed, e)``, so a resumed
run starts at the same batch of the same permutation without reading the batches before it.
"""
from __future__ import annotations

import copy
import math
import os
import pathlib
import random
import time
import warnings
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import checkpoint as ckpt
from . import runs
from .config import ConfigError, merge_resume_config, validate_config
from .distributed import EpochSampler, default_device, init_distributed, process_device
from .evaluate import evaluate_model
from .model import autocast_encoder, build_model
from .monitor import DivergenceWatch, StepMeter
from .optim import build_optimizer, build_scheduler, lr_scale_factor, run_length
from .visualize import sprite_grid

__all__ = ["Trainer", "TrainingDivergedError", "DEFAULT_SEED", "TRAIN_COLUMNS"]

DEFAULT_SEED = 4321  # upstream's default when a config gives none
TRAIN_COLUMNS = ["iteration", "epoch", "batch", "loss", "time_per_img", "lr_cluster", "lr_network"]


class TrainingDivergedError(RuntimeError):
    """The loss (or a parameter) became NaN or inf; the message names the iteration and the last checkpoint."""


class Trainer:
    """Train a DTI-Sprites model from a validated config into a run folder (layout: :mod:`dtifast.runs`).

    Args:
        cfg: a validated config (:func:`dtifast.config.load_config`).
        run_dir: the run folder.
        data_root: folder holding the datasets (``<root>/<name>/images/…``); None: the data module's default.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``…; None picks CUDA when available. Under ``torchrun``
            each process uses ``cuda:LOCAL_RANK`` (CUDA) or the CPU (gloo).
        resume: continue from ``run_dir/checkpoint.pt``; ``cfg`` may then differ only in
            :data:`dtifast.config.RESUMABLE_KEYS` (None: use the checkpoint's config).
        progress: show a tqdm bar (None: only on a terminal).

    Example::

        cfg = load_config("configs/tetro-tiny.yml")
        Trainer(cfg, "runs/tetro", data_root="data").run()
    """

    def __init__(self, cfg: Optional[Mapping[str, Any]], run_dir: str | os.PathLike, *,
                 data_root: Optional[str | os.PathLike] = None, device: Optional[str | torch.device] = None,
                 resume: bool = False, progress: Optional[bool] = None):
        self.run_dir = pathlib.Path(run_dir)
        state = None
        if resume:
            state = ckpt.load_checkpoint(self.run_dir / runs.CHECKPOINT_NAME)
            cfg = merge_resume_config(state["config"], cfg)
        elif cfg is None:
            raise ValueError("a config is needed to start a run (cfg=None is only valid with resume=True)")
        elif (self.run_dir / runs.CHECKPOINT_NAME).exists():
            raise FileExistsError(f"{self.run_dir} already holds a checkpoint; resume it (--resume) or choose "
                                  "another --out")
        self.cfg = validate_config(cfg)
        tcfg = self.cfg["training"]
        self.dist = init_distributed(default_device(device).type)
        self.device = process_device(default_device(device), self.dist.local_rank if self.dist.enabled else None)
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

        self.train_set, self.val_set = runs.load_datasets(self.cfg, data_root)
        runs.check_dataset_matches(self.cfg, self.train_set, state.get("meta") if state is not None else None)
        global_batch = tcfg["batch_size"]
        if global_batch % self.dist.world_size:
            raise ConfigError(f"training.batch_size {global_batch} must be divisible by the number of processes "
                              f"{self.dist.world_size}")
        self.batch_size = global_batch // self.dist.world_size
        self.n_batches = math.ceil(math.ceil(len(self.train_set) / self.dist.world_size) / self.batch_size)
        self.n_epochs, self.total_iterations = run_length(tcfg, self.n_batches)

        self.meta = {"img_size": [int(s) for s in self.train_set.img_size],
                     "n_channels": int(self.train_set.n_channels),
                     "n_classes": getattr(self.train_set, "n_classes", None)}
        init = None if state is not None else runs.init_images(self.cfg, self.train_set)
        self.model = build_model(self.cfg, tuple(self.meta["img_size"]), self.meta["n_channels"], init).to(self.device)
        if self.amp == "bf16":
            autocast_encoder(self.model, self.device.type)
        lr_factor = lr_scale_factor(global_batch, tcfg["lr_reference_batch_size"], tcfg["lr_scaling"])
        self.optimizer = build_optimizer(self.model, tcfg["optimizer"], lr_factor)
        # Torch's fused Adam skips a step whose `found_inf` is set, on the device: a NaN loss then leaves the
        # weights as they were, without the step reading the loss back to the host.
        self.skips_non_finite_steps = bool(self.optimizer.defaults.get("fused"))
        self.scheduler, self.update_range = build_scheduler(self.optimizer, tcfg["scheduler"], self.n_epochs,
                                                            self.total_iterations)

        self.epoch, self.batch, self.iteration = 0, 0, 0
        self.meter = StepMeter(self.device)
        self.watch = DivergenceWatch(self.device)
        self.prop_sum: Optional[torch.Tensor] = None
        self.prop_steps = 0
        self.last_checkpoint_iteration: Optional[int] = None
        self.last_train_loss = math.nan
        self.log = runs.RunLog(self.run_dir, self.dist.is_main, tcfg["tensorboard"],
                               int(state["progress"].get("iteration") or 0) if state is not None else 0)
        if state is not None:
            self._load_state(state)
        elif self.dist.is_main:
            (self.run_dir / runs.CONFIG_NAME).write_text(yaml.safe_dump(self.cfg, sort_keys=False))
        self.forward_model = self._wrap(self.model, tcfg["compile"])
        self.progress = progress
        self._train_loader: Optional[DataLoader] = None
        self._sampler: Optional[EpochSampler] = None
        self.checkpoint_interval = tcfg["checkpoint_interval"] or tcfg["val_stat_interval"]
        self.log.message(f"run {self.run_dir}: {len(self.train_set)} train / {len(self.val_set)} val images, "
                         f"{self.n_epochs} epochs of {self.n_batches} batches ({self.total_iterations} iterations), "
                         f"batch {global_batch} over {self.dist.world_size} process(es), device {self.device}, "
                         f"lr factor {lr_factor:g}, amp {self.amp}, compile {tcfg['compile']}")

    def _wrap(self, model: torch.nn.Module, compile_opt: Any) -> torch.nn.Module:
        """The module a step calls: DDP around the model in a data-parallel run, then torch.compile if asked."""
        if self.dist.enabled:
            # Curriculum modules not yet active and frozen sprites get no gradient in some steps.
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        if compile_opt:
            # Compiling the DDP wrapper (not the reverse) lets dynamo split graphs at DDP's buckets.
            model = torch.compile(model, backend=compile_opt if isinstance(compile_opt, str) else "inductor")
        return model

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
        self.model.load_state_dict(state["model"])  # the curriculum follows the loaded epoch counter
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
            self.log.truncate(self.iteration)
        else:
            # A model-only checkpoint (e.g. `dtifast import-upstream`): fresh optimizer, schedule caught up.
            self.batch = 0
            self.iteration = self.epoch * self.n_batches
            with warnings.catch_warnings():
                # Catching up on steps already taken: torch's "step before optimizer.step()" warning does not apply.
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(self.epoch if self.update_range == "epoch" else self.iteration):
                    self.scheduler.step()
        self.last_checkpoint_iteration = self.iteration
        self.log.message(f"resumed at epoch {self.epoch}, batch {self.batch}, iteration {self.iteration} "
                         f"({state.get('kind', 'model')} checkpoint)")

    def _last_good(self) -> str:
        path = self.run_dir / runs.CHECKPOINT_NAME
        if self.last_checkpoint_iteration is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is {path} (iteration {self.last_checkpoint_iteration})"

    def _stop_if_diverged(self) -> None:
        """Raise :class:`TrainingDivergedError` if a step since the start had a non-finite loss (a host read:
        called at logging points, validation and checkpoints only)."""
        bad = self.watch.first()
        if bad is None:
            return
        iteration, loss = bad
        epoch, batch = divmod(iteration - 1, self.n_batches)
        raise TrainingDivergedError(
            f"non-finite loss ({loss}) at iteration {iteration} (epoch {epoch + 1}, batch {batch + 1}); training "
            f"stopped at iteration {self.iteration}, {self._last_good()}. Lower the learning rate or use float32 "
            "and resume or restart.")

    def save_checkpoint(self) -> pathlib.Path:
        """Write ``checkpoint.pt`` atomically (main process only), refusing to save after a non-finite loss
        or with non-finite weights."""
        self._stop_if_diverged()
        path = self.run_dir / runs.CHECKPOINT_NAME
        bad = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            raise TrainingDivergedError(f"parameters {bad[:5]} hold NaN or inf at iteration {self.iteration}; not "
                                        f"overwriting the checkpoint: {self._last_good()}")
        if self.dist.is_main:
            ckpt.save_checkpoint(path, self.state_dict())
        self.last_checkpoint_iteration = self.iteration
        return path

    # -- one step --------------------------------------------------------------------------------------

    def _train_step(self, images: torch.Tensor) -> None:
        """Forward, backward and update on one batch, with no device-to-host read."""
        start = time.perf_counter()
        self.model.train()
        images = images.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        out = self.forward_model(images)
        loss = out.loss.float()
        bad = self.watch.record(loss.detach(), self.iteration, self.dist.enabled)
        loss.backward()
        if self.skips_non_finite_steps:
            self.optimizer.found_inf = bad
        self.optimizer.step()
        props = self.model.cluster_proportions(out).detach().to(torch.float64)
        self.prop_sum = props if self.prop_sum is None else self.prop_sum + props
        self.prop_steps += 1
        self.meter.loss += loss.detach().double()
        self.meter.steps += 1
        self.meter.images += images.shape[0]
        self.meter.seconds += time.perf_counter() - start

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
            self.log.message(f"iteration {self.iteration}: reassigned sprites {reassigned} from sprite {idx}{where}")
            if self.dist.enabled:
                # Ranks decide alike (same proportions and RNG); broadcasting makes sure weights stay equal.
                for t in self.model.state_dict().values():
                    dist.broadcast(t, 0)
        self.prop_sum, self.prop_steps = None, 0

    def _log_train(self) -> None:
        self._stop_if_diverged()
        if self.meter.steps == 0:
            return
        waited = time.perf_counter()
        _synchronize(self.device)  # the steps' queued work belongs to their time
        self.meter.seconds += time.perf_counter() - waited
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        row = {"iteration": self.iteration, "epoch": self.epoch + 1, "batch": self.batch,
               "loss": float(self.meter.loss) / self.meter.steps,
               "time_per_img": self.meter.seconds / max(self.meter.images, 1),
               "lr_cluster": lrs[0], "lr_network": lrs[-1]}
        self.log.row(runs.TRAIN_LOG, row, TRAIN_COLUMNS)
        self.log.scalars("train", {"loss": row["loss"], "time_per_img": row["time_per_img"]}, self.iteration)
        self.log.scalars("lr", {"cluster": lrs[0], "network": lrs[-1]}, self.iteration)
        self.last_train_loss = row["loss"]
        self.meter.reset()

    def validate(self) -> dict[str, float]:
        """Loss and scores on the validation images (all processes compute them; only the main one logs)."""
        self._stop_if_diverged()
        torch_state = torch.get_rng_state()  # validation draws no random numbers, but keep the stream intact
        scores = evaluate_model(self.model, self.val_set, batch_size=self.batch_size, device=self.device, workers=0)
        torch.set_rng_state(torch_state)
        values = {k: v for k, v in scores.items() if isinstance(v, (int, float))}
        self.log.row(runs.VAL_LOG, {"iteration": self.iteration, "epoch": self.epoch + 1, **values})
        self.log.scalars("val", values, self.iteration)
        if self.log.tb is not None:
            grid = sprite_grid(self.model.prototypes, self.model.masks)
            self.log.tb.add_image("sprites", np.asarray(grid), self.iteration, dataformats="HWC")
        shown = ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        self.log.message(f"val {shown} (iteration {self.iteration})")
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
            ``seconds``, ``checkpoint`` (path) and ``finished``.

        Raises:
            TrainingDivergedError: the loss became NaN/inf; the checkpoint on disk is the last good one.
        """
        tcfg = self.cfg["training"]
        end = self.total_iterations if stop_at is None else min(stop_at, self.total_iterations)
        start_time = time.perf_counter()
        # disable=None lets tqdm show the bar only on a terminal.
        disable = True if not self.dist.is_main or self.progress is False else (
            None if self.progress is None else False)
        bar = tqdm(total=self.total_iterations, initial=self.iteration, unit="it", dynamic_ncols=True, disable=disable)
        try:
            while self.iteration < end:
                for images, _ in self._loader(self.epoch, self.batch):
                    self.batch += 1
                    self.iteration += 1
                    self._train_step(images)
                    bar.update(1)
                    if self.update_range == "batch":
                        self.scheduler.step()
                    if self.iteration % tcfg["train_stat_interval"] == 0 or self.iteration == self.total_iterations:
                        self._log_train()
                        bar.set_postfix(epoch=self.epoch + 1, loss=f"{self.last_train_loss:.4g}", refresh=False)
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
        path = self.save_checkpoint()
        if self.meter.steps:  # a stop_at pause keeps its partial window for the resumed run to log
            self.last_train_loss = float(self.meter.loss) / self.meter.steps
        seconds = time.perf_counter() - start_time
        self.log.message(f"stopped at iteration {self.iteration}/{self.total_iterations} (epoch {self.epoch}) after "
                         f"{seconds:.1f}s; checkpoint {path}")
        return {"iteration": self.iteration, "epoch": self.epoch, "loss": self.last_train_loss,
                "seconds": seconds, "checkpoint": str(path), "finished": finished}

    def _end_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        was_frozen = self.model.are_sprites_frozen
        self.model.step_epoch()
        if was_frozen and not self.model.are_sprites_frozen:
            self.log.message(f"epoch {self.epoch}: sprites unfrozen")
        if self.update_range == "epoch":
            before = [g["lr"] for g in self.optimizer.param_groups]
            self.scheduler.step()
            after = [g["lr"] for g in self.optimizer.param_groups]
            if after != before:
                self.log.message(f"epoch {self.epoch}: learning rates {before} -> {after}")

    def close(self) -> None:
        """Release the TensorBoard writer."""
        self.log.close()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
