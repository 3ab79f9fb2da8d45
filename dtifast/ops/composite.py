"""Fused Triton layer compositing registered as ``dtifast::composite_layers_triton`` with autograd.

Forward and backward are single kernels over (image, pixel block) programs (see
:mod:`dtifast.kernels.composite`); the backward returns gradients for the layers, the masks, the
occlusion matrix (per-block partial sums, no atomics) and the background.
"""
from __future__ import annotations

from typing import Optional

import torch

from dtifast.kernels import composite as kc

from ._checks import check_composite_inputs

__all__ = ["composite_layers"]


@torch.library.custom_op("dtifast::composite_layers_triton", mutates_args=())
def _composite(layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
               background: Optional[torch.Tensor]) -> torch.Tensor:
    return kc.composite_forward(layers, masks, occlusion, background)


@torch.library.register_fake("dtifast::composite_layers_triton")
def _(layers, masks, occlusion, background):
    return layers.new_empty(layers.shape[1:])


@torch.library.custom_op("dtifast::composite_layers_backward_triton", mutates_args=())
def _composite_backward(grad: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                        background: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                    torch.Tensor]:
    dlayers, dmasks, docc, dbg = kc.composite_backward(grad, layers, masks, occlusion, background)
    # A custom op returns tensors only: an empty tensor stands for "no background".
    return dlayers, dmasks, docc, dbg if dbg is not None else layers.new_empty(0)


@torch.library.register_fake("dtifast::composite_layers_backward_triton")
def _(grad, layers, masks, occlusion, background):
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    return like(layers), like(masks), like(occlusion), like(background) if background is not None else layers.new_empty(0)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    layers, masks, occlusion, background = ctx.saved_tensors
    dlayers, dmasks, docc, dbg = _composite_backward(grad, layers, masks, occlusion, background)
    need = ctx.needs_input_grad
    return (dlayers if need[0] else None, dmasks if need[1] else None, docc if need[2] else None,
            dbg if background is not None and need[3] else None)


torch.library.register_autograd("dtifast::composite_layers_triton", _backward, setup_context=_setup)


def composite_layers(layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                     background: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused :func:`dtifast.ops.reference.composite_layers`.

    .. math:: \\mathrm{out} = \\sum_k \\prod_{j \\ne k} (1 - o_{jk}\\, m_j)\\; m_k\\, x_k
              \\; + \\prod_j (1 - m_j)\\, \\mathrm{bg}

    Args:
        layers: ``(L, B, C, H, W)``; masks: ``(L, B, 1, H, W)``; occlusion: ``(L, L, B)`` (diagonal ignored);
        background: ``(B, C, H, W)`` or None.

    Returns:
        ``(B, C, H, W)``.
    """
    check_composite_inputs(layers, masks, occlusion, background)
    return _composite(layers, masks, occlusion, background)
