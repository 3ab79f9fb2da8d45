"""``make_loader``: a DataLoader tuned for the in-memory datasets."""
from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset

from .make import default_workers


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: Optional[int] = None,
                drop_last: bool = False, seed: int = 0, pin_memory: Optional[bool] = None) -> DataLoader:
    """A DataLoader over ``dataset``.

    Args:
        dataset: any map-style dataset (e.g. from :func:`dtifast.data.build_dataset`).
        batch_size: images per batch.
        shuffle: reshuffle every epoch (order drawn from a generator seeded with ``seed``).
        workers: worker processes (default ``min(4, usable CPUs - 1)``; 0 = in this process). Workers are
            persistent and prefetch 4 batches each.
        drop_last: drop the last incomplete batch.
        seed: seeds the shuffling generator.
        pin_memory: default: when CUDA is available.

    Returns:
        A DataLoader yielding ``(images (B, C, H, W), targets)``.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if workers is None:
        workers = min(4, max(0, default_workers() - 1))
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    gen = torch.Generator().manual_seed(int(seed))
    extra = {"persistent_workers": True, "prefetch_factor": 4} if workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, drop_last=drop_last,
                      generator=gen, pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                      **extra)


__all__ = ["make_loader"]
