"""pytest-benchmark suites (``make bench`` = ``pytest -q benchmarks -p no:xdist --benchmark-only``).

The device is CUDA when torch sees one, else the CPU; ``DTIFAST_BENCH_DEVICE=cpu`` forces the CPU.
Without CUDA, Triton can only be imported in its interpreter, so TRITON_INTERPRET=1 is set before
anything imports it; interpreted Triton is then skipped (its timings mean nothing). The ops'
finite-value input check is off, as in ``dtifast bench`` (see docs/benchmarks.md).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from dtifast.bench.machine import machine_info, set_check_finite, synchronize  # noqa: E402


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
    set_check_finite(False)
    return dev


@pytest.fixture(scope="session")
def machine(device) -> dict:
    return machine_info(device)


@pytest.fixture
def run_benchmark(benchmark, device, machine):
    """``run_benchmark(fn, group, rounds=None, warmup=0, **extra)``: time ``fn`` with pytest-benchmark.

    ``rounds=None``: pytest-benchmark's calibration (rounds until ``--benchmark-max-time``, default
    1 s: many samples, robust to preemption on a shared CPU), for fast ops; otherwise exactly
    ``rounds`` rounds of one call after ``warmup`` (``pedantic``), for training steps. Each call is
    synchronised on CUDA so that it covers the work and not just its launch; ``extra`` and the
    machine go into the JSON's ``extra_info``.
    """
    def run(fn, group: str, rounds=None, warmup: int = 0, **extra):
        def unit():
            fn()
            synchronize(device)
        benchmark.group = group
        benchmark.extra_info.update(machine=machine, **extra)
        if rounds is None:
            for _ in range(warmup):
                unit()
            return benchmark(unit)
        return benchmark.pedantic(unit, rounds=rounds, warmup_rounds=warmup, iterations=1)
    return run
