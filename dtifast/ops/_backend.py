"""Backend selection for the public ops.

Backends:

* ``torch``  — the eager reference (:mod:`dtifast.ops.reference`); every device.
* ``cpu``    — the C++ kernels of ``dtifast._C`` on CPU tensors.
* ``cuda``   — the CUDA kernels of ``dtifast._C`` on CUDA tensors (built when torch has CUDA).
* ``triton`` — the fused Triton kernels on CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``).

Precedence: the ``backend=`` argument > the ``DTIFAST_BACKEND`` environment variable > the device's
default (``triton`` on CUDA, ``cpu`` on CPU). A default backend that does not implement an op yet
leaves that op to ``torch``; an explicitly chosen backend that lacks the op, or that cannot be
imported, is an error that says what to install. Nothing falls back silently once chosen.

Each backend is a module that defines a function named after every op it implements, with the same
signature as the public op (without ``backend``).
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Callable, Optional

import torch

BACKEND_MODULES = {
    "torch": "dtifast.ops.reference",
    "cpu": "dtifast.ops._native",
    "cuda": "dtifast.ops._native",
    "triton": "dtifast.ops._triton",
}
BACKENDS = tuple(BACKEND_MODULES)
DEFAULT_BACKEND = {"cuda": "triton", "cpu": "cpu"}
_INSTALL_HINT = {
    "cpu": "reinstall dtifast with `pip install --no-build-isolation -e .` so that dtifast._C is built",
    "cuda": "install dtifast on a machine whose torch has CUDA and nvcc, so that the CUDA kernels are built",
    "triton": "install Triton (`pip install triton`) and use CUDA tensors (or TRITON_INTERPRET=1 on CPU)",
    "torch": "this should never fail; report a bug",
}


class BackendError(RuntimeError):
    """A requested backend is missing, cannot run on the given device, or lacks the op."""


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_device(backend: str, device: torch.device) -> None:
    ok = {
        "torch": True,
        "cpu": device.type == "cpu",
        "cuda": device.type == "cuda",
        "triton": device.type == "cuda" or (device.type == "cpu" and _triton_interpreted()),
    }[backend]
    if not ok:
        where = "CUDA tensors" if backend in ("cuda", "triton") else "CPU tensors"
        extra = " (or CPU tensors with TRITON_INTERPRET=1)" if backend == "triton" else ""
        raise BackendError(f"backend {backend!r} runs on {where}{extra}, got tensors on {device}")


def _load(backend: str) -> ModuleType:
    try:
        return importlib.import_module(BACKEND_MODULES[backend])
    except ImportError as err:
        raise BackendError(f"backend {backend!r} is not available ({err}); {_INSTALL_HINT[backend]}") from err


def requested_backend(backend: Optional[str]) -> Optional[str]:
    """The explicitly requested backend (argument, then ``DTIFAST_BACKEND``), validated, or None."""
    chosen = backend if backend is not None else (os.environ.get("DTIFAST_BACKEND") or None)
    if chosen is not None and chosen not in BACKEND_MODULES:
        source = "backend" if backend is not None else "DTIFAST_BACKEND"
        raise ValueError(f"{source} must be one of {BACKENDS}, got {chosen!r}")
    return chosen


def _implementation(backend: str, op: str, device: torch.device) -> Optional[Callable]:
    # A backend module may say per device which of its ops it has kernels for (the compiled extension
    # serves both ``cpu`` and ``cuda`` and may lack some CUDA kernels).
    module = _load(backend)
    impl = getattr(module, op, None)
    implements = getattr(module, "implements", None)
    if impl is not None and implements is not None and not implements(op, device):
        return None
    return impl


def resolve(op: str, backend: Optional[str], device: torch.device) -> tuple[str, Callable]:
    """Pick the backend for ``op`` on ``device`` and return ``(name, implementation)``."""
    chosen = requested_backend(backend)
    if chosen is None:
        default = DEFAULT_BACKEND.get(device.type, "torch")
        # A default backend that is importable but does not cover this op leaves it to the reference;
        # one that cannot be imported at all is still an error.
        impl = _implementation(default, op, device)
        if impl is None:
            return "torch", getattr(_load("torch"), op)
        _check_device(default, device)
        return default, impl
    _check_device(chosen, device)
    impl = _implementation(chosen, op, device)
    if impl is None:
        raise BackendError(f"backend {chosen!r} does not implement {op!r} for {device.type} tensors; "
                           "use backend='torch' or another backend")
    return chosen, impl


def call(op: str, backend: Optional[str], device: torch.device, *args, **kwargs):
    """Run ``op`` on the resolved backend."""
    return resolve(op, backend, device)[1](*args, **kwargs)
