"""Pointwise kernels: softclip and the per-channel colour transform (gain, bias, softclip), with backward.

The colour kernel runs one program per (image, channel) row and loops over its pixels, so the gain and
bias gradients are reduced in registers and written once per row: no atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .sampling import block_size, launch, softclip, softclip_grad

BLOCK = 256


@triton.jit(do_not_specialize=["numel"])  # numel follows the batch: a partial last batch must not recompile
def _softclip_kernel(out_ptr, x_ptr, grad_ptr, numel, slope, BACKWARD: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    active = offs < numel
    x = tl.load(x_ptr + offs, mask=active, other=0.0)
    acc = x.to(tl.float64) if x.dtype == tl.float64 else x.to(tl.float32)
    if BACKWARD:
        y = tl.load(grad_ptr + offs, mask=active, other=0.0).to(acc.dtype) * softclip_grad(acc, slope)
    else:
        y = softclip(acc, slope)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=active)


def softclip_forward(x: torch.Tensor, slope: float) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        block = block_size(BLOCK, x.numel())
        launch(_softclip_kernel, (triton.cdiv(x.numel(), block),), out, x, x, x.numel(), slope, BACKWARD=False,
               BLOCK=block)
    return out


def softclip_backward(grad: torch.Tensor, x: torch.Tensor, slope: float) -> torch.Tensor:
    x, grad = x.contiguous(), grad.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        block = block_size(BLOCK, x.numel())
        launch(_softclip_kernel, (triton.cdiv(x.numel(), block),), out, x, grad, x.numel(), slope, BACKWARD=True,
               BLOCK=block)
    return out


@triton.jit
def _color_kernel(out_ptr, dgb_ptr, x_ptr, par_ptr, grad_ptr, n_color, CE, HW, slope,
                  BACKWARD: tl.constexpr, ACC64: tl.constexpr, BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    n = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1)
    row = (n * CE + c) * HW
    gain = 1.0 + tl.load(par_ptr + n * 2 * n_color + 2 * c).to(acc)
    bias = tl.load(par_ptr + n * 2 * n_color + 2 * c + 1).to(acc)
    dgain = tl.zeros([BLOCK], dtype=acc)
    dbias = tl.zeros([BLOCK], dtype=acc)
    for start in range(0, HW, BLOCK):
        p = start + tl.arange(0, BLOCK)
        active = p < HW
        x = tl.load(x_ptr + row + p, mask=active, other=0.0).to(acc)
        z = gain * x + bias
        if BACKWARD:
            dz = tl.load(grad_ptr + row + p, mask=active, other=0.0).to(acc) * softclip_grad(z, slope)
            tl.store(out_ptr + row + p, (dz * gain).to(out_ptr.dtype.element_ty), mask=active)
            dgain += tl.where(active, dz * x, 0.0)
            dbias += tl.where(active, dz, 0.0)
        else:
            tl.store(out_ptr + row + p, softclip(z, slope).to(out_ptr.dtype.element_ty), mask=active)
    if BACKWARD:
        tl.store(dgb_ptr + n * 2 * n_color + 2 * c, tl.sum(dgain, axis=0))
        tl.store(dgb_ptr + n * 2 * n_color + 2 * c + 1, tl.sum(dbias, axis=0))


def color_forward(x: torch.Tensor, params: torch.Tensor, slope: float) -> torch.Tensor:
    """``x`` ``(N, C + E, h, w)`` with ``C = params.shape[1] // 2``; the extra channels are copied."""
    x, params = x.contiguous(), params.contiguous()
    N, CE, h, w = x.shape
    n_color = params.shape[1] // 2
    out = torch.empty_like(x)
    out[:, n_color:] = x[:, n_color:]
    if N and h * w:
        launch(_color_kernel, (N, n_color), out, out, x, params, x, n_color, CE, h * w, slope,
                                    BACKWARD=False, ACC64=x.dtype == torch.float64, BLOCK=block_size(BLOCK, h * w))
    return out


def color_backward(grad: torch.Tensor, x: torch.Tensor, params: torch.Tensor, slope: float
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients to ``x`` and ``params`` of :func:`color_forward`."""
    x, params, grad = x.contiguous(), params.contiguous(), grad.contiguous()
    N, CE, h, w = x.shape
    n_color = params.shape[1] // 2
    dx = torch.empty_like(x)
    dx[:, n_color:] = grad[:, n_color:]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    dparams = torch.zeros(params.shape, dtype=acc, device=x.device)
    if N and h * w:
        launch(_color_kernel, (N, n_color), dx, dparams, x, params, grad, n_color, CE, h * w, slope,
                                    BACKWARD=True, ACC64=x.dtype == torch.float64, BLOCK=block_size(BLOCK, h * w))
    return dx, dparams.to(params.dtype)
