"""Every op × provider × mode at the shapes of upstream's configs (pytest-benchmark).

Groups are ``<config> <op> <mode>``, so pytest-benchmark's table compares providers side by side:
``torch`` (eager reference = upstream semantics), ``torch.compile`` of it, and every backend that
runs here. Cases come from :mod:`dtifast.bench.ops`, the same ones ``dtifast bench`` reports.
``extra_info`` holds the bytes moved, achieved GB/s, peak memory and the machine.

CUDA: tetro, dsprites, clevr6 (multi-object) and gtsrb8 (single-object) shapes at batch 128.
CPU: tetro and gtsrb8 at batch 8, so that ``make bench`` stays within a few minutes on 2 cores.
``torch.compile`` runs on the shape sets that ``dtifast bench`` compiles (CUDA: clevr6; CPU: tetro).
"""
import pytest
import torch

from conftest import bench_device
from dtifast.bench.machine import peak_memory
from dtifast.bench import DEVICE_DEFAULTS
from dtifast.bench.ops import COMPILE, OP_CASES, Skip, prepare, providers, shapes_for

DEVICE = bench_device()
CONFIGS, BATCH = (("tetro", "dsprites", "clevr6", "gtsrb8"), 128) if DEVICE.type == "cuda" else (("tetro", "gtsrb8"), 8)
# torch.compile costs seconds per case: only on the shape sets the report compiles too.
COMPILED = DEVICE_DEFAULTS[DEVICE.type]["compile_op_configs"]


def _cases():
    for config in CONFIGS:
        shapes = shapes_for(config, BATCH)
        for case in OP_CASES.values():
            if not case.applies(shapes):
                continue
            for mode in case.modes:
                for provider in providers(DEVICE):
                    yield pytest.param(config, case.op, mode, provider, id=f"{config}-{case.op}-{mode}-{provider}")


@pytest.mark.parametrize("config,op,mode,provider", list(_cases()))
def test_op(run_benchmark, benchmark, device, config, op, mode, provider):
    shapes = shapes_for(config, BATCH)
    if provider == COMPILE and config not in COMPILED:
        pytest.skip(f"torch.compile runs only on the {', '.join(COMPILED)} shapes (each compilation takes seconds)")
    try:
        runner, moved = prepare(OP_CASES[op], shapes, provider, device, mode)
    except Skip as err:
        pytest.skip(str(err))
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"out of memory at {shapes.describe()}")
    # Rounds sized from one call (see conftest.run_benchmark).
    run_benchmark(runner, f"{config} {op} {mode}", warmup=1, provider=provider, shapes=shapes.describe(),
                  bytes=moved)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gbps"] = moved / benchmark.stats.stats.median / 1e9
    benchmark.extra_info.update(peak_memory(runner, device) or {})
