"""The ``cpu`` and ``cuda`` backends: kernels of the compiled extension ``dtifast._C``.

Importing ``dtifast._C`` registers the ops under ``torch.ops.dtifast``; torch dispatches each call to
the CPU or CUDA kernel by the tensors' device. Autograd is attached here with
``torch.library.register_autograd``, so the ops also work under ``torch.compile``.
"""
from __future__ import annotations

import torch

from dtifast import _C  # noqa: F401  (registers torch.ops.dtifast.*)

from ._checks import check_tensor

_NATIVE_DTYPES = (torch.float32, torch.float64)


def _softclip_setup_context(ctx, inputs, output):
    x, slope = inputs
    ctx.slope = slope
    ctx.save_for_backward(x)


def _softclip_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.dtifast.softclip_backward(grad, x, ctx.slope), None


@torch.library.register_fake("dtifast::softclip")
def _softclip_fake(x, slope):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


torch.library.register_autograd("dtifast::softclip", _softclip_backward, setup_context=_softclip_setup_context)


def softclip(x: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """Native :func:`dtifast.ops.reference.softclip` (float32/float64)."""
    check_tensor(x, "x", dtypes=_NATIVE_DTYPES, finite=False)
    return torch.ops.dtifast.softclip(x, float(slope))
