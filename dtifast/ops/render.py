"""Fused render loss registered as ``dtifast::render_loss_triton`` with autograd (backward by recomputation).

(The module is not called ``render_loss`` because a submodule of that name would replace the public
``dtifast.ops.render_loss`` function on import.)

See :mod:`dtifast.kernels.render_loss`. Only the inputs are saved for the backward: the placed layers,
composite and residual of image size are recomputed there instead of stored.
"""
from __future__ import annotations

from typing import Optional

import torch

from dtifast.kernels import render_loss as kr

from ._checks import check_sprite_space_inputs

__all__ = ["render_loss"]


@torch.library.custom_op("dtifast::render_loss_triton", mutates_args=())
def _render_loss(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                 background: Optional[torch.Tensor], noise: Optional[torch.Tensor]) -> torch.Tensor:
    return kr.render_loss_forward(x, sprites, params, occlusion, background, noise)


@torch.library.register_fake("dtifast::render_loss_triton")
def _(x, sprites, params, occlusion, background, noise):
    return x.new_empty(())


@torch.library.custom_op("dtifast::render_loss_backward_triton", mutates_args=())
def _render_loss_backward(grad: torch.Tensor, x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor,
                          occlusion: torch.Tensor, background: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                          need_x: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dsp, dpar, docc, dbg = kr.render_loss_backward(grad, x, sprites, params, occlusion, background, noise, need_x)
    # A custom op returns tensors only: an empty tensor stands for "not requested" / "no background"
    # (two separate ones: outputs of a custom op must not alias each other).
    return dx if dx is not None else x.new_empty(0), dsp, dpar, docc, dbg if dbg is not None else x.new_empty(0)


@torch.library.register_fake("dtifast::render_loss_backward_triton")
def _(grad, x, sprites, params, occlusion, background, noise, need_x):
    like = lambda t: torch.empty_like(t, memory_format=torch.contiguous_format)  # noqa: E731
    return (like(x) if need_x else x.new_empty(0), like(sprites), like(params), like(occlusion),
            like(background) if background is not None else x.new_empty(0))


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    x, sprites, params, occlusion, background, noise = ctx.saved_tensors
    need = ctx.needs_input_grad
    dx, dsp, dpar, docc, dbg = _render_loss_backward(grad, x, sprites, params, occlusion, background, noise, need[0])
    return (dx if need[0] else None, dsp if need[1] else None, dpar if need[2] else None,
            docc if need[3] else None, dbg if background is not None and need[4] else None, None)


torch.library.register_autograd("dtifast::render_loss_triton", _backward, setup_context=_setup)


def render_loss(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                background: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused :func:`dtifast.ops.reference.render_loss`: place, composite, MSE in one kernel.

    Args:
        x: target images ``(B, C, H, W)``.
        sprites: selected sprites ``(L, B, C + E, h, w)`` (colours, mask, and canvas when ``noise`` is
            given); any strides (expanded views are read in place).
        params: ``(L, B, 3)`` position parameters ``(s, tx, ty)``.
        occlusion: ``(L, L, B)``.
        background: ``(B, C, H, W)`` or None (black).
        noise: ``(L, B, 1, H, W)`` scaled mask noise, or None. A constant: it gets no gradient.

    Returns:
        Scalar mean squared error over ``B, C, H, W``; gradients flow to every other input.
    """
    L = sprites.shape[0] if isinstance(sprites, torch.Tensor) and sprites.dim() == 5 else "L"
    check_sprite_space_inputs(x, sprites, params, occlusion, background, noise, ("L",), (L, x.shape[0]))
    if noise is not None and noise.requires_grad and torch.is_grad_enabled():
        raise ValueError("noise requires grad, but the fused render loss treats the mask noise as a constant; "
                         "pass noise.detach() or use backend='torch'")
    return _render_loss(x, sprites, params, occlusion, background, noise)
