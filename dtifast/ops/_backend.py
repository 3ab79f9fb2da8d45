"""Backend selection for the public ops.

Backends:

* ``torch``  — the eager reference (:mod:`dtifast.ops.reference`); every device.
* ``cpu``    — the C++ kernels of ``dtifast._C`` on CPU tensors.
* ``cuda``   — the CUDA kernels of ``dtifast._C`` on CUDA tensors (built when torch has CUDA).
* ``triton`` — the fused Triton kernels on CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``).

Precedence: the ``backend=`` argument > the ``DTIFAST_BACKEND`` environment variable > the device's
default (``triton`` on CUDA, ``cpu`` on CPU). A default backend that does not implement an op leaves
that op to ``torch``; an explicitly chosen backend that lacks the op, or that cannot be loaded, is an
error that says what to install. Nothing falls back silently once chosen.

Each op family module declares its ops with :func:`register` (which compiled kernels the ``cpu`` /
``cuda`` backends need, whether Triton has the op, which dtypes each backend takes); the public op then
calls :func:`select` once per call and runs the chosen backend.
"""
from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

BACKENDS = ("torch", "cpu", "cuda", "triton")
DEFAULT_BACKEND = {"cuda": "triton", "cpu": "cpu"}
NATIVE_DTYPES = (torch.float32, torch.float64)
ALL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INSTALL_HINT = {
    "cpu": "reinstall dtifast with `pip install --no-build-isolation -e .` so that dtifast._C is built",
    "cuda": "install dtifast on a machine whose torch has CUDA and nvcc, so that the CUDA kernels are built",
    "triton": "install Triton (`pip install triton`) and use CUDA tensors (or TRITON_INTERPRET=1 on CPU)",
}


class BackendError(RuntimeError):
    """A requested backend is missing, cannot run on the given device, or lacks the op."""


@dataclass(frozen=True)
class OpSpec:
    """Which backends implement one public op.

    Attributes:
        name: the public op's name (``dtifast.ops.<name>``).
        function: the public op (called with ``backend=`` by :func:`resolve`).
        native: the ``dtifast._C`` ops that the ``cpu`` / ``cuda`` backends call; empty: no native version.
            A native backend has the op on a device only where every one of them has a kernel for it.
        triton: whether the ``triton`` backend has the op.
        native_dtypes, triton_dtypes: the dtypes those backends take.
    """
    name: str
    function: Callable
    native: tuple[str, ...] = ()
    triton: bool = False
    native_dtypes: tuple[torch.dtype, ...] = NATIVE_DTYPES
    triton_dtypes: tuple[torch.dtype, ...] = ALL_DTYPES


_OPS: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> None:
    """Declare a public op's backends (called once per op by its family module)."""
    _OPS[spec.name] = spec


def registered_ops() -> tuple[str, ...]:
    """The names of every public op that dispatches to backends."""
    return tuple(_OPS)


def triton_on_cpu() -> bool:
    """Whether the Triton backend takes CPU tensors: under ``TRITON_INTERPRET=1`` (kernels run in NumPy), or
    ``DTIFAST_TRITON_COMPILE_ONLY=1``, set by the compile check (:mod:`dtifast.bench.compile`), which drives
    the launchers with CPU tensors through their GPU branch and compiles each launch instead of running it."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" or os.environ.get("DTIFAST_TRITON_COMPILE_ONLY", "0") == "1"


def _runs_on(backend: str, device: torch.device) -> bool:
    if backend in ("cpu", "cuda"):
        return device.type == backend
    if backend == "triton":
        return device.type == "cuda" or (device.type == "cpu" and triton_on_cpu())
    return True


def _check_device(backend: str, device: torch.device) -> None:
    if not _runs_on(backend, device):
        where = "CUDA tensors" if backend in ("cuda", "triton") else "CPU tensors"
        extra = " (or CPU tensors with TRITON_INTERPRET=1)" if backend == "triton" else ""
        raise BackendError(f"backend {backend!r} runs on {where}{extra}, got tensors on {device}")


@functools.lru_cache(maxsize=None)
def native_error() -> Optional[str]:
    """Why ``dtifast._C`` cannot be loaded, or None when it is."""
    try:
        importlib.import_module("dtifast._C")
    except ImportError as err:
        return str(err)
    return None


@functools.lru_cache(maxsize=None)
def triton_error() -> Optional[str]:
    """Why the Triton kernels cannot be loaded, or None when they can."""
    try:
        importlib.import_module("triton")
    except ImportError as err:
        return str(err)
    return None


def _loadable(backend: str) -> Optional[str]:
    if backend in ("cpu", "cuda"):
        return native_error()
    return triton_error() if backend == "triton" else None


# Cached: the kernels are registered when the modules load, and asking the dispatcher took as long as the
# kernel of a small op.
@functools.lru_cache(maxsize=None)
def _has_kernel(op: str, key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"dtifast::{op}", key)
    except RuntimeError:  # an extension built from older sources lacks the op altogether
        return False


def _has_native_kernels(spec: OpSpec, device: torch.device) -> bool:
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    return bool(spec.native) and key is not None and all(_has_kernel(op, key) for op in spec.native)


def implements(backend: str, op: str, device: torch.device) -> bool:
    """Whether ``backend`` (loaded) has ``op`` for tensors on ``device``'s type."""
    spec = _OPS[op]
    if backend == "torch":
        return True
    if _loadable(backend) is not None:
        return False
    if backend in ("cpu", "cuda"):
        return device.type == backend and _has_native_kernels(spec, device)
    return spec.triton


def requested_backend(backend: Optional[str]) -> Optional[str]:
    """The explicitly requested backend (argument, then ``DTIFAST_BACKEND``), validated, or None."""
    chosen = backend if backend is not None else (os.environ.get("DTIFAST_BACKEND") or None)
    if chosen is not None and chosen not in BACKENDS:
        source = "backend" if backend is not None else "DTIFAST_BACKEND"
        raise ValueError(f"{source} must be one of {BACKENDS}, got {chosen!r}")
    return chosen


def _check_loadable(backend: str) -> None:
    why = _loadable(backend)
    if why is not None:
        raise BackendError(f"backend {backend!r} is not available ({why}); {_INSTALL_HINT[backend]}")


def _check_dtype(backend: str, op: str, dtype: Optional[torch.dtype]) -> None:
    spec = _OPS[op]
    allowed = {"cpu": spec.native_dtypes, "cuda": spec.native_dtypes, "triton": spec.triton_dtypes}.get(backend)
    if dtype is not None and allowed is not None and dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"backend {backend!r} runs {op} on ({names}) tensors, got {str(dtype).replace('torch.', '')}; "
                        "use backend='torch' for other dtypes")


# torch.compile calls this at trace time and keeps its answer as a constant of the graph (it imports
# modules and asks the dispatcher, which dynamo cannot trace; the answer depends on its arguments only).
@torch.compiler.assume_constant_result
def select(op: str, backend: Optional[str], device: torch.device, dtype: Optional[torch.dtype] = None) -> str:
    """The backend that runs ``op`` on ``device`` (see the module docstring for the rules).

    Raises:
        ValueError: ``backend`` (or ``DTIFAST_BACKEND``) is not a backend name.
        BackendError: the chosen backend cannot be loaded, does not run on ``device`` or lacks ``op``.
        TypeError: the chosen backend does not take ``dtype``.
    """
    chosen = requested_backend(backend)
    if chosen is None:
        default = DEFAULT_BACKEND.get(device.type, "torch")
        _check_loadable(default)
        chosen = default if implements(default, op, device) else "torch"
    else:
        _check_device(chosen, device)
        _check_loadable(chosen)
        if not implements(chosen, op, device):
            raise BackendError(f"backend {chosen!r} does not implement {op!r} for {device.type} tensors; "
                               "use backend='torch' or another backend")
    _check_device(chosen, device)
    _check_dtype(chosen, op, dtype)
    return chosen


def resolve(op: str, backend: Optional[str], device: torch.device) -> tuple[str, Callable]:
    """``(name, function)``: the backend that runs ``op`` on ``device`` and the public op bound to it."""
    if op not in _OPS:
        raise ValueError(f"unknown op {op!r}; the ops are {sorted(_OPS)}")
    name = select(op, backend, device)
    return name, functools.partial(_OPS[op].function, backend=name)
