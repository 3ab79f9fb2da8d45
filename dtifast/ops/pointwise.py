"""Pointwise ops: softclip and the per-channel colour transform, on every backend.

Where each part lives:

* reference (the ``torch`` backend): :func:`dtifast.ops.reference.softclip`, ``color_transform``;
* Triton kernels: ``kernels/pointwise.py``; C++ kernels: ``csrc/softclip.cpp``, ``csrc/color.cpp``
  (no CUDA kernels: on CUDA tensors the default Triton backend runs them);
* custom ops (one contract, :mod:`dtifast.ops._library`): ``dtifast::softclip(x, slope)``,
  ``dtifast::color_transform(x, params, slope)`` and their ``_triton`` twins.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference
from ._backend import OpSpec, native_error, register, select
from ._checks import check_color_inputs, check_tensor
from ._library import define_triton_op, fused_op, register_autograd

__all__ = ["softclip", "color_transform"]


def _softclip_triton(x: torch.Tensor, slope: float) -> torch.Tensor:
    from dtifast.kernels import pointwise as kernels
    return kernels.softclip_forward(x, slope)


def _softclip_backward_triton(grad: torch.Tensor, x: torch.Tensor, slope: float) -> torch.Tensor:
    from dtifast.kernels import pointwise as kernels
    return kernels.softclip_backward(grad, x, slope)


def _color_triton(x: torch.Tensor, params: torch.Tensor, slope: float) -> torch.Tensor:
    from dtifast.kernels import pointwise as kernels
    return kernels.color_forward(x, params, slope)


def _color_backward_triton(grad: torch.Tensor, x: torch.Tensor, params: torch.Tensor, slope: float, need_x: bool,
                           need_params: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from dtifast.kernels import pointwise as kernels
    dx, dparams = kernels.color_backward(grad, x, params, slope)
    return (dx if need_x else x.new_empty(0)), (dparams if need_params else params.new_empty(0))


def _like_x(x: torch.Tensor, *args: object) -> torch.Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


define_triton_op("softclip", _softclip_triton, _softclip_backward_triton, n_diff=1, with_needs=False)
define_triton_op("color_transform", _color_triton, _color_backward_triton, n_diff=2)
if native_error() is None:
    register_autograd("softclip", forward_fake=_like_x, n_diff=1, with_needs=False)
    register_autograd("color_transform", forward_fake=_like_x, n_diff=2)


def softclip(x: torch.Tensor, slope: float = 0.01, *, backend: Optional[str] = None) -> torch.Tensor:
    """Soft clipping to ``[0, 1]``: identity inside, a line of slope ``slope`` outside.

    .. math:: \\mathrm{softclip}(x) = \\mathrm{clamp}(x, 0, 1) + s\\,\\min(x, 0) + s\\,\\max(x - 1, 0)

    At exactly 0 and 1 the gradient is ``1 + slope / 2`` (upstream's subgradient).

    Args:
        x: tensor of any shape, floating point.
        slope: slope outside ``[0, 1]`` (upstream: 0.01).
        backend: see :mod:`dtifast.ops._backend`.

    Returns:
        Tensor of the same shape and dtype as ``x`` (contiguous).

    Example:
        >>> softclip(torch.tensor([-1.0, 0.5, 2.0]))
        tensor([-0.0100,  0.5000,  1.0100])
    """
    check_tensor(x, "x", finite=False)
    name = select("softclip", backend, x.device, x.dtype)
    if name == "torch":
        return reference.softclip(x, slope)
    return fused_op("softclip", name)(x, float(slope))


def color_transform(x: torch.Tensor, params: torch.Tensor, slope: float = 0.01, *,
                    backend: Optional[str] = None) -> torch.Tensor:
    """Per-channel gain and bias on the colour channels, then softclip; extra channels pass through.

    .. math:: y_c = \\mathrm{softclip}((1 + w_c)\\,x_c + b_c), \\quad c < C

    **Convention:** ``C = params.shape[1] // 2`` colour channels, interleaved ``(w_0, b_0, w_1, b_1, …)``.
    ``x`` holds the C colour channels first, then any extra channels (mask, canvas), which are returned
    unchanged. A grayscale image (1 colour channel, no extras) is expanded to C channels first.

    Args:
        x: ``(N, C + E, h, w)`` or ``(N, 1, h, w)``.
        params: ``(N, 2·C)`` raw head outputs.
        slope: softclip slope.
        backend: see :mod:`dtifast.ops._backend`.

    Returns:
        ``(N, C + E, h, w)``.

    Example:
        >>> color_transform(torch.rand(2, 4, 5, 5), torch.zeros(2, 6)).shape
        torch.Size([2, 4, 5, 5])
    """
    x, _ = check_color_inputs(x, params)
    name = select("color_transform", backend, x.device, x.dtype)
    if name == "torch":
        return reference.color_transform(x, params, slope)
    return fused_op("color_transform", name)(x, params, float(slope))


register(OpSpec("softclip", softclip, native=("softclip",), triton=True))
register(OpSpec("color_transform", color_transform, native=("color_transform",), triton=True))
