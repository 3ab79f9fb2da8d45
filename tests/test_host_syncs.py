"""No device-to-host reads in a training step (GPU readiness, proven on the CPU).

On a GPU each read of a tensor's value by the host (``.item()``, ``bool(t)``, ``int(t)``, ``nonzero``, a
data-dependent output size…) stalls the host until the device has caught up. These tests count such
reads while the model runs forward and backward (every bundled config, every backend) and while the
trainer takes steps outside its logging interval: there must be none.

Two counters: a ``TorchDispatchMode`` sees every aten op that Python code calls (including those inside
composite ops such as ``F.one_hot``), and patched ``torch.Tensor`` conversions see the reads made inside
a custom op's Python implementation (the Triton launchers), which the mode does not enter.
"""
from __future__ import annotations

import collections
import contextlib
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dtifast.config import load_config

from small_models import ALL_CONFIGS, small_model

aten = torch.ops.aten
# aten ops whose result the host must read (a value, or an output size that depends on the data).
SYNC_OPS = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.equal, aten.is_nonzero,
            aten.allclose, aten._unique2, aten.unique_consecutive, aten.unique_dim, aten.bincount,
            aten.repeat_interleave}
CONVERSIONS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy")


class HostReads(TorchDispatchMode):
    """Records every op of :data:`SYNC_OPS` run under it, with where it came from."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in SYNC_OPS:
            self.reads.append(f"{func}: {_caller()}")
        return func(*args, **(kwargs or {}))


def _caller() -> str:
    frames = [f for f in traceback.extract_stack()[:-2] if "/dtifast/" in f.filename or "/kernels/" in f.filename]
    return f"{frames[-1].filename.split('/work/')[-1]}:{frames[-1].lineno}" if frames else "outside dtifast"


@contextlib.contextmanager
def count_host_reads():
    """Yield the list of host reads made inside the block (dispatch mode + tensor conversions)."""
    mode = HostReads()
    originals = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}

    def counting(name):
        def read(self, *args, **kwargs):
            mode.reads.append(f"Tensor.{name}: {_caller()}")
            return originals[name](self, *args, **kwargs)
        return read

    for name in CONVERSIONS:
        setattr(torch.Tensor, name, counting(name))
    try:
        with mode:
            yield mode.reads
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def test_the_counter_sees_reads_in_python_and_inside_custom_ops():
    # It must be able to fail: a bool() of a tensor, a one_hot (reads the max inside a composite op) and
    # an int() inside a custom op's implementation are all counted.
    @torch.library.custom_op("dtifast_test::reads_inside", mutates_args=())
    def reads_inside(x: torch.Tensor) -> torch.Tensor:
        return x * int(x.sum())

    x = torch.ones(3)
    with count_host_reads() as reads:
        bool(x.sum() > 0)
    assert len(reads) >= 1
    with count_host_reads() as reads:
        torch.nn.functional.one_hot(torch.tensor([0, 2]), 3)
    assert any("_local_scalar_dense" in r for r in reads)
    with count_host_reads() as reads:
        reads_inside(x)
    assert any("Tensor.__int__" in r for r in reads)


@pytest.mark.parametrize("name", ALL_CONFIGS)
@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_model_forward_backward_reads_nothing_back(name, backend):
    torch.manual_seed(0)
    model, x = small_model(name, backend)
    model(x).loss.backward()  # a first step may set things up (caches); the next ones must not read
    model.zero_grad()
    with count_host_reads() as reads:
        out = model(x)
        out.loss.backward()
        model.cluster_proportions(out)
    assert reads == [], f"{len(reads)} host reads: {dict(collections.Counter(reads))}"


def test_trainer_steps_read_nothing_back_between_logging_points(tmp_path):
    from dtifast.data import make_dataset
    from dtifast.train import Trainer
    make_dataset("tetrominoes", tmp_path / "data" / "tetrominoes", n=16, seed=0)
    cfg = load_config("tetro-tiny", ["training.batch_size=4", "training.n_iterations=100", "training.n_workers=0",
                                     "training.tensorboard=false"])
    trainer = Trainer(cfg, tmp_path / "run", data_root=tmp_path / "data", device="cpu", progress=False)
    try:
        batches = [images for images, _ in trainer._loader(0, 0)]
        trainer._train_step(batches[0])
        with count_host_reads() as reads:
            for images in batches[1:]:
                trainer.iteration += 1
                trainer._train_step(images)
        assert reads == [], f"{len(reads)} host reads: {dict(collections.Counter(reads))}"
    finally:
        trainer.close()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ALL_CONFIGS)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_model_step_on_the_gpu_never_synchronises(name, backend, device):
    """On a GPU the CUDA runtime checks too: ``set_sync_debug_mode("error")`` raises on a synchronising call."""
    if device.type != "cuda":
        pytest.skip("run with --device cuda on a GPU machine (the CPU counts reads in the tests above)")
    torch.manual_seed(0)
    model, x = small_model(name, backend)
    model, x = model.to(device), x.to(device)
    model(x).loss.backward()
    model.zero_grad()
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = model(x)
        out.loss.backward()
        model.cluster_proportions(out)
    finally:
        torch.cuda.set_sync_debug_mode("default")
