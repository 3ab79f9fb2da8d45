"""pytest-benchmark suites (``make bench`` = ``pytest -q benchmarks -p no:xdist --benchmark-only``).

The device is CUDA when torch sees one, else the CPU; ``DTIFAST_BENCH_DEVICE=cpu`` forces the CPU.
Without CUDA, Triton can only be imported in its interpreter, so TRITON_INTERPRET=1 is set before
anything imports it; interpreted Triton is then skipped (its timings mean nothing). The ops'
finite-value input check is off and the CPU runs one torch thread (``DTIFAST_BENCH_THREADS`` changes
it), as in ``dtifast bench`` (see docs/benchmarks.md).
"""
import os
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from dtifast.bench import DEVICE_DEFAULTS  # noqa: E402
from dtifast.bench.machine import machine_info, synchronize  # noqa: E402


def bench_device() -> torch.device:
    """The device of this benchmark session (see the module docstring)."""
    wanted = os.environ.get("DTIFAST_BENCH_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def device() -> torch.device:
    dev = bench_device()
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("DTIFAST_BENCH_DEVICE asks for CUDA but torch sees no CUDA device")
    threads = os.environ.get("DTIFAST_BENCH_THREADS") or DEVICE_DEFAULTS[dev.type]["threads"]
    if threads is not None:
        torch.set_num_threads(int(threads))
    return dev


@pytest.fixture(scope="session")
def machine(device) -> dict:
    return machine_info(device)


# Time spent per op case when the rounds are sized from one call (see run_benchmark).
TARGET_S = {"cuda": 0.2, "cpu": 0.3}


@pytest.fixture
def run_benchmark(benchmark, device, machine):
    """``run_benchmark(fn, group, rounds=None, warmup=1, **extra)``: time ``fn`` with pytest-benchmark.

    ``rounds=None`` (fast ops): one timed call sizes the rounds so that the case takes about
    ``TARGET_S`` (5 to 200 rounds): many samples, so that the median shrugs off preemption on a shared
    CPU, in bounded time. Otherwise exactly ``rounds`` rounds (training steps). One call per round,
    after ``warmup`` calls, synchronised on CUDA so that a round covers the work and not just its
    launch; ``extra`` and the machine go into the JSON's ``extra_info``.
    """
    def run(fn, group: str, rounds=None, warmup: int = 1, **extra):
        def unit():
            fn()
            synchronize(device)
        if rounds is None:
            for _ in range(warmup):
                unit()
            start = time.perf_counter()
            unit()
            one = time.perf_counter() - start
            rounds, warmup = max(5, min(200, int(TARGET_S[device.type] / max(one, 1e-6)))), 0
        benchmark.group = group
        benchmark.extra_info.update(machine=machine, **extra)
        return benchmark.pedantic(unit, rounds=rounds, warmup_rounds=warmup, iterations=1)
    return run
