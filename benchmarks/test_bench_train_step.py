"""A full training step (zero grad, forward, backward, Adam) per config × batch × provider (pytest-benchmark).

Groups are ``train <config> B=<batch>``; ``extra_info`` holds images/s, peak memory and the machine.
The model is at its config's last epoch (every transform active, sprites trainable), see
:class:`dtifast.bench.train_step.TrainStep`.

CUDA: every bundled upstream config at batch 32, 128 and 512, providers ``torch``, ``torch.compile``
and every backend that runs the model. CPU: Tetrominoes and GTSRB-8 at batch 8 and CLEVR6 at batch 2
(a CLEVR6 step at batch 8 takes ~15 s on 2 cores), without ``torch.compile`` (compiling a whole
model takes minutes there; ``DTIFAST_BENCH_COMPILE=1`` adds it).
"""
import os

import pytest
import torch

from conftest import bench_device
from dtifast.bench import ALL_CONFIGS
from dtifast.bench.machine import peak_memory
from dtifast.bench.ops import Skip
from dtifast.bench.train_step import TrainStep, train_providers

DEVICE = bench_device()
if DEVICE.type == "cuda":
    CASES = [(c, b) for c in ALL_CONFIGS for b in (32, 128, 512)]
    ROUNDS, WARMUP, COMPILE = 5, 1, True
else:
    CASES = [("tetro", 8), ("gtsrb8", 8), ("clevr6", 2)]
    # Two warm-up steps: the first steps of a process pay one-time costs (allocator growth, oneDNN set-up).
    ROUNDS, WARMUP, COMPILE = 3, 2, os.environ.get("DTIFAST_BENCH_COMPILE") == "1"


def _cases():
    for config, batch in CASES:
        for provider in train_providers(DEVICE, with_compile=COMPILE):
            yield pytest.param(config, batch, provider, id=f"{config}-B{batch}-{provider}")


@pytest.mark.parametrize("config,batch,provider", list(_cases()))
def test_train_step(run_benchmark, benchmark, device, config, batch, provider):
    try:
        step = TrainStep(config, provider, batch, device)
        step.check()
    except Skip as err:
        pytest.skip(str(err))
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"out of memory: {config} at batch {batch} with {provider}")
    run_benchmark(step, f"train {config} B={batch}", rounds=ROUNDS, warmup=WARMUP, provider=provider, batch=batch,
                  epoch=step.epoch)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median
    benchmark.extra_info.update(peak_memory(step, device) or {})
