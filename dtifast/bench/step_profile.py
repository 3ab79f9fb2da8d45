"""Where a training step's time goes: the encoder, dtifast's ops, the optimizer and the rest.

:func:`profile_step` runs training steps of a :class:`~dtifast.bench.train_step.TrainStep` under
``torch.profiler`` and adds up the self CPU time of every op it records, on the thread that runs the
step, into the part of the step that op belongs to:

* ``encoder``: the image encoder (the same torch code whatever the backend);
* ``ops``: the public ops of :mod:`dtifast.ops` that the model calls, whatever their backend (the ATen ops
  of the eager reference, or the fused kernels);
* ``optimizer``: ``Optimizer.zero_grad`` and ``Optimizer.step``, as torch's optimizers label them;
* ``other``: the step's wall time less the three parts: the transformation heads, the sprite bank, the
  loss's mean, the autograd engine's bookkeeping (including ``AccumulateGrad``), Python between ops and
  the profiler's own cost, which falls mostly here and on the parts with many small ops.

A part's forward is what runs inside a ``record_function`` range put around it for the profile; its
backward, the autograd nodes of the ops that ran in that range, matched by their sequence numbers. The
ranges are put in by wrapping the encoder's ``forward`` and the functions of :mod:`dtifast.ops` while the
steps run, so profile one step at a time, not from several threads.
"""
from __future__ import annotations

import contextlib
import functools
import time
from typing import Any, Callable, Iterator, Optional

from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, profile, record_function

from dtifast import ops

from .ops import COMPILE
from .train_step import TrainStep

PARTS = ("encoder", "ops", "optimizer", "other")
_LABELS = {"dtifast.profile.encoder": "encoder", "dtifast.profile.ops": "ops"}
_BACKWARD_NODE = "autograd::engine::evaluate_function: "


def _in_range(label: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with record_function(label):
            return fn(*args, **kwargs)
    return wrapped


@contextlib.contextmanager
def _labelled(step: TrainStep) -> Iterator[None]:
    """Put the step's encoder and every public op in their ranges for as long as the block runs."""
    encoder = step.model.encoder
    own_forward = encoder.__dict__.get("forward")  # an instance-level forward, e.g. autocast_encoder's
    encoder.forward = _in_range("dtifast.profile.encoder", encoder.forward)
    op_functions = {name: getattr(ops, name) for name in ops.registered_ops()}
    try:
        for name, fn in op_functions.items():
            setattr(ops, name, _in_range("dtifast.profile.ops", fn))
        yield
    finally:
        for name, fn in op_functions.items():
            setattr(ops, name, fn)
        if own_forward is None:
            del encoder.forward
        else:
            encoder.forward = own_forward


def _descendants(event: FunctionEvent) -> Iterator[FunctionEvent]:
    for child in event.cpu_children:
        yield child
        yield from _descendants(child)


def _attribute(events: list[FunctionEvent]) -> dict[str, float]:
    """Self CPU seconds of ``events`` per part (``encoder``, ``ops``, ``optimizer``; ``recorded``: all of
    them), counting the thread that ran the labelled ranges only (see the module docstring)."""
    ranges = [e for e in events if e.name in _LABELS]
    if not ranges:
        raise ValueError("no labelled range among the events: profile the steps inside _labelled()")
    thread = ranges[0].thread
    part_of_sequence: dict[int, str] = {}
    for r in ranges:
        for e in _descendants(r):
            if e.sequence_nr >= 0:
                part_of_sequence[e.sequence_nr] = _LABELS[r.name]

    def part(e: Optional[FunctionEvent]) -> Optional[str]:
        while e is not None:
            if e.name in _LABELS:
                return _LABELS[e.name]
            if e.name.startswith(_BACKWARD_NODE) and e.sequence_nr in part_of_sequence:
                return part_of_sequence[e.sequence_nr]
            if e.name.startswith("Optimizer."):
                return "optimizer"
            e = e.cpu_parent
        return None

    totals = dict.fromkeys(("encoder", "ops", "optimizer", "recorded"), 0.0)
    for e in events:
        if e.thread != thread or e.is_async:
            continue
        seconds = e.self_cpu_time_total * 1e-6
        totals["recorded"] += seconds
        name = part(e)
        if name is not None:
            totals[name] += seconds
    return totals


def profile_step(step: TrainStep, n_steps: int = 3, warmup: int = 1) -> dict[str, float]:
    """Seconds per training step, in total (``step``, wall time under the profiler) and per part.

    Args:
        step: an eager CPU step (any backend but ``torch.compile``, whose graph hides the ranges).
        n_steps: steps profiled; the figures are their mean.
        warmup: steps run first, unprofiled.

    Returns:
        ``{"step", "encoder", "ops", "optimizer", "other"}``; the four parts add up to ``step``.
    """
    if step.device.type != "cpu":
        raise ValueError(f"profile_step measures CPU time and needs a CPU step, got device {step.device}")
    if step.provider == COMPILE:
        raise ValueError("profile_step needs an eager step; torch.compile's graph hides the op ranges")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    for _ in range(warmup):
        step()
    with _labelled(step), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(n_steps):
            step()
        wall = time.perf_counter() - start
    totals = _attribute(list(prof.events()))
    out = {"step": wall / n_steps}
    for name in ("encoder", "ops", "optimizer"):
        out[name] = totals[name] / n_steps
    out["other"] = out["step"] - out["encoder"] - out["ops"] - out["optimizer"]
    return out
