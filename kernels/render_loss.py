"""Fused render loss: position warp of the selected sprites → mask noise → compositing → squared error.

One program handles one image and a block of pixels; its L layers are sampled straight from sprite
space into a ``[LP, BLOCK]`` tile (colours one channel at a time, the mask kept), composited with
:mod:`dtifast.kernels.composite`'s tile helpers and compared with the target. Nothing of image size
is stored besides the per-block partial sums. The backward recomputes the forward in the same way and
produces the gradients of the sprites (atomics into each (layer, image) sprite: only pixels of one
image meet there), the position parameters and the occlusion (per-block partial sums), the background
and the target.

Position transform of layer l (``F.affine_grid``, pixel centres, zeros padding): output location
``(x, y)`` reads the sprite at ``(a_l x + tx_l, a_l y + ty_l)`` with ``a_l = e^{s_l} + 1``; with noise,
the mask is ``softclip(mask + canvas · noise)`` after the warp.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .composite import composite_grads, visibility
from .sampling import block_size, corners, gather4, interp, interp_grad, scatter4, softclip, softclip_grad, source_index

BLOCK = 64


@triton.jit
def pixel_centres(p, H, W, acc: tl.constexpr):
    """Normalised pixel-centre coordinates (``F.affine_grid``, ``align_corners=False``) of flat indices."""
    xb = (2.0 * (p % W).to(acc) + 1.0) / W - 1.0
    yb = (2.0 * (p // W).to(acc) + 1.0) / H - 1.0
    return xb, yb


@triton.jit
def position_coords(par_ptr, xb, yb, h, w, active, acc: tl.constexpr):
    """Sprite pixel location of output points for position params ``(s, tx, ty)`` at ``par_ptr`` (scalars
    or per-row vectors broadcast against ``xb``); returns the location, d(pixel)/d(normalised) and
    the scale ``a = e^s + 1``."""
    a = tl.exp(tl.load(par_ptr, mask=active, other=0.0).to(acc)) + 1.0
    tx = tl.load(par_ptr + 1, mask=active, other=0.0).to(acc)
    ty = tl.load(par_ptr + 2, mask=active, other=0.0).to(acc)
    ix, dix = source_index(a * xb + tx, w, False)
    iy, diy = source_index(a * yb + ty, h, False)
    return ix, iy, dix, diy, a


@triton.jit
def _render_loss_kernel(partial_ptr, x_ptr, sp_ptr, par_ptr, occ_ptr, bg_ptr, noise_ptr,
                        B, C, H, W, h, w,
                        s_l, s_b, s_c, s_y, s_x, n_l, n_b, n_y, n_x,
                        L: tl.constexpr, LP: tl.constexpr, HAS_BG: tl.constexpr, HAS_NOISE: tl.constexpr,
                        ACC64: tl.constexpr, BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    HW = H * W
    p = blk * BLOCK + tl.arange(0, BLOCK)
    rows = tl.arange(0, LP)
    active = p < HW
    live = (rows[:, None] < L) & active[None, :]
    xb, yb = pixel_centres(p, H, W, acc)
    ix, iy, dix, diy, a = position_coords(par_ptr + (rows[:, None] * B + b) * 3, xb[None, :], yb[None, :], h, w,
                                          rows[:, None] < L, acc)
    o00, o01, o10, o11, m00, m01, m10, m11, wx0, wx1, wy0, wy1 = corners(ix, iy, h, w, s_y, s_x, live)
    base = sp_ptr + rows[:, None] * s_l + b * s_b
    v00, v01, v10, v11 = gather4(base + C * s_c, o00, o01, o10, o11, m00, m01, m10, m11, acc)
    m = interp(v00, v01, v10, v11, wx0, wx1, wy0, wy1)
    if HAS_NOISE:
        v00, v01, v10, v11 = gather4(base + (C + 1) * s_c, o00, o01, o10, o11, m00, m01, m10, m11, acc)
        canvas = interp(v00, v01, v10, v11, wx0, wx1, wy0, wy1)
        nz = tl.load(noise_ptr + rows[:, None] * n_l + b * n_b + (p // W)[None, :] * n_y + (p % W)[None, :] * n_x,
                     mask=live, other=0.0).to(acc)
        m = softclip(m + canvas * nz, 0.01)
    vis, vbg = visibility(m, occ_ptr, L * B, B, b, rows, L)
    weight = vis * m
    sse = tl.zeros([BLOCK], dtype=acc)
    for c in range(C):
        v00, v01, v10, v11 = gather4(base + c * s_c, o00, o01, o10, o11, m00, m01, m10, m11, acc)
        out = tl.sum(weight * interp(v00, v01, v10, v11, wx0, wx1, wy0, wy1), axis=0)
        if HAS_BG:
            out += vbg * tl.load(bg_ptr + (b * C + c) * HW + p, mask=active, other=0.0).to(acc)
        diff = out - tl.load(x_ptr + (b * C + c) * HW + p, mask=active, other=0.0).to(acc)
        sse += tl.where(active, diff * diff, 0.0)
    tl.store(partial_ptr + b * tl.num_programs(1) + blk, tl.sum(sse, axis=0))


@triton.jit
def _render_loss_backward_kernel(dsp_ptr, dpar_ptr, docc_ptr, dbg_ptr, dx_ptr, gout_ptr,
                                 x_ptr, sp_ptr, par_ptr, occ_ptr, bg_ptr, noise_ptr,
                                 B, C, H, W, h, w, inv_numel,
                                 s_l, s_b, s_c, s_y, s_x, n_l, n_b, n_y, n_x,
                                 L: tl.constexpr, LP: tl.constexpr, HAS_BG: tl.constexpr, HAS_NOISE: tl.constexpr,
                                 NEED_DX: tl.constexpr, ACC64: tl.constexpr, BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    n_blocks = tl.num_programs(1)
    HW = H * W
    p = blk * BLOCK + tl.arange(0, BLOCK)
    rows = tl.arange(0, LP)
    active = p < HW
    live = (rows[:, None] < L) & active[None, :]
    xb, yb = pixel_centres(p, H, W, acc)
    ix, iy, dix, diy, a = position_coords(par_ptr + (rows[:, None] * B + b) * 3, xb[None, :], yb[None, :], h, w,
                                          rows[:, None] < L, acc)
    o00, o01, o10, o11, m00, m01, m10, m11, wx0, wx1, wy0, wy1 = corners(ix, iy, h, w, s_y, s_x, live)
    # The sprite gradient buffer is contiguous (L, B, C + E, h, w).
    d00, d01, d10, d11, _, _, _, _, _, _, _, _ = corners(ix, iy, h, w, w, 1, live)
    base = sp_ptr + rows[:, None] * s_l + b * s_b
    dbase = dsp_ptr + (rows[:, None] * B + b) * (C + 1 + HAS_NOISE) * h * w
    mv00, mv01, mv10, mv11 = gather4(base + C * s_c, o00, o01, o10, o11, m00, m01, m10, m11, acc)
    m = interp(mv00, mv01, mv10, mv11, wx0, wx1, wy0, wy1)
    if HAS_NOISE:
        cv00, cv01, cv10, cv11 = gather4(base + (C + 1) * s_c, o00, o01, o10, o11, m00, m01, m10, m11, acc)
        canvas = interp(cv00, cv01, cv10, cv11, wx0, wx1, wy0, wy1)
        nz = tl.load(noise_ptr + rows[:, None] * n_l + b * n_b + (p // W)[None, :] * n_y + (p % W)[None, :] * n_x,
                     mask=live, other=0.0).to(acc)
        z = m + canvas * nz
        m = softclip(z, 0.01)
    vis, vbg = visibility(m, occ_ptr, L * B, B, b, rows, L)
    weight = vis * m
    # Recompute the residual per channel, then push its gradient through the composite.
    gscale = 2.0 * tl.load(gout_ptr).to(acc) * inv_numel
    G = tl.zeros_like(m)
    Gbg = tl.zeros([BLOCK], dtype=acc)
    gix = tl.zeros_like(m)
    giy = tl.zeros_like(m)
    for c in range(C):
        v00, v01, v10, v11 = gather4(base + c * s_c, o00, o01, o10, o11, m00, m01, m10, m11, acc)
        col = interp(v00, v01, v10, v11, wx0, wx1, wy0, wy1)
        out = tl.sum(weight * col, axis=0)
        if HAS_BG:
            bg = tl.load(bg_ptr + (b * C + c) * HW + p, mask=active, other=0.0).to(acc)
            out += vbg * bg
        target = tl.load(x_ptr + (b * C + c) * HW + p, mask=active, other=0.0).to(acc)
        g = tl.where(active, gscale * (out - target), 0.0)
        if NEED_DX:
            tl.store(dx_ptr + (b * C + c) * HW + p, (-g).to(dx_ptr.dtype.element_ty), mask=active)
        if HAS_BG:
            Gbg += g * bg
            tl.store(dbg_ptr + (b * C + c) * HW + p, (g * vbg).to(dbg_ptr.dtype.element_ty), mask=active)
        G += g[None, :] * col
        dcol = g[None, :] * weight
        dvx, dvy = interp_grad(v00, v01, v10, v11, wx0, wx1, wy0, wy1)
        gix += dcol * dvx
        giy += dcol * dvy
        scatter4(dbase + c * h * w, dcol, d00, d01, d10, d11, m00, m01, m10, m11, wx0, wx1, wy0, wy1)
    dm = composite_grads(m, vis, G, Gbg, occ_ptr, L * B, B, b, docc_ptr + (b * n_blocks + blk) * L * L, rows,
                         active, L, HAS_BG)
    if HAS_NOISE:
        dm = dm * softclip_grad(z, 0.01)
        dcanvas = dm * nz
        dvx, dvy = interp_grad(cv00, cv01, cv10, cv11, wx0, wx1, wy0, wy1)
        gix += dcanvas * dvx
        giy += dcanvas * dvy
        scatter4(dbase + (C + 1) * h * w, dcanvas, d00, d01, d10, d11, m00, m01, m10, m11, wx0, wx1, wy0, wy1)
    dvx, dvy = interp_grad(mv00, mv01, mv10, mv11, wx0, wx1, wy0, wy1)
    gix += dm * dvx
    giy += dm * dvy
    scatter4(dbase + C * h * w, dm, d00, d01, d10, d11, m00, m01, m10, m11, wx0, wx1, wy0, wy1)
    # Position parameters: d(gx)/d(a) = x, d(gx)/d(tx) = 1 (and y likewise); d(a)/d(s) = a − 1.
    dgx = tl.where(live, gix * dix, 0.0)
    dgy = tl.where(live, giy * diy, 0.0)
    da = tl.sum(dgx * xb[None, :] + dgy * yb[None, :], axis=1)
    out_par = dpar_ptr + ((b * n_blocks + blk) * L + rows) * 3
    a_row = tl.sum(a, axis=1)
    tl.store(out_par, da * (a_row - 1.0), mask=rows < L)
    tl.store(out_par + 1, tl.sum(dgx, axis=1), mask=rows < L)
    tl.store(out_par + 2, tl.sum(dgy, axis=1), mask=rows < L)


def _common(sprites: torch.Tensor, noise: Optional[torch.Tensor]) -> tuple:
    noise_strides = (noise.stride(0), noise.stride(1), noise.stride(3), noise.stride(4)) if noise is not None \
        else (0, 0, 0, 0)
    return (*sprites.stride(), *noise_strides)


def _meta(sprites: torch.Tensor, background: Optional[torch.Tensor], noise: Optional[torch.Tensor], block: int) -> dict:
    L = sprites.shape[0]
    return dict(L=L, LP=triton.next_power_of_2(L), HAS_BG=background is not None, HAS_NOISE=noise is not None,
                ACC64=sprites.dtype == torch.float64, BLOCK=block)


def render_loss_forward(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                        background: Optional[torch.Tensor], noise: Optional[torch.Tensor]) -> torch.Tensor:
    """Scalar MSE; ``sprites`` ``(L, B, C + E, h, w)`` and ``noise`` ``(L, B, 1, H, W)`` may have any strides."""
    B, C, H, W = x.shape
    L, _, _, h, w = sprites.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    block = block_size(BLOCK, H * W)
    n_blocks = triton.cdiv(H * W, block)
    partial = torch.zeros(B, n_blocks, dtype=acc, device=x.device)
    x, params, occlusion = x.contiguous(), params.contiguous(), occlusion.contiguous()
    bg = background.contiguous() if background is not None else x
    _render_loss_kernel[(B, n_blocks)](
        partial, x, sprites, params, occlusion, bg, noise if noise is not None else x,
        B, C, H, W, h, w, *_common(sprites, noise), **_meta(sprites, background, noise, block))
    return (partial.sum() / x.numel()).to(x.dtype)


def render_loss_backward(grad: torch.Tensor, x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor,
                         occlusion: torch.Tensor, background: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                         need_x: bool) -> tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor,
                                                Optional[torch.Tensor]]:
    """Gradients to ``x`` (if ``need_x``), sprites (contiguous), params, occlusion and background."""
    B, C, H, W = x.shape
    L, _, CE, h, w = sprites.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    block = block_size(BLOCK, H * W)
    n_blocks = triton.cdiv(H * W, block)
    x, params, occlusion = x.contiguous(), params.contiguous(), occlusion.contiguous()
    dsp = torch.zeros(L, B, CE, h, w, dtype=acc, device=x.device)
    dpar = torch.zeros(B, n_blocks, L, 3, dtype=acc, device=x.device)
    docc = torch.zeros(B, n_blocks, L, L, dtype=acc, device=x.device)
    dbg = torch.empty_like(x) if background is not None else None
    dx = torch.empty_like(x) if need_x else None
    _render_loss_backward_kernel[(B, n_blocks)](
        dsp, dpar, docc, dbg if dbg is not None else x, dx if dx is not None else x, grad.reshape(1),
        x, sprites, params, occlusion, background.contiguous() if background is not None else x,
        noise if noise is not None else x, B, C, H, W, h, w, 1.0 / x.numel(),
        *_common(sprites, noise), NEED_DX=need_x, **_meta(sprites, background, noise, block))
    dparams = dpar.sum(1).transpose(0, 1).contiguous().to(params.dtype)
    return dx, dsp.to(sprites.dtype), dparams, docc.sum(1).permute(1, 2, 0).contiguous().to(occlusion.dtype), dbg
