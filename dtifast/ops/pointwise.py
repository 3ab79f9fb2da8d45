"""Triton softclip and colour transform registered as ``dtifast::softclip_triton`` and
``dtifast::color_transform_triton`` with autograd (see :mod:`dtifast.kernels.pointwise`)."""
from __future__ import annotations

import torch

from dtifast.kernels import pointwise as kp

from ._checks import check_color_inputs, check_tensor

__all__ = ["softclip", "color_transform"]


@torch.library.custom_op("dtifast::softclip_triton", mutates_args=())
def _softclip(x: torch.Tensor, slope: float) -> torch.Tensor:
    return kp.softclip_forward(x, slope)


@torch.library.register_fake("dtifast::softclip_triton")
def _(x, slope):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("dtifast::softclip_backward_triton", mutates_args=())
def _softclip_backward(grad: torch.Tensor, x: torch.Tensor, slope: float) -> torch.Tensor:
    return kp.softclip_backward(grad, x, slope)


@torch.library.register_fake("dtifast::softclip_backward_triton")
def _(grad, x, slope):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _softclip_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.slope = inputs[1]


def _softclip_grad(ctx, grad):
    return _softclip_backward(grad, ctx.saved_tensors[0], ctx.slope), None


torch.library.register_autograd("dtifast::softclip_triton", _softclip_grad, setup_context=_softclip_setup)


@torch.library.custom_op("dtifast::color_transform_triton", mutates_args=())
def _color(x: torch.Tensor, params: torch.Tensor, slope: float) -> torch.Tensor:
    return kp.color_forward(x, params, slope)


@torch.library.register_fake("dtifast::color_transform_triton")
def _(x, params, slope):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("dtifast::color_transform_backward_triton", mutates_args=())
def _color_backward(grad: torch.Tensor, x: torch.Tensor, params: torch.Tensor,
                    slope: float) -> tuple[torch.Tensor, torch.Tensor]:
    return kp.color_backward(grad, x, params, slope)


@torch.library.register_fake("dtifast::color_transform_backward_triton")
def _(grad, x, params, slope):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(params, memory_format=torch.contiguous_format))


def _color_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.slope = inputs[2]


def _color_grad(ctx, grad):
    x, params = ctx.saved_tensors
    dx, dparams = _color_backward(grad, x, params, ctx.slope)
    return dx, dparams, None


torch.library.register_autograd("dtifast::color_transform_triton", _color_grad, setup_context=_color_setup)


def softclip(x: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """Triton :func:`dtifast.ops.reference.softclip` (same subgradient at 0 and 1)."""
    check_tensor(x, "x", finite=False)
    return _softclip(x, float(slope))


def color_transform(x: torch.Tensor, params: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """Triton :func:`dtifast.ops.reference.color_transform`: ``x`` ``(N, C + E, h, w)`` or ``(N, 1, h, w)``,
    ``params`` ``(N, 2·C)`` interleaved (gain, bias) → ``(N, C + E, h, w)``."""
    x, _ = check_color_inputs(x, params)
    return _color(x, params, float(slope))
