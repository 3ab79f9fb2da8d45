"""Data-parallel training: where this process sits in a ``torchrun`` job, and the epoch sampler that
shards (and resumes) the data order."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["EpochSampler", "DistContext", "init_distributed", "default_device", "process_device"]


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


def default_device(device: Optional[str | torch.device]) -> torch.device:
    """``device`` as a torch.device; None: CUDA when available, else the CPU."""
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def process_device(device: torch.device, local_rank: Optional[int]) -> torch.device:
    """The device this process trains on: ``cuda:LOCAL_RANK`` in a data-parallel CUDA run."""
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    if local_rank is not None:
        device = torch.device("cuda", local_rank)
    if device.index is not None:
        torch.cuda.set_device(device)
    return device
