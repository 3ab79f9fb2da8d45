"""Training-step benchmarks: images/s, peak memory and the largest batch under a memory budget.

A training step is what :class:`dtifast.train.Trainer` does per batch: zero the gradients, forward
(encoder, heads, sprite transforms, greedy selection, render loss), backward, Adam step. The model
is set to its config's last epoch, so that every curriculum module is active and the sprites are
trainable: the most expensive step of the schedule. Images are uniform noise: the cost of a step
does not depend on what the images show (every candidate is scored either way).

Providers:

* ``torch`` — the eager reference ops: the upstream-semantics baseline;
* ``torch.compile`` — ``torch.compile`` of that same model (the second baseline);
* every other backend of :data:`dtifast.ops.BACKENDS`, chosen explicitly (a backend that lacks an op
  the model calls is reported as skipped, with the missing op);
* ``default`` — no backend named: per op, the device's default backend where it implements the op,
  else the reference. Listed only when that mix differs from every explicit backend (on CUDA while
  a Triton or CUDA kernel is missing; on the CPU the C++ backend covers every op).
"""
from __future__ import annotations

import gc
import time
from typing import Any, Mapping, Optional

import torch

from dtifast import ops
from dtifast.config import load_config
from dtifast.model import build_model
from dtifast.optim import build_optimizer

from .ops import C, COMPILE, OP_CASES, Skip, check_timeable, image_size

DEFAULT = "default"
N_INIT_IMAGES = 8


def default_mix(device: torch.device) -> dict[str, str]:
    """The backend that each op resolves to when none is named, on ``device``."""
    mix = {}
    for op in OP_CASES:
        try:
            mix[op] = ops.resolve(op, None, device)[0]
        except Exception as err:  # noqa: BLE001 - a broken backend is reported, not fatal to the report
            mix[op] = f"error: {type(err).__name__}: {err}"
    return mix


def last_epoch(cfg: Mapping[str, Any]) -> int:
    """The config's last epoch (0-based): every curriculum module active, sprites trainable."""
    return int(cfg["training"].get("n_epoches") or 1) - 1


def train_providers(device: torch.device, with_compile: bool = True) -> list[str]:
    """Providers for the training step on ``device`` (see the module docstring)."""
    names = ["torch"] + ([COMPILE] if with_compile else []) + [b for b in ops.BACKENDS if b != "torch"]
    if len(set(default_mix(device).values())) > 1:
        names.append(DEFAULT)
    return names


class TrainStep:
    """One config's model, optimizer and a batch of images, ready to run training steps.

    Args:
        config: bundled config name or YAML path.
        provider: see the module docstring.
        batch: images per step.
        device: where to run.
        seed: seeds the model's initialisation and the images.

    Raises:
        Skip: the provider cannot run this model here (a backend that lacks an op, a device it does not
            run on, a model that ``torch.compile`` cannot compile).
    """

    def __init__(self, config: str, provider: str, batch: int, device: torch.device, seed: int = 0):
        cfg = load_config(config)
        if provider not in (COMPILE, DEFAULT) and provider not in ops.BACKENDS:
            raise ValueError(f"provider must be one of {(*ops.BACKENDS, COMPILE, DEFAULT)}, got {provider!r}")
        check_timeable(provider, device)
        cfg["model"]["backend"] = {COMPILE: "torch", DEFAULT: None}.get(provider, provider)
        self.config, self.provider, self.device = config, provider, device
        H, W = self.img_size = image_size(cfg)
        self.n_channels = C
        self.generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        init = torch.rand(N_INIT_IMAGES, self.n_channels, H, W, generator=self.generator)
        self.model = build_model(cfg, self.img_size, self.n_channels, init_images=init).to(device)
        self.epoch = last_epoch(cfg)
        self.model.set_epoch(self.epoch)
        self.model.train()
        self.optimizer = build_optimizer(self.model, cfg["training"]["optimizer"])
        self.forward = torch.compile(self.model) if provider == COMPILE else self.model
        self.x: Optional[torch.Tensor] = None
        self.set_batch(batch)

    def set_batch(self, batch: int) -> None:
        """Use a new batch of ``batch`` images from now on."""
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        self.x = None  # free the old batch first: the max-batch search runs close to the budget
        self.batch = batch
        self.x = torch.rand(batch, self.n_channels, *self.img_size, generator=self.generator).to(self.device)

    def __call__(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        out = self.forward(self.x)
        out.loss.backward()
        self.optimizer.step()
        return out.loss.detach()

    def check(self) -> None:
        """Run one step, turning a provider's inability to run into :class:`Skip`."""
        try:
            self()
        except ops.BackendError as err:
            raise Skip(str(err)) from None
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - compile failures come as many exception types
            if self.provider != COMPILE:
                raise
            raise Skip(f"torch.compile failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}") from None


# ----------------------------------------------------------------------------------------------------
# The largest batch under a memory budget
# ----------------------------------------------------------------------------------------------------

def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fits(step: TrainStep, batch: int) -> bool:
    try:
        step.set_batch(batch)
        step()
        ok = True
    except torch.cuda.OutOfMemoryError:
        ok = False
    # Outside the except block, so that the exception's frames (holding activations) are gone.
    if not ok:
        step.x = None
        step.optimizer.zero_grad(set_to_none=True)
    _release(step.device)
    return ok


def max_batch_cuda(step: TrainStep, budget_bytes: int, start: int = 32, cap: int = 16384,
                   time_limit_s: float = 60.0) -> dict[str, Any]:
    """Largest batch whose training step fits ``budget_bytes`` of CUDA memory (this process's cap).

    The cap is ``torch.cuda.set_per_process_memory_fraction(budget / device memory)``: the caching
    allocator raises an out-of-memory error past it (the CUDA context itself is not counted). The
    search doubles from ``start`` until a step fails or ``cap`` fits, then bisects until the bracket is
    within 1/16 of its lower end or ``time_limit_s`` is spent.

    Returns:
        dict with ``max_batch`` (largest batch that ran), ``first_failing`` (smallest that did not, or
        None when ``cap`` fit), ``budget_bytes``, ``trials`` and ``seconds``.
    """
    device = step.device
    if device.type != "cuda":
        raise ValueError(f"max_batch_cuda needs a CUDA step, got device {device}")
    total = torch.cuda.get_device_properties(device).total_memory
    if budget_bytes > total:
        raise ValueError(f"budget {budget_bytes / 2**30:.1f} GiB exceeds the device's {total / 2**30:.1f} GiB")
    start_time = time.perf_counter()
    _release(device)
    torch.cuda.set_per_process_memory_fraction(budget_bytes / total, device)
    trials: list[tuple[int, bool]] = []
    lo, hi = 0, None
    try:
        batch = start
        while time.perf_counter() - start_time < time_limit_s:
            ok = _fits(step, batch)
            trials.append((batch, ok))
            if not ok:
                hi = batch
                break
            lo = batch
            if batch >= cap:
                break
            batch = min(batch * 2, cap)
        while hi is not None and hi - lo > max(1, lo // 16) and time.perf_counter() - start_time < time_limit_s:
            mid = (lo + hi) // 2
            ok = _fits(step, mid)
            trials.append((mid, ok))
            lo, hi = (mid, hi) if ok else (lo, mid)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        step.x = None
        _release(device)
    return {"max_batch": lo, "first_failing": hi, "budget_bytes": int(budget_bytes), "trials": trials,
            "seconds": time.perf_counter() - start_time}


def max_batch_from_growth(points: list[tuple[int, int]], budget_bytes: int) -> dict[str, Any]:
    """Extrapolate the largest batch under ``budget_bytes`` from peak memory at two or more batches.

    A least-squares line ``peak(b) = base + per_image · b`` through ``(batch, peak_bytes)`` points; the
    estimate is ``(budget − base) / per_image``. This is what the CPU gets instead of a search (no
    per-process cap to run against): a linear model, reported as an estimate.
    """
    if len(points) < 2 or len({b for b, _ in points}) < 2:
        raise ValueError(f"need peaks at two or more different batch sizes, got {points}")
    n = len(points)
    mean_b = sum(b for b, _ in points) / n
    mean_p = sum(p for _, p in points) / n
    var = sum((b - mean_b) ** 2 for b, _ in points)
    per_image = sum((b - mean_b) * (p - mean_p) for b, p in points) / var
    base = mean_p - per_image * mean_b
    estimate = int((budget_bytes - base) // per_image) if per_image > 0 else None
    return {"per_image_bytes": per_image, "base_bytes": base, "max_batch_estimate": estimate,
            "budget_bytes": int(budget_bytes), "points": points}
