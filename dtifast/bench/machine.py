"""What a benchmark figure needs besides the figure: the machine, a timer and a peak-memory probe.

Timing: ``warmup`` untimed calls, then ``repeats`` timed ones; the median is the figure, the 20th and
80th percentiles show the spread (Liger's p50/p20/p80). On CUDA each call is bracketed by CUDA events
after a synchronisation; on the CPU by ``time.perf_counter``. Functions that are compared with each other
can be timed in turn, call by call (:func:`time_interleaved`), so that load from other jobs falls on all.

Peak memory:

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` — the caching
  allocator's view, tensors only (no CUDA context, no cached-but-free blocks).
* CPU: growth of the process's peak resident set size (``VmHWM`` in ``/proc/self/status``) over the
  resident size just before the call. Free heap pages are first given back to the OS
  (``malloc_trim``) and the high-water mark is reset (``echo 5 > /proc/self/clear_refs``), so the
  growth counts what the call itself touched. Linux only; elsewhere the probe reports None.
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

import torch

from ..allocator import c_library


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info(device: torch.device) -> dict[str, Any]:
    """The machine a figure comes from; stored in every JSON row so that rows can be compared safely."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
        "value_checks": _value_checks_enabled(),
        "commit": _git_commit(),
        # Other processes share the CPU on small machines: the load says how much to trust a figure.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_memory_bytes"] = int(props.total_memory)
        info["cuda"] = torch.version.cuda
    return info


def _value_checks_enabled() -> bool:
    from dtifast.ops import value_checks_enabled
    return value_checks_enabled()


@contextlib.contextmanager
def bench_settings(threads: Optional[int], value_checks: bool) -> Iterator[None]:
    """Torch's CPU threads (None: unchanged) and the ops' value checks for a run, restored after it."""
    from dtifast.ops import value_checks as checks
    old_threads = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        with checks(value_checks):
            yield
    finally:
        torch.set_num_threads(old_threads)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Seconds per call: median and the 20th / 80th percentiles over ``repeats`` calls."""
    median: float
    p20: float
    p80: float
    repeats: int

    def as_dict(self) -> dict[str, float]:
        return {"median_s": self.median, "p20_s": self.p20, "p80_s": self.p80, "repeats": self.repeats}


def _quantile(sorted_values: list[float], q: float) -> float:
    # Linear interpolation between order statistics (numpy's default), without numpy.
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _timed_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``fn``, its device work included."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    fn()
    return time.perf_counter() - start_s


def _timing(times: list[float]) -> Timing:
    times = sorted(times)
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), len(times))


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 1, repeats: int = 5,
              min_time_s: float = 0.0, max_repeats: int = 1000) -> Timing:
    """Time ``fn()`` (which must do the whole unit of work, e.g. forward and backward).

    At least ``repeats`` timed calls, and more while their total is under ``min_time_s`` (up to
    ``max_repeats``): on a shared machine a fast op gets preempted in some calls, and the median of
    many calls is robust to that where the median of three is not.
    """
    return time_interleaved({"fn": fn}, device, warmup, repeats, min_time_s, max_repeats)["fn"]


def time_interleaved(fns: Mapping[str, Callable[[], Any]], device: torch.device, warmup: int = 1,
                     repeats: int = 5, min_time_s: float = 0.0, max_repeats: int = 1000) -> dict[str, Timing]:
    """Time several functions call by call in turn, for comparing them on a shared machine.

    Each round calls every function once; the next round starts with the next function. A burst of load
    from other jobs then slows every column alike, where timing one function's calls after the other's
    puts the whole burst into one column (single ratios moved by up to 2x that way on the 2-core box).
    Rounds go on until every function has ``repeats`` calls and the slowest one's total has reached
    ``min_time_s`` (or ``max_repeats`` rounds are done); every function gets the same number of calls.

    Returns:
        ``{name: Timing}`` for every name of ``fns``.
    """
    if repeats < 1 or warmup < 0 or max_repeats < repeats:
        raise ValueError(f"need repeats >= 1, warmup >= 0 and max_repeats >= repeats, got repeats={repeats}, "
                         f"warmup={warmup}, max_repeats={max_repeats}")
    if not fns:
        raise ValueError("fns is empty: nothing to time")
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds = 0
    while rounds < repeats or (max(sum(t) for t in times.values()) < min_time_s and rounds < max_repeats):
        for i in range(len(names)):
            name = names[(rounds + i) % len(names)]
            times[name].append(_timed_call(fns[name], device))
        rounds += 1
    return {name: _timing(times[name]) for name in names}


def _proc_status_bytes(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    libc = c_library()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def cpu_peak_probe_available() -> bool:
    """Whether the peak-RSS probe works here (Linux with a writable ``/proc/self/clear_refs``)."""
    return _proc_status_bytes("VmHWM") is not None and _reset_rss_peak()


def peak_memory(fn: Callable[[], Any], device: torch.device) -> Optional[dict[str, int]]:
    """Run ``fn()`` once and return its peak memory, or None where the probe is unavailable.

    Returns:
        ``{"peak_bytes", "growth_bytes"}``: on CUDA the allocator's peak and its growth over what was
        allocated before the call; on the CPU the peak resident set size and its growth over the
        resident size before the call.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_bytes": int(peak), "growth_bytes": int(peak - before)}
    _malloc_trim()
    before = _proc_status_bytes("VmRSS")
    if before is None or not _reset_rss_peak():
        return None
    fn()
    peak = _proc_status_bytes("VmHWM")
    if peak is None:
        return None
    return {"peak_bytes": int(peak), "growth_bytes": int(max(peak - before, 0))}
