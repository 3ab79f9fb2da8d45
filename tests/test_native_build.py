"""How dtifast._C is built: its parallel loops really run on torch's threads, with torch's OpenMP runtime."""
import pathlib
import sys

import pytest
import torch

import dtifast._C  # noqa: F401  (registers torch.ops.dtifast.*)
from thread_runs import run_per_thread_count


@pytest.mark.parametrize("threads", [1, 2])
def test_parallel_for_uses_torch_threads(threads):
    # A build without -fopenmp compiles at::parallel_for to a serial loop: every kernel would run on one
    # thread while the thread-count tests still pass.
    assert run_per_thread_count(torch.ops.dtifast.parallel_threads, (threads,)) == [threads]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_one_openmp_runtime_loaded():
    # Two libgomp copies would mean two thread pools competing for the cores.
    maps = pathlib.Path("/proc/self/maps").read_text().splitlines()
    libs = {line.split()[-1] for line in maps if "libgomp" in line}
    assert len(libs) <= 1, f"more than one OpenMP runtime mapped: {sorted(libs)}"
