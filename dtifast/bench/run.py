"""Run the report's sections and return JSON-ready rows.

Every row carries ``section`` (``op`` / ``train`` / ``max_batch`` / ``memory_estimate``), ``provider``,
``status`` and the machine (:func:`dtifast.bench.machine.machine_info`); ``status`` is ``ok``,
``skipped`` (the provider cannot run the case here; ``reason`` says why), ``oom`` (out of device memory:
a result, not a failure) or ``error`` (anything else; ``reason`` holds the exception, and the command
exits non-zero).
A :class:`Budget` bounds the wall time: once spent, the remaining cases are rows skipped for time, so
that the GPU script's few minutes are never overrun.
"""
from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from .machine import peak_memory, time_call
from .memory import FakeTrainingStep
from .ops import COMPILE, OP_CASES, Skip, prepare, shapes_for
from .train_step import TrainStep, max_batch_cuda, max_batch_from_growth


@dataclass
class Budget:
    """Wall-clock allowance for a whole report (None: unlimited), with per-section deadlines."""
    seconds: Optional[float] = None
    start: float = field(default_factory=time.perf_counter)
    share: float = 1.0

    def until(self, share: float) -> None:
        """From now on, cases must start before ``share`` of the allowance has passed."""
        self.share = share

    def spent(self) -> bool:
        return self.seconds is not None and time.perf_counter() - self.start > self.share * self.seconds

    def reason(self) -> str:
        return f"time budget spent ({self.share:.0%} of {self.seconds:g} s for the sections so far)"


def _guarded(row: dict[str, Any], work: Callable[[], dict[str, Any]], budget: Budget,
             log: Callable[[str], None]) -> dict[str, Any]:
    """Run ``work`` for ``row`` and fold its result, skip, OOM or error into the row."""
    if budget.spent():
        return {**row, "status": "skipped", "reason": budget.reason()}
    start = time.perf_counter()
    try:
        result = {**row, "status": "ok", **work()}
    except Skip as err:
        result = {**row, "status": "skipped", "reason": str(err)}
    except torch.cuda.OutOfMemoryError as err:
        result = {**row, "status": "oom", "reason": str(err).splitlines()[0][:300]}
    except Exception as err:  # noqa: BLE001 - one broken case must not lose the rest of the report
        traceback.print_exc(file=sys.stderr)
        result = {**row, "status": "error", "reason": f"{type(err).__name__}: {err}"[:500]}
    if result["status"] == "oom" and row.get("device", "").startswith("cuda"):
        torch.cuda.empty_cache()
    label = " ".join(str(row[k]) for k in ("section", "config", "op", "mode", "batch", "provider") if k in row)
    shown = result["status"] if result["status"] != "ok" else _short(result)
    log(f"{label}: {shown} ({time.perf_counter() - start:.1f} s)")
    return result


def _short(row: dict[str, Any]) -> str:
    if row["section"] == "memory_estimate":
        return f"estimated peak {row['peak_bytes'] / 2**20:.0f} MiB, largest batch {row['max_batch']}"
    if "images_per_s" in row:
        return f"{row['images_per_s']:.1f} images/s"
    if "median_s" in row:
        return f"{row['median_s'] * 1e3:.3f} ms"
    if "max_batch" in row:
        return f"max batch {row['max_batch']}"
    return "ok"


def run_ops(configs: Sequence[str], batch: int, providers: Sequence[str], device: torch.device,
            machine: dict[str, Any], budget: Budget, repeats: int, warmup: int,
            log: Callable[[str], None], ops_filter: Optional[Sequence[str]] = None,
            compile_configs: Optional[Sequence[str]] = None, min_time_s: float = 0.0) -> list[dict[str, Any]]:
    """Time every op that a config's training step runs, for every provider and mode.

    ``compile_configs``: shape sets that get the ``torch.compile`` provider (None: all);
    ``min_time_s``: keep timing a case until this much time is spent (see :func:`time_call`).
    """
    rows = []
    for config in configs:
        shapes = shapes_for(config, batch)
        for case in OP_CASES.values():
            if not case.applies(shapes) or (ops_filter and case.op not in ops_filter):
                continue
            for mode in case.modes:
                for provider in providers:
                    row = {"section": "op", "op": case.op, "config": config, "batch": batch, "mode": mode,
                           "shapes": shapes.describe(), "provider": provider, "device": str(device),
                           "machine": machine}
                    if provider == COMPILE and compile_configs is not None and config not in compile_configs:
                        rows.append({**row, "status": "skipped", "reason": _compile_reason(compile_configs)})
                        continue

                    def work(case=case, mode=mode, provider=provider) -> dict[str, Any]:
                        runner, moved = prepare(case, shapes, provider, device, mode)
                        timing = time_call(runner, device, warmup=warmup, repeats=repeats, min_time_s=min_time_s)
                        memory = peak_memory(runner, device)
                        return {**timing.as_dict(), "bytes": moved, "gbps": moved / timing.median / 1e9,
                                **(memory or {})}
                    rows.append(_guarded(row, work, budget, log))
    return rows


def _compile_reason(cases: Sequence[Any]) -> str:
    shown = ", ".join(c if isinstance(c, str) else f"{c[0]} B={c[1]}" for c in cases)
    return f"torch.compile runs only for {shown} in this report (each compilation takes seconds to minutes)"


def run_train(configs: Sequence[str], batches: dict[str, Sequence[int]], providers: Sequence[str],
              device: torch.device, machine: dict[str, Any], budget: Budget, repeats: int,
              log: Callable[[str], None], compile_cases: Optional[Sequence[tuple[str, int]]] = None,
              min_time_s: float = 0.0) -> list[dict[str, Any]]:
    """Images/s and peak memory of a full training step, per config, provider and batch size.

    Args:
        batches: batch sizes per config; the i-th batch of every config runs before the (i+1)-th of any.
        compile_cases: ``(config, batch)`` pairs for which ``torch.compile`` runs (None: all).
        min_time_s: keep timing a case until this much time is spent (see :func:`time_call`).
    """
    order = sorted(((i, j, config, batch) for j, config in enumerate(configs)
                    for i, batch in enumerate(batches[config])))
    rows = []
    for _, _, config, batch in order:
        for provider in providers:
            row = {"section": "train", "config": config, "batch": batch, "provider": provider,
                   "device": str(device), "machine": machine}
            if provider == COMPILE and compile_cases is not None and (config, batch) not in compile_cases:
                rows.append({**row, "status": "skipped", "reason": _compile_reason(compile_cases)})
                continue

            def work(config=config, batch=batch, provider=provider) -> dict[str, Any]:
                step = TrainStep(config, provider, batch, device)
                step.check()
                timing = time_call(step, device, warmup=1, repeats=repeats, min_time_s=min_time_s)
                memory = peak_memory(step, device)
                return {**timing.as_dict(), "images_per_s": batch / timing.median, "epoch": step.epoch,
                        **(memory or {})}
            rows.append(_guarded(row, work, budget, log))
    return rows


def run_max_batch(configs: Sequence[str], providers: Sequence[str], device: torch.device,
                  machine: dict[str, Any], budget: Budget, budget_bytes: int, log: Callable[[str], None],
                  cpu_batches: Sequence[int] = (2, 8), search_time_s: float = 60.0) -> list[dict[str, Any]]:
    """Largest batch under ``budget_bytes``: a search under a memory cap on CUDA, an estimate on the CPU."""
    rows = []
    for config in configs:
        for provider in providers:
            row = {"section": "max_batch", "config": config, "provider": provider, "device": str(device),
                   "machine": machine}

            def work(config=config, provider=provider) -> dict[str, Any]:
                step = TrainStep(config, provider, cpu_batches[0], device)
                step.check()
                if device.type == "cuda":
                    return {"method": "cuda-cap-search",
                            **max_batch_cuda(step, budget_bytes, time_limit_s=search_time_s)}
                points = []
                for b in cpu_batches:
                    step.set_batch(b)
                    step()  # the first step at a new size allocates what later steps reuse
                    memory = peak_memory(step, device)
                    if memory is None:
                        raise Skip("no peak-RSS probe on this system (needs Linux /proc/self/clear_refs)")
                    points.append((b, memory["peak_bytes"]))
                estimate = max_batch_from_growth(points, budget_bytes)
                return {"method": "cpu-rss-extrapolation", "max_batch": estimate["max_batch_estimate"], **estimate}
            rows.append(_guarded(row, work, budget, log))
    return rows


def run_memory_estimate(configs: Sequence[str], batch: int, backends: Sequence[str], machine: dict[str, Any],
                        budget: Budget, budget_bytes: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Estimated device memory of a training step at ``batch`` and the largest batch under ``budget_bytes``,
    per config and backend, traced on fake tensors (:mod:`dtifast.bench.memory`): no device is used."""
    rows = []
    for config in configs:
        for backend in backends:
            row = {"section": "memory_estimate", "config": config, "batch": batch, "provider": backend,
                   "device": "cuda (estimate)", "machine": machine}

            def work(config=config, backend=backend) -> dict[str, Any]:
                step = FakeTrainingStep(config, backend=backend)
                estimate = step.estimate(batch)
                search = step.largest_batch(budget_bytes)
                return {"method": "fake-tensor trace", "traced_on": estimate.device, "epoch": step.epoch,
                        "peak_bytes": estimate.peak_bytes, "peak_phase": estimate.peak_phase,
                        "phase_peak_bytes": {k: v.peak_bytes for k, v in estimate.phases.items()},
                        "resident_bytes": estimate.resident_bytes, "at_peak_bytes": estimate.at_peak,
                        "top": [t.as_dict() for t in estimate.top], "estimate_seconds": estimate.seconds,
                        "max_batch": search.max_batch, "first_failing": search.first_failing,
                        "budget_bytes": search.budget_bytes, "trials": search.trials,
                        "search_seconds": search.seconds}
            rows.append(_guarded(row, work, budget, log))
    return rows
