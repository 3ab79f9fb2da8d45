"""``make_loader``: a DataLoader tuned for the in-memory datasets."""
from __future__ import annotations

from typing import Optional

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from .make import default_workers


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, workers: Optional[int] = None,
                drop_last: bool = False, seed: int = 0, pin_memory: Optional[bool] = None) -> DataLoader:
    """A DataLoader over ``dataset``.

    Datasets with a ``get_batch(indices)`` method (the cached multi-object and folder datasets) are read
    one batch at a time (one indexed copy per array instead of B items then a stack): the sampler
    yields index lists and the dataset returns the batch.

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
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    if hasattr(dataset, "get_batch"):
        base = RandomSampler(dataset, generator=gen) if shuffle else SequentialSampler(dataset)
        sampler = BatchSampler(base, batch_size, drop_last)
        return DataLoader(_Batched(dataset), batch_size=None, sampler=sampler, num_workers=workers,
                          pin_memory=pin, **extra)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, drop_last=drop_last,
                      generator=gen, pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                      **extra)


__all__ = ["make_loader"]


class _Batched(Dataset):
    """Indexed by a list of indices: ``dataset.get_batch(indices)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices):
        return self.dataset.get_batch(indices)
