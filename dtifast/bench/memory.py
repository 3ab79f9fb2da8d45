"""Device memory of a training step, estimated without a GPU by tracing it on fake tensors.

A training step (zero grad, forward, ``loss.backward()``, the Adam step, with Adam's moments already
allocated as on every step after the first) runs on :class:`~torch._subclasses.fake_tensor.FakeTensor`
parameters and images: every op computes only its outputs' shapes, dtypes and strides (the custom ops
through their ``register_fake`` kernels), so a batch of thousands of CLEVR6 images traces in about a
second on a CPU. :class:`MemoryTracker`, a ``TorchDispatchMode`` above the fake mode, counts the bytes of
every tensor storage from the op that creates it until the last reference to it goes (a
``weakref.finalize`` on the storage), and keeps the peak, the peak of each phase (forward, backward,
optimizer) and what was live at the peak.

What the estimate counts: parameters and buffers, gradients, the Adam state, the input batch, every
activation autograd saves for the backward, every intermediate and output of every op while it is
referenced, each storage rounded up to the CUDA caching allocator's 512-byte blocks: the figure that
``torch.cuda.max_memory_allocated`` reports for the step. What it cannot see: memory that a kernel or
library allocates outside the ops' outputs (cuDNN and cuBLAS workspaces, and the Triton launchers'
internal buffers unless the fake kernel allocates them, see :class:`MemoryTracker`), the allocator's
cached-but-free blocks and fragmentation (``memory_reserved``), and the CUDA context.

Fake CUDA tensors need a torch built with CUDA: autograd asks the device's guard for a stream, and a
CPU-only torch has no CUDA guard (``FakeTensorMode`` only fills in a no-op one for CUDA builds without a
GPU). On a CPU-only torch the step is therefore traced on fake *CPU* tensors that dispatch like CUDA
ones: the model is told to use the backend CUDA tensors get by default (``triton``), and the Triton
backend is allowed to take CPU tensors while tracing (``TRITON_INTERPRET=1``, the switch the CPU tests
use; nothing is interpreted, since only fake kernels run). Shapes, dtypes, saved tensors and the
custom ops' fake kernels are the same as on fake CUDA; host scalars (Adam's step counts) count as
device memory there, a few bytes per parameter tensor.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import logging
import os
import pathlib
import pkgutil
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Union

import torch
import torch._library.fake_impl
import torch._library.simple_registry
import torch._library.utils
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from dtifast.config import load_config
from dtifast.model import build_model
from dtifast.optim import build_optimizer

from .ops import C, image_size
from .train_step import N_INIT_IMAGES, last_epoch

__all__ = ["GiB", "CUDA_BLOCK_BYTES", "MemoryTracker", "LiveTensor", "PhaseStats", "StepMemoryEstimate",
           "BatchSearch", "FakeTrainingStep", "estimate_step_memory", "largest_batch", "fake_device",
           "WORKSPACE_SEPARATOR"]

log = logging.getLogger(__name__)

GiB = 2 ** 30
# The CUDA caching allocator rounds every allocation up to a multiple of 512 bytes.
CUDA_BLOCK_BYTES = 512
# A batch search stops here: far beyond any config's 16 GiB batch, cheap to trace on fake tensors.
MAX_BATCH_CAP = 1 << 16
# ``op`` of a storage that a custom op's fake kernel allocated and did not return: "<custom op> > <aten op>".
WORKSPACE_SEPARATOR = " > "
# The CUDA default backend, which the CPU stand-in names explicitly (see the module docstring).
CUDA_DEFAULT_BACKEND = "triton"
# Backends whose ops trace on the CPU stand-in: Triton's fake kernels and the eager reference.
TRACEABLE_ON_STAND_IN = ("triton", "torch")
WARMUP_BATCH = 2
# Autograd formulas that, for tensor subclasses or under any dispatch mode (this tracker included), write the
# gradient into the zeros they just made with an out-of-place op ("composite compliance"), where on plain
# device tensors they write in place: node name -> (out-of-place op, its in-place twin).
_IN_PLACE_ON_PLAIN_TENSORS = {
    "IndexBackward0": (torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default),
    "MinBackward0": (torch.ops.aten.scatter.src, torch.ops.aten.scatter_.src),
    "MaxBackward0": (torch.ops.aten.scatter.src, torch.ops.aten.scatter_.src),
}
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1]
_PACKAGE_PREFIX = str(_PACKAGE_DIR) + os.sep
_BENCH_PREFIX = str(_PACKAGE_DIR / "bench") + os.sep
_MODEL_PREFIX = str(_PACKAGE_DIR / "model") + os.sep


# ----------------------------------------------------------------------------------------------------
# The tracker
# ----------------------------------------------------------------------------------------------------

@dataclass
class LiveTensor:
    """One tracked storage.

    Attributes:
        nbytes: bytes counted (the storage's size rounded up to the tracker's block size).
        shape, dtype: of the first tensor seen on the storage.
        origin: the phase during which it was allocated, ``pre-existing`` (seen first as an op's input),
            or the label given to :meth:`MemoryTracker.track` (``parameters``, ``input batch``, …).
        op: the op that allocated it; ``"<custom op> > <op>"`` for workspace that a custom op's fake kernel
            allocated and dropped.
        where: the autograd node in a backward pass, else the innermost model (or ops) source line on the
            Python stack at the allocation (see :func:`_where`); None when there is none.
    """
    nbytes: int
    shape: tuple[int, ...]
    dtype: str
    origin: str
    op: str = ""
    where: Optional[str] = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PhaseStats:
    """Live bytes at the start and end of a phase and the most during it."""
    start_bytes: int
    peak_bytes: int
    end_bytes: int = 0


class MemoryTracker(TorchDispatchMode):
    """Live bytes of tensor storages over a region of code: the peak, per-phase peaks, what is live at the peak.

    Every op's output storages that are new (not one of its inputs' storages) count from the op until the
    storage is freed; storages first seen as an op's input count as ``pre-existing`` from then on; tensors
    that exist before the region and that it may not touch (parameters, optimizer state) are registered
    with :meth:`track`. Works on real and fake tensors; enter it inside a ``FakeTensorMode`` (so that it
    sees ops before the fake mode does).

    Autograd formulas that switch to an out-of-place op under a dispatch mode (``IndexBackward0``'s
    ``index_put``, ``Min/MaxBackward0``'s ``scatter`` into fresh zeros) run their in-place twin, as they do on
    plain tensors, so that the trace does not count a copy that the real step never makes.

    Custom-op workspace: on fake tensors, the fake kernel of a custom op (``torch.library.register_fake``)
    runs under this tracker, so a fake kernel that allocates a tensor and drops it before returning
    models the workspace that the real kernel's launcher allocates: it counts from its allocation until
    it is dropped, with ``op`` ``"<custom op> > <allocating op>"``, and the op's peak includes it.

    A tracker records one region (one ``with`` block); frees after it are not counted.

    Args:
        device_type: count only storages on this device type (``"cuda"``); None counts every device.
        block_bytes: round each storage up to a multiple of this (default: the CUDA caching allocator's 512).

    Example::

        with FakeTensorMode(), MemoryTracker() as tracker:
            with tracker.phase("forward"):
                ...
        tracker.peak_bytes, tracker.phases["forward"].peak_bytes, tracker.live_at_peak()[:10]
    """

    def __init__(self, device_type: Optional[str] = None, block_bytes: int = CUDA_BLOCK_BYTES):
        super().__init__()
        if not isinstance(block_bytes, int) or block_bytes < 1:
            raise ValueError(f"block_bytes must be a positive int, got {block_bytes!r}")
        self.device_type = device_type
        self.block_bytes = block_bytes
        self.current_bytes = 0
        self.peak_bytes = 0
        self.peak_phase: Optional[str] = None
        self.phases: dict[str, PhaseStats] = {}
        self._phase: Optional[str] = None
        self._active: list[PhaseStats] = []                  # the phases being recorded, outermost first
        self._records: list[LiveTensor] = []                 # by allocation number
        self._alive: dict[int, int] = {}                     # id(storage) -> allocation number, while alive
        self._finalizers: dict[int, weakref.finalize] = {}   # allocation number -> its finalizer
        self._events: list[int] = []                         # allocation number n as n + 1, its free as -(n + 1)
        self._peak_event = 0
        self._custom_ops: list[str] = []                     # custom ops whose fake kernel is running
        self._depth = 0
        self._closed = False

    # --- context ------------------------------------------------------------------------------------

    def __enter__(self) -> "MemoryTracker":
        if self._closed:
            raise RuntimeError("a MemoryTracker records one region; create a new one for another")
        self._depth += 1
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self._depth -= 1
        if self._depth == 0:
            # Frees after the region are not part of it; the finalizers must not keep the tracker alive.
            for finalizer in self._finalizers.values():
                finalizer.detach()
            self._finalizers.clear()
            self._closed = True

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[PhaseStats]:
        """Attribute allocations to phase ``name`` and record its start, peak and end bytes."""
        if name in self.phases or name == self._phase:
            raise ValueError(f"phase {name!r} was already recorded")
        stats = PhaseStats(start_bytes=self.current_bytes, peak_bytes=self.current_bytes)
        outer = self._phase
        self._phase = name
        self._active.append(stats)
        try:
            yield stats
        finally:
            self._active.pop()
            self._phase = outer
            stats.end_bytes = self.current_bytes
            self.phases[name] = stats

    # --- results ------------------------------------------------------------------------------------

    def track(self, tensors: Union[Mapping[str, torch.Tensor], Iterable[torch.Tensor]], label: str) -> int:
        """Count the storages of ``tensors`` (created before the region) as live, with origin ``label`` and,
        given a mapping, its keys as ``where``; returns their bytes."""
        before = self.current_bytes
        items = tensors.items() if isinstance(tensors, Mapping) else ((None, t) for t in tensors)
        for name, t in items:
            if isinstance(t, torch.Tensor):
                self._see(t, label, "", where=name)
        return self.current_bytes - before

    def live_at_peak(self) -> list[LiveTensor]:
        """The storages live at the peak, largest first."""
        alive: set[int] = set()
        for event in self._events[:self._peak_event]:
            if event > 0:
                alive.add(event - 1)
            else:
                alive.discard(-event - 1)
        return sorted((self._records[n] for n in alive), key=lambda r: r.nbytes, reverse=True)

    def breakdown_at_peak(self) -> dict[str, int]:
        """Bytes live at the peak per origin (registered label, ``pre-existing`` or allocating phase)."""
        out: dict[str, int] = {}
        for record in self.live_at_peak():
            out[record.origin] = out.get(record.origin, 0) + record.nbytes
        return out

    # --- dispatch -----------------------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        for t in pytree.tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor):
                self._see(t, "pre-existing", name)
        func = _plain_tensor_twin(func)
        kernel = _fake_kernel(func, args, kwargs)
        if kernel is None:
            out = func(*args, **kwargs)
        else:
            out = self._run_fake_kernel(func, kernel, args, kwargs)
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._see(t, self._phase or "outside phases", name, output_of=name)
        return out

    def _run_fake_kernel(self, func, kernel: Callable, args: tuple, kwargs: dict) -> Any:
        """Run a custom op's fake kernel with this tracker active, so that its allocations are seen."""
        fake_mode = next(t.fake_mode for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, FakeTensor))
        ctx = torch._library.fake_impl.FakeImplCtx(fake_mode, func)
        self._custom_ops.append(str(func))
        try:
            with torch._library.fake_impl.set_ctx_getter(lambda: ctx), self:
                return kernel(*args, **kwargs)
        finally:
            self._custom_ops.pop()

    def _see(self, t: torch.Tensor, origin: str, op: str, output_of: Optional[str] = None,
             where: Optional[str] = None) -> None:
        if self.device_type is not None and t.device.type != self.device_type:
            return
        storage = _storage(t)
        if storage is None:
            return
        n = self._alive.get(id(storage))
        if n is None:
            if self._custom_ops and output_of is not None:
                op = self._custom_ops[-1] + WORKSPACE_SEPARATOR + op
            self._allocate(storage, t, origin, op, where)
            return
        record = self._records[n]
        if output_of is not None and record.op.startswith(output_of + WORKSPACE_SEPARATOR):
            record.op = output_of  # the fake kernel's output, not workspace
        if self._rounded(storage.nbytes()) != record.nbytes:  # resized in place (resize_, out= ops)
            self._free(n, id(storage))
            self._allocate(storage, t, record.origin, op, record.where)

    def _allocate(self, storage: torch.UntypedStorage, t: torch.Tensor, origin: str, op: str,
                  where: Optional[str]) -> None:
        n = len(self._records)
        nbytes = self._rounded(storage.nbytes())
        self._records.append(LiveTensor(nbytes, tuple(t.shape), str(t.dtype).replace("torch.", ""), origin, op,
                                        where if where is not None else _where()))
        self._alive[id(storage)] = n
        self._finalizers[n] = weakref.finalize(storage, self._free, n, id(storage))
        self._events.append(n + 1)
        self.current_bytes += nbytes
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
            self.peak_phase = self._phase
            self._peak_event = len(self._events)
        for stats in self._active:
            stats.peak_bytes = max(stats.peak_bytes, self.current_bytes)

    def _free(self, n: int, key: int) -> None:
        finalizer = self._finalizers.pop(n, None)
        if finalizer is not None:
            finalizer.detach()
        if self._alive.get(key) == n:
            del self._alive[key]
        self.current_bytes -= self._records[n].nbytes
        self._events.append(-(n + 1))

    def _rounded(self, nbytes: int) -> int:
        return -(-nbytes // self.block_bytes) * self.block_bytes


def _plain_tensor_twin(func: Any) -> Any:
    """``func``, or its in-place twin inside an autograd formula listed in :data:`_IN_PLACE_ON_PLAIN_TENSORS`."""
    node = torch._C._current_autograd_node()
    pair = _IN_PLACE_ON_PLAIN_TENSORS.get(node.name()) if node is not None else None
    return pair[1] if pair is not None and func is pair[0] else func


def _fake_kernel(func: Any, args: tuple, kwargs: dict) -> Optional[Callable]:
    """The Python fake kernel (``torch.library.register_fake``) of a custom op called on fake tensors, else None."""
    if not isinstance(func, torch._ops.OpOverload) or torch._library.utils.is_builtin(func):
        return None
    if not any(isinstance(t, FakeTensor) for t in pytree.tree_leaves((args, kwargs))):
        return None
    return torch._library.simple_registry.singleton.find(func.name()).fake_impl.kernel


def _storage(t: torch.Tensor) -> Optional[torch.UntypedStorage]:
    try:
        return t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return None


def _where() -> Optional[str]:
    """Where an allocation comes from: in a backward pass the autograd node running (``"autograd
    IndexBackward0"``), else the innermost model source line on the Python stack (``dtifast/model/…``), else
    the innermost ops line; None when there is none."""
    node = torch._C._current_autograd_node()
    if node is not None:
        return f"autograd {node.name()}"
    ops_line = None
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(_MODEL_PREFIX):
            return _line(frame)
        if ops_line is None and name.startswith(_PACKAGE_PREFIX) and not name.startswith(_BENCH_PREFIX):
            ops_line = _line(frame)
        frame = frame.f_back
    return ops_line


def _line(frame: Any) -> str:
    return f"{os.path.relpath(frame.f_code.co_filename, _PACKAGE_DIR.parent)}:{frame.f_lineno}"


# ----------------------------------------------------------------------------------------------------
# A training step on fake tensors
# ----------------------------------------------------------------------------------------------------

@dataclass
class StepMemoryEstimate:
    """Estimated device memory of one training step (see the module docstring for what it counts).

    Attributes:
        config, batch, dtype, backend: the case.
        device: what the trace ran on (``cuda (fake)``, or ``cpu (fake, standing in for cuda)``).
        peak_bytes: the most bytes live at once during the step; peak_phase: the phase it was reached in.
        resident_bytes: bytes live before the step, per kind (parameters, buffers, optimizer state, input batch).
        phases: start, peak and end bytes of ``forward``, ``backward`` and ``optimizer``.
        at_peak: bytes live at the peak per origin (the resident kinds, then the phase that allocated them).
        top: the largest storages live at the peak.
        seconds: wall time of the trace.
    """
    config: str
    batch: int
    dtype: str
    backend: str
    device: str
    peak_bytes: int
    peak_phase: Optional[str]
    resident_bytes: dict[str, int]
    phases: dict[str, PhaseStats]
    at_peak: dict[str, int]
    top: list[LiveTensor] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BatchSearch:
    """The largest batch (a multiple of ``step``) whose estimated step fits ``budget_bytes``.

    Attributes:
        max_batch: the largest batch that fits (0: not even ``step`` does).
        first_failing: the smallest batch above it that does not (None: ``cap`` fits).
        peak_bytes: the estimated peak at ``max_batch`` (None when 0).
        trials: ``(batch, peak bytes)`` in the order traced.
    """
    config: str
    dtype: str
    backend: str
    device: str
    budget_bytes: int
    step: int
    cap: int
    max_batch: int
    first_failing: Optional[int]
    peak_bytes: Optional[int]
    trials: list[tuple[int, int]]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fake_device() -> tuple[torch.device, bool]:
    """The device to trace on: ``(cuda, False)`` where torch is built with CUDA, else ``(cpu, True)``, a stand-in
    that dispatches like CUDA (a CPU-only torch has no CUDA device guard, which autograd needs; see the
    module docstring)."""
    if torch.backends.cuda.is_built():
        return torch.device("cuda"), False
    return torch.device("cpu"), True


class FakeTrainingStep:
    """A config's model and optimizer on fake device tensors, ready to trace training steps at any batch size.

    The model is built for real on the CPU (:func:`dtifast.model.build_model`, images of the config's size
    and :data:`dtifast.bench.ops.C` channels, as :class:`dtifast.bench.train_step.TrainStep` does), set to
    the config's last epoch (every curriculum module active, sprites trainable) in training mode (mask
    noise on), converted to fake tensors, and one step is traced untracked so that the optimizer's state
    exists as on every later step.

    Args:
        config: a bundled config name, a YAML path, or a config loaded by :func:`dtifast.config.load_config`
            (copied, not modified).
        dtype: parameter and image dtype.
        backend: op backend of the model; None: the one CUDA tensors get by default (``triton``).
        seed: seeds the CPU initialisation (it decides nothing about memory; the caller's RNG is left as it was).

    Raises:
        TypeError: ``config`` or ``dtype`` of the wrong kind.
        ValueError: a backend that the CPU stand-in cannot trace (the C++ ``cpu`` / ``cuda`` kernels).
        dtifast.ops.BackendError: the backend cannot run the model's ops on the traced device.
    """

    def __init__(self, config: Union[str, os.PathLike, Mapping[str, Any]], *, dtype: torch.dtype = torch.float32,
                 backend: Optional[str] = None, seed: int = 0):
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.config, self.cfg = _load(config)
        self.dtype = dtype
        self.backend = backend if backend is not None else CUDA_DEFAULT_BACKEND
        self.cfg["model"]["backend"] = self.backend
        self.device, self.stand_in = fake_device()
        if self.stand_in and self.backend not in TRACEABLE_ON_STAND_IN:
            raise ValueError(f"backend {self.backend!r} cannot be traced on this CPU-only torch (no fake CUDA "
                             f"tensors here; the CPU stand-in traces {TRACEABLE_ON_STAND_IN}); use one of those, "
                             "or a torch built with CUDA")
        self.img_size = image_size(self.cfg)
        self.epoch = last_epoch(self.cfg)
        self.mode = FakeTensorMode()
        self._peaks: dict[int, int] = {}  # batch -> estimated peak, for the batch search
        self.model = _real_model(self.cfg, self.img_size, dtype, self.epoch, seed)
        _to_fake(self.model, self.mode, self.device)
        with self._tracing():
            self.optimizer = build_optimizer(self.model, self.cfg["training"]["optimizer"])
            self._run_step(self._images(WARMUP_BATCH), lambda name: contextlib.nullcontext())

    @property
    def traced_on(self) -> str:
        return f"{self.device.type} (fake{', standing in for cuda' if self.stand_in else ''})"

    def estimate(self, batch: int, top: int = 10) -> StepMemoryEstimate:
        """Trace one training step at ``batch`` images and return its memory (``top`` largest storages at the peak)."""
        _check_batch(batch)
        if not isinstance(top, int) or top < 0:
            raise ValueError(f"top must be an int >= 0, got {top!r}")
        start = time.perf_counter()
        with self._tracing():
            x = self._images(batch)
            tracker = MemoryTracker(self.device.type)
            resident = self._track_resident(tracker, x)
            with tracker:
                self._run_step(x, tracker.phase)
        estimate = StepMemoryEstimate(
            self.config, batch, str(self.dtype).replace("torch.", ""), self.backend, self.traced_on,
            tracker.peak_bytes, tracker.peak_phase, resident, tracker.phases, tracker.breakdown_at_peak(),
            tracker.live_at_peak()[:top], time.perf_counter() - start)
        self._peaks[batch] = estimate.peak_bytes
        log.info("%s B=%d (%s): estimated peak %.1f MiB in %s (%.2f s)", self.config, batch, self.backend,
                 estimate.peak_bytes / 2**20, estimate.peak_phase, estimate.seconds)
        return estimate

    def largest_batch(self, budget_bytes: int = 16 * GiB, *, step: int = 1, cap: int = MAX_BATCH_CAP) -> BatchSearch:
        """The largest multiple of ``step`` up to ``cap`` whose estimated peak is at most ``budget_bytes``.

        The peak grows with the batch, so the search brackets the answer from a linear prediction (two
        traces) by galloping, then bisects: about ten traces. ``estimate(max_batch) <= budget_bytes <
        estimate(max_batch + step)`` unless ``max_batch`` is ``cap``.
        """
        _check_search(budget_bytes, step, cap)
        start = time.perf_counter()
        cap = cap // step * step
        peaks: dict[int, int] = {}  # the trials, in order

        def peak(batch: int) -> int:
            if batch not in peaks:
                peaks[batch] = self._peaks[batch] if batch in self._peaks else self.estimate(batch, top=0).peak_bytes
            return peaks[batch]

        def fits(batch: int) -> bool:
            return peak(batch) <= budget_bytes

        lo, hi = _bracket(fits, _linear_guess(peak, budget_bytes, step, cap), step, cap)
        lo, hi = _bisect(fits, lo, hi, step)
        search = BatchSearch(self.config, str(self.dtype).replace("torch.", ""), self.backend, self.traced_on,
                             budget_bytes, step, cap, lo, hi, peaks.get(lo), list(peaks.items()),
                             time.perf_counter() - start)
        log.info("%s (%s): largest batch %d in %.1f GiB (%d traces, %.1f s)", self.config, self.backend, lo,
                 budget_bytes / GiB, len(peaks), search.seconds)
        return search

    def _run_step(self, x: torch.Tensor, phase: Callable[[str], Any]) -> None:
        """Zero grad, forward, backward, optimizer step: what :meth:`dtifast.train.Trainer._train_step` allocates."""
        self.optimizer.zero_grad(set_to_none=True)
        with phase("forward"):
            out = self.model(x)
        with phase("backward"):
            out.loss.backward()
        with phase("optimizer"):
            self.optimizer.step()

    def _track_resident(self, tracker: MemoryTracker, x: torch.Tensor) -> dict[str, int]:
        """Register what is live before the step, named (``where``) after the parameter it belongs to."""
        params = dict(self.model.named_parameters())
        names = {id(p): name for name, p in params.items()}
        state = {f"{names.get(id(p), '?')} ({key})": value for p, entries in self.optimizer.state.items()
                 for key, value in entries.items() if isinstance(value, torch.Tensor)}
        return {"parameters": tracker.track(params, "parameters"),
                "buffers": tracker.track(dict(self.model.named_buffers()), "buffers"),
                "optimizer state": tracker.track(state, "optimizer state"),
                "input batch": tracker.track({"images": x}, "input batch")}

    def _images(self, batch: int) -> torch.Tensor:
        return torch.rand(batch, C, *self.img_size, dtype=self.dtype, device=self.device)

    @contextlib.contextmanager
    def _tracing(self) -> Iterator[None]:
        with _triton_takes_cpu_tensors() if self.stand_in else contextlib.nullcontext(), \
                self.mode:
            yield


def estimate_step_memory(config: Union[str, os.PathLike, Mapping[str, Any]], batch: int, *,
                         dtype: torch.dtype = torch.float32, backend: Optional[str] = None,
                         top: int = 10) -> StepMemoryEstimate:
    """Estimated device memory of one training step of ``config`` at ``batch`` images.

    Args:
        config: a bundled config name, a YAML path or a loaded config.
        batch: images per step.
        dtype: parameter and image dtype.
        backend: the model's op backend; None: the CUDA default (``triton``); ``torch``: the eager reference
            (upstream's memory behaviour).
        top: how many of the largest storages live at the peak to return.

    Returns:
        :class:`StepMemoryEstimate`.

    Example::

        est = estimate_step_memory("clevr6", 128)
        est.peak_bytes / 2**30, est.phases["backward"].peak_bytes, est.top[0]
    """
    _check_batch(batch)
    return FakeTrainingStep(config, dtype=dtype, backend=backend).estimate(batch, top=top)


def largest_batch(config: Union[str, os.PathLike, Mapping[str, Any]], budget_bytes: int = 16 * GiB, *,
                  dtype: torch.dtype = torch.float32, backend: Optional[str] = None, step: int = 1,
                  cap: int = MAX_BATCH_CAP) -> BatchSearch:
    """The largest batch (a multiple of ``step``, at most ``cap``) whose estimated training step fits
    ``budget_bytes`` (see :meth:`FakeTrainingStep.largest_batch`)."""
    _check_search(budget_bytes, step, cap)
    return FakeTrainingStep(config, dtype=dtype, backend=backend).largest_batch(budget_bytes, step=step, cap=cap)


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------

def _check_batch(batch: Any, name: str = "batch") -> None:
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"{name} must be a positive int, got {batch!r}")


def _check_search(budget_bytes: Any, step: Any, cap: Any) -> None:
    if not isinstance(budget_bytes, int) or budget_bytes <= 0:
        raise ValueError(f"budget_bytes must be a positive int, got {budget_bytes!r}")
    _check_batch(step, "step")
    if not isinstance(cap, int) or cap < step:
        raise ValueError(f"cap must be an int >= step ({step}), got {cap!r}")


def _load(config: Union[str, os.PathLike, Mapping[str, Any]]) -> tuple[str, dict[str, Any]]:
    """``(name, config)`` from a config name or path (loaded) or a loaded config (deep-copied)."""
    if isinstance(config, Mapping):
        cfg = copy.deepcopy(dict(config))
        return str(cfg.get("dataset", {}).get("name", "config")), cfg
    if isinstance(config, (str, os.PathLike)):
        return str(config), load_config(config)
    raise TypeError(f"config must be a config name, a path or a loaded config, got {type(config).__name__}")


def _real_model(cfg: dict[str, Any], img_size: tuple[int, int], dtype: torch.dtype, epoch: int,
                seed: int) -> torch.nn.Module:
    """The model at ``epoch`` in training mode, on the CPU, without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        init = torch.rand(N_INIT_IMAGES, C, *img_size)
        model = build_model(cfg, img_size, C, init_images=init).to(dtype)
    model.set_epoch(epoch)
    return model.train()


def _to_fake(module: torch.nn.Module, mode: FakeTensorMode, device: torch.device) -> None:
    """Replace the parameters and buffers of ``module`` by fake tensors on ``device``.

    Integer and bool buffers (the epoch counter, the curriculum flags, BatchNorm's batch count: the model
    reads them on the host) become fake constants on the CPU that keep their values.
    """
    converter = mode.fake_tensor_converter

    def convert(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            return converter.from_meta_and_device(mode, t.to("meta"), device)
        return converter.from_real_tensor(mode, t, make_constant=True)

    module._apply(convert)


@contextlib.contextmanager
def _triton_takes_cpu_tensors() -> Iterator[None]:
    """Let the ``triton`` backend take CPU tensors (``TRITON_INTERPRET=1``) inside the block.

    The kernel modules are imported first: Triton's ``@jit`` reads the variable when a kernel is defined,
    and they must stay compiled kernels for the rest of the process.
    """
    _import_kernels()
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


def _import_kernels() -> None:
    kernels = importlib.import_module("dtifast.kernels")
    for info in pkgutil.iter_modules(kernels.__path__):
        importlib.import_module(f"{kernels.__name__}.{info.name}")


def _linear_guess(peak: Callable[[int], int], budget: int, step: int, cap: int) -> int:
    """A first guess at the largest batch: the line through the peaks at two batches, at the budget."""
    a, b = min(32 * step, cap), min(128 * step, cap)
    if a == b:
        return a
    slope = (peak(b) - peak(a)) / (b - a)
    if slope <= 0:
        return cap
    guess = a + (budget - peak(a)) / slope
    return int(min(max(guess // step * step, step), cap))


def _bracket(fits: Callable[[int], bool], guess: int, step: int, cap: int) -> tuple[int, Optional[int]]:
    """``(lo, hi)`` around the largest fitting batch, galloping from ``guess`` with doubling gaps: ``lo`` fits
    (0: nothing tried fits), ``hi`` does not (None: ``cap`` fits); both multiples of ``step``."""
    gap = max(step, guess // 64 // step * step)
    if fits(guess):
        lo = guess
        while lo < cap:
            nxt = min(lo + gap, cap)
            if not fits(nxt):
                return lo, nxt
            lo, gap = nxt, 2 * gap
        return lo, None
    hi = guess
    while hi > step:
        nxt = max(hi - gap, step)
        if fits(nxt):
            return nxt, hi
        hi, gap = nxt, 2 * gap
    return 0, hi


def _bisect(fits: Callable[[int], bool], lo: int, hi: Optional[int], step: int) -> tuple[int, Optional[int]]:
    """Narrow ``(lo, hi)`` from :func:`_bracket` until they are ``step`` apart."""
    while hi is not None and hi - lo > step:
        mid = lo + (hi - lo) // step // 2 * step
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, hi
