"""Step statistics kept on the device between logging points, so that a training step reads nothing back
to the host: the running loss sum and the first non-finite loss (see :class:`dtifast.train.Trainer`)."""
from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.distributed as dist

__all__ = ["StepMeter", "DivergenceWatch"]


class StepMeter:
    """Sums between two log rows, the loss on the device (read at logging points only); saved in checkpoints
    so that the logs resume exactly too."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self.steps, self.images, self.seconds = 0, 0, 0.0

    def state(self) -> dict[str, float]:
        return {"loss": float(self.loss), "steps": self.steps, "images": self.images, "seconds": self.seconds}

    def load(self, state: Mapping[str, float]) -> None:
        self.loss = torch.tensor(float(state["loss"]), dtype=torch.float64, device=self.device)
        self.steps, self.images, self.seconds = int(state["steps"]), int(state["images"]), float(state["seconds"])


class DivergenceWatch:
    """The first iteration whose loss was not finite, and that loss, kept on the device (no host read per step)."""

    def __init__(self, device: torch.device) -> None:
        self.iteration = torch.full((), -1, dtype=torch.long, device=device)
        self.loss = torch.zeros((), dtype=torch.float32, device=device)

    def record(self, loss: torch.Tensor, iteration: int, dist_enabled: bool) -> torch.Tensor:
        """Note ``iteration``'s loss; returns its non-finite flag (float 0/1 on the device), agreed by every rank."""
        bad = (~torch.isfinite(loss)).float()
        if dist_enabled:
            # Every rank must skip (and later stop) together, else the others wait forever in a collective.
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        first = (bad > 0) & (self.iteration < 0)
        self.iteration = torch.where(first, iteration, self.iteration)
        self.loss = torch.where(first, loss, self.loss)
        return bad

    def first(self) -> Optional[tuple[int, float]]:
        """``(iteration, loss)`` of the first non-finite loss, or None (reads the device)."""
        iteration = int(self.iteration)
        return None if iteration < 0 else (iteration, float(self.loss))
