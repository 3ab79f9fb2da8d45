"""Fused render loss: position warp of the selected sprites → mask noise → compositing → squared error.

One program handles one image and a block of pixels; its L layers are sampled straight from sprite
space into a ``[LP, BLOCK]`` tile (colours one channel at a time, the mask kept), composited with
:mod:`dtifast.kernels.composite`'s tile helpers and compared with the target. Nothing of image size
is stored besides the per-block partial sums. The backward recomputes the forward in the same way and
produces the gradients of the sprites (atomics into each (layer, image) sprite: only pixels of one
image meet there), the position parameters and the occlusion (per-block partial sums), the background
and the target.

Placement of layer l (``F.affine_grid``, pixel centres, zeros padding): output location ``(x, y)`` (from
the ``basis`` of pixel-centre coordinates) reads the sprite at ``theta_l · (x, y, 1)``, ``theta_l`` the
layer's 2×3 matrix; with noise, the mask is ``softclip(mask + canvas · noise)`` after the warp.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .composite import composite_grads, visibility
from .sampling import (block_size, corners, gather4, interp, interp_grad, interpreted, scatter4, softclip,
                       softclip_grad, source_index)

BLOCK = 64


@triton.jit
def pixel_centres(basis_ptr, p, W, active, acc: tl.constexpr):
    """Normalised pixel-centre coordinates of flat pixel indices ``p`` (``F.affine_grid``,
    ``align_corners=False``), read from the ``(W + H,)`` basis (:func:`dtifast.ops.geometry.affine_basis`)."""
    xb = tl.load(basis_ptr + p % W, mask=active, other=0.0).to(acc)
    yb = tl.load(basis_ptr + W + p // W, mask=active, other=0.0).to(acc)
    return xb, yb


@triton.jit
def placement_coords(theta_ptr, xb, yb, h, w, active, ATEN_CPU: tl.constexpr, acc: tl.constexpr):
    """Sprite pixel location of output points for the 2×3 placement matrix at ``theta_ptr`` (scalars or
    per-row vectors broadcast against ``xb``), and d(pixel)/d(normalised) per axis."""
    t0 = tl.load(theta_ptr, mask=active, other=0.0).to(acc)
    t1 = tl.load(theta_ptr + 1, mask=active, other=0.0).to(acc)
    t2 = tl.load(theta_ptr + 2, mask=active, other=0.0).to(acc)
    t3 = tl.load(theta_ptr + 3, mask=active, other=0.0).to(acc)
    t4 = tl.load(theta_ptr + 4, mask=active, other=0.0).to(acc)
    t5 = tl.load(theta_ptr + 5, mask=active, other=0.0).to(acc)
    ix, dix = source_index(t0 * xb + t1 * yb + t2, w, False, ATEN_CPU)
    iy, diy = source_index(t3 * xb + t4 * yb + t5, h, False, ATEN_CPU)
    return ix, iy, dix, diy


@triton.jit
def _render_loss_kernel(partial_ptr, x_ptr, sp_ptr, theta_ptr, occ_ptr, bg_ptr, noise_ptr, basis_ptr,
                        B, C, H, W, h, w,
                        s_l, s_b, s_c, s_y, s_x, n_l, n_b, n_y, n_x,
                        L: tl.constexpr, LP: tl.constexpr, HAS_BG: tl.constexpr, HAS_NOISE: tl.constexpr,
                        ATEN_CPU: tl.constexpr, ACC64: tl.constexpr, BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    HW = H * W
    p = blk * BLOCK + tl.arange(0, BLOCK)
    rows = tl.arange(0, LP)
    active = p < HW
    live = (rows[:, None] < L) & active[None, :]
    xb, yb = pixel_centres(basis_ptr, p, W, active, acc)
    ix, iy, dix, diy = placement_coords(theta_ptr + (rows[:, None] * B + b) * 6, xb[None, :], yb[None, :], h, w,
                                        rows[:, None] < L, ATEN_CPU, acc)
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
def _render_loss_backward_kernel(dsp_ptr, dtheta_ptr, docc_ptr, dbg_ptr, dx_ptr, dnoise_ptr, gout_ptr,
                                 x_ptr, sp_ptr, theta_ptr, occ_ptr, bg_ptr, noise_ptr, basis_ptr,
                                 B, C, H, W, h, w, inv_numel,
                                 s_l, s_b, s_c, s_y, s_x, n_l, n_b, n_y, n_x,
                                 L: tl.constexpr, LP: tl.constexpr, HAS_BG: tl.constexpr, HAS_NOISE: tl.constexpr,
                                 NEED_DX: tl.constexpr, NEED_DNOISE: tl.constexpr, ATEN_CPU: tl.constexpr,
                                 ACC64: tl.constexpr, BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    n_blocks = tl.num_programs(1)
    HW = H * W
    p = blk * BLOCK + tl.arange(0, BLOCK)
    rows = tl.arange(0, LP)
    active = p < HW
    live = (rows[:, None] < L) & active[None, :]
    xb, yb = pixel_centres(basis_ptr, p, W, active, acc)
    ix, iy, dix, diy = placement_coords(theta_ptr + (rows[:, None] * B + b) * 6, xb[None, :], yb[None, :], h, w,
                                        rows[:, None] < L, ATEN_CPU, acc)
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
        if NEED_DNOISE:
            tl.store(dnoise_ptr + (rows[:, None] * B + b) * HW + p[None, :], (dm * canvas).to(dnoise_ptr.dtype.element_ty),
                     mask=live)
        dcanvas = dm * nz
        dvx, dvy = interp_grad(cv00, cv01, cv10, cv11, wx0, wx1, wy0, wy1)
        gix += dcanvas * dvx
        giy += dcanvas * dvy
        scatter4(dbase + (C + 1) * h * w, dcanvas, d00, d01, d10, d11, m00, m01, m10, m11, wx0, wx1, wy0, wy1)
    dvx, dvy = interp_grad(mv00, mv01, mv10, mv11, wx0, wx1, wy0, wy1)
    gix += dm * dvx
    giy += dm * dvy
    scatter4(dbase + C * h * w, dm, d00, d01, d10, d11, m00, m01, m10, m11, wx0, wx1, wy0, wy1)
    # Placement matrix: gx = t0·x + t1·y + t2, gy = t3·x + t4·y + t5 (per-block partial sums).
    dgx = tl.where(live, gix * dix, 0.0)
    dgy = tl.where(live, giy * diy, 0.0)
    out_theta = dtheta_ptr + ((b * n_blocks + blk) * L + rows) * 6
    tl.store(out_theta, tl.sum(dgx * xb[None, :], axis=1), mask=rows < L)
    tl.store(out_theta + 1, tl.sum(dgx * yb[None, :], axis=1), mask=rows < L)
    tl.store(out_theta + 2, tl.sum(dgx, axis=1), mask=rows < L)
    tl.store(out_theta + 3, tl.sum(dgy * xb[None, :], axis=1), mask=rows < L)
    tl.store(out_theta + 4, tl.sum(dgy * yb[None, :], axis=1), mask=rows < L)
    tl.store(out_theta + 5, tl.sum(dgy, axis=1), mask=rows < L)


def _common(sprites: torch.Tensor, noise: Optional[torch.Tensor]) -> tuple:
    noise_strides = (noise.stride(0), noise.stride(1), noise.stride(3), noise.stride(4)) if noise is not None \
        else (0, 0, 0, 0)
    return (*sprites.stride(), *noise_strides)


def _meta(sprites: torch.Tensor, background: Optional[torch.Tensor], noise: Optional[torch.Tensor], block: int) -> dict:
    L = sprites.shape[0]
    return dict(L=L, LP=triton.next_power_of_2(L), HAS_BG=background is not None, HAS_NOISE=noise is not None,
                ATEN_CPU=interpreted(), ACC64=sprites.dtype == torch.float64, BLOCK=block)


def render_loss_forward(x: torch.Tensor, sprites: torch.Tensor, theta: torch.Tensor, occlusion: torch.Tensor,
                        background: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                        basis: torch.Tensor) -> torch.Tensor:
    """Scalar MSE; ``sprites`` ``(L, B, C + E, h, w)`` and ``noise`` ``(L, B, 1, H, W)`` may have any strides."""
    B, C, H, W = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    block = block_size(BLOCK, H * W)
    n_blocks = triton.cdiv(H * W, block)
    partial = torch.zeros(B, n_blocks, dtype=acc, device=x.device)
    x, theta, occlusion, basis = x.contiguous(), theta.contiguous(), occlusion.contiguous(), basis.contiguous()
    bg = background.contiguous() if background is not None else x
    if partial.numel():
        _render_loss_kernel[(B, n_blocks)](
            partial, x, sprites, theta, occlusion, bg, noise if noise is not None else x, basis,
            B, C, H, W, sprites.shape[3], sprites.shape[4], *_common(sprites, noise),
            **_meta(sprites, background, noise, block))
    # An empty batch has no error to average: 0, not 0/0.
    return (partial.sum() / max(x.numel(), 1)).to(x.dtype)


def render_loss_backward(grad: torch.Tensor, x: torch.Tensor, sprites: torch.Tensor, theta: torch.Tensor,
                         occlusion: torch.Tensor, background: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                         basis: torch.Tensor, needs: tuple[bool, ...]) -> list[Optional[torch.Tensor]]:
    """Gradients to ``(x, sprites, theta, occlusion, background, noise)`` where ``needs`` asks for them
    (None otherwise, and for an absent background or noise); sprite gradients are contiguous."""
    need_x, need_sprites, need_theta, need_occ, need_bg, need_noise = needs
    B, C, H, W = x.shape
    L, _, CE, h, w = sprites.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    block = block_size(BLOCK, H * W)
    n_blocks = triton.cdiv(H * W, block)
    x, theta, occlusion, basis = x.contiguous(), theta.contiguous(), occlusion.contiguous(), basis.contiguous()
    dsp = torch.zeros(L, B, CE, h, w, dtype=acc, device=x.device)
    dtheta = torch.zeros(B, n_blocks, L, 6, dtype=acc, device=x.device)
    docc = torch.zeros(B, n_blocks, L, L, dtype=acc, device=x.device)
    dbg = torch.zeros_like(x) if background is not None else None
    dx = torch.zeros_like(x) if need_x else None
    need_noise = need_noise and noise is not None
    dnoise = torch.zeros(L, B, 1, H, W, dtype=x.dtype, device=x.device) if need_noise else None
    if B * n_blocks:
        _render_loss_backward_kernel[(B, n_blocks)](
            dsp, dtheta, docc, dbg if dbg is not None else x, dx if dx is not None else x,
            dnoise if dnoise is not None else x, grad.reshape(1),
            x, sprites, theta, occlusion, background.contiguous() if background is not None else x,
            noise if noise is not None else x, basis, B, C, H, W, h, w, 1.0 / max(x.numel(), 1),
            *_common(sprites, noise), NEED_DX=need_x, NEED_DNOISE=need_noise, **_meta(sprites, background, noise, block))
    return [dx,
            dsp.to(sprites.dtype) if need_sprites else None,
            dtheta.sum(1).transpose(0, 1).contiguous().to(theta.dtype) if need_theta else None,
            docc.sum(1).permute(1, 2, 0).contiguous().to(occlusion.dtype) if need_occ else None,
            dbg if need_bg else None,
            dnoise]
