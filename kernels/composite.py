"""Occlusion-aware layer compositing, forward and backward, on ``[LP, BLOCK]`` tiles (layers × pixels).

.. math:: \\mathrm{out} = \\sum_k v_k\\, m_k\\, x_k + v_{bg}\\, bg, \\quad
          v_k = \\prod_{j \\ne k} (1 - o_{jk} m_j), \\quad v_{bg} = \\prod_j (1 - m_j)

All L masks of a pixel block live in registers as one tile, so the visibilities and their gradients
need no scratch memory. The tile helpers (:func:`visibility`, :func:`composite_grads`) are shared with
the render-loss kernel, which samples its layers from sprite space instead of loading them.

Gradients: with ``G_k = Σ_c g_c x_kc`` and ``P_jk = Π_{i ∉ {j,k}} (1 − o_ik m_i)`` (no division, so
``o·m = 1`` is fine):
``∂/∂m_j = v_j G_j − o_jk P_jk m_k G_k (summed over k ≠ j) − Π_{i≠j}(1 − m_i) G_bg`` and
``∂/∂o_jk = −Σ_pixels m_j P_jk m_k G_k``, written as per-block partial sums that the launcher adds.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .sampling import block_size

BLOCK = 128


@triton.jit
def prod_rows(tile, rows, L: tl.constexpr, skip: tl.constexpr):
    """Product over rows ``0..L-1`` of a ``[LP, BLOCK]`` tile, leaving out row ``skip`` (-1: none).

    Unrolled row by row (L is tiny): Triton's interpreter runs a custom-combine ``tl.reduce`` in
    Python element by element, which made CPU tests crawl; row sums vectorise everywhere.
    """
    acc = tl.sum(tl.zeros_like(tile), axis=0) + 1.0
    for i in tl.static_range(L):
        if i != skip:
            acc = acc * row(tile, rows, i)
    return acc


@triton.jit
def row(tile, rows, k):
    """Row ``k`` of a ``[LP, BLOCK]`` tile as a ``[BLOCK]`` vector."""
    return tl.sum(tl.where(rows[:, None] == k, tile, 0.0), axis=0)


@triton.jit
def occ_column(occ_ptr, s_oj, s_ok, b, k, rows, L: tl.constexpr):
    """``o[:, k, b]`` as an ``[LP]`` vector with the diagonal and padding rows set to 0."""
    return tl.load(occ_ptr + rows * s_oj + k * s_ok + b, mask=(rows < L) & (rows != k), other=0.0)


@triton.jit
def visibility(m, occ_ptr, s_oj, s_ok, b, rows, L: tl.constexpr):
    """Visibility tile ``v`` (``[LP, BLOCK]``) of every layer and ``v_bg`` (``[BLOCK]``) of the background.

    Padding rows of ``m`` must be 0 (they then contribute factors of 1).
    """
    vis = tl.zeros_like(m)
    for k in tl.static_range(L):
        o_col = occ_column(occ_ptr, s_oj, s_ok, b, k, rows, L).to(m.dtype)
        vk = prod_rows(1.0 - o_col[:, None] * m, rows, L, -1)
        vis = tl.where(rows[:, None] == k, vk[None, :], vis)
    vbg = prod_rows(1.0 - m, rows, L, -1)
    return vis, vbg


@triton.jit
def composite_grads(m, vis, G, Gbg, occ_ptr, s_oj, s_ok, b, docc_ptr, rows, active,
                    L: tl.constexpr, HAS_BG: tl.constexpr):
    """Mask gradient tile ``∂/∂m`` from ``G`` (``[LP, BLOCK]``) and ``G_bg`` (``[BLOCK]``); stores this block's
    partial ``∂/∂o`` (an ``L×L`` row-major block at ``docc_ptr``)."""
    dm = vis * G
    if HAS_BG:
        for j in tl.static_range(L):
            others = prod_rows(1.0 - m, rows, L, j)
            dm = tl.where(rows[:, None] == j, dm - (others * Gbg)[None, :], dm)
    for k in tl.static_range(L):
        o_col = occ_column(occ_ptr, s_oj, s_ok, b, k, rows, L).to(m.dtype)
        f = 1.0 - o_col[:, None] * m
        mG_k = tl.where(active, row(m, rows, k) * row(G, rows, k), 0.0)
        for j in tl.static_range(L):
            if j != k:
                p_jk = prod_rows(f, rows, L, j)
                term = p_jk * mG_k
                o_jk = tl.sum(tl.where(rows == j, o_col, 0.0), axis=0)
                dm = tl.where(rows[:, None] == j, dm - o_jk * term[None, :], dm)
                tl.store(docc_ptr + j * L + k, -tl.sum(row(m, rows, j) * term, axis=0))
    return dm


@triton.jit
def _composite_forward_kernel(out_ptr, layers_ptr, masks_ptr, occ_ptr, bg_ptr, B, C, HW,
                              L: tl.constexpr, LP: tl.constexpr, HAS_BG: tl.constexpr, ACC64: tl.constexpr,
                              BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    rows = tl.arange(0, LP)
    active = p < HW
    tile_mask = (rows[:, None] < L) & active[None, :]
    # layers (L, B, C, HW), masks (L, B, HW), occlusion (L, L, B), background (B, C, HW): contiguous
    m = tl.load(masks_ptr + (rows[:, None] * B + b) * HW + p[None, :], mask=tile_mask, other=0.0).to(acc)
    vis, vbg = visibility(m, occ_ptr, L * B, B, b, rows, L)
    weight = vis * m
    for c in range(C):
        x = tl.load(layers_ptr + ((rows[:, None] * B + b) * C + c) * HW + p[None, :], mask=tile_mask, other=0.0)
        out = tl.sum(weight * x.to(acc), axis=0)
        if HAS_BG:
            out += vbg * tl.load(bg_ptr + (b * C + c) * HW + p, mask=active, other=0.0).to(acc)
        tl.store(out_ptr + (b * C + c) * HW + p, out.to(out_ptr.dtype.element_ty), mask=active)


@triton.jit
def _composite_backward_kernel(dlayers_ptr, dmasks_ptr, docc_ptr, dbg_ptr, grad_ptr, layers_ptr, masks_ptr, occ_ptr,
                               bg_ptr, B, C, HW, n_blocks,
                               L: tl.constexpr, LP: tl.constexpr, HAS_BG: tl.constexpr, ACC64: tl.constexpr,
                               BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    p = blk * BLOCK + tl.arange(0, BLOCK)
    rows = tl.arange(0, LP)
    active = p < HW
    tile_mask = (rows[:, None] < L) & active[None, :]
    m_offs = (rows[:, None] * B + b) * HW + p[None, :]
    m = tl.load(masks_ptr + m_offs, mask=tile_mask, other=0.0).to(acc)
    vis, vbg = visibility(m, occ_ptr, L * B, B, b, rows, L)
    weight = vis * m
    G = tl.zeros_like(m)
    Gbg = tl.zeros([BLOCK], dtype=acc)
    for c in range(C):
        g = tl.load(grad_ptr + (b * C + c) * HW + p, mask=active, other=0.0).to(acc)
        x_offs = ((rows[:, None] * B + b) * C + c) * HW + p[None, :]
        x = tl.load(layers_ptr + x_offs, mask=tile_mask, other=0.0).to(acc)
        G += g[None, :] * x
        tl.store(dlayers_ptr + x_offs, (g[None, :] * weight).to(dlayers_ptr.dtype.element_ty), mask=tile_mask)
        if HAS_BG:
            bg = tl.load(bg_ptr + (b * C + c) * HW + p, mask=active, other=0.0).to(acc)
            Gbg += g * bg
            tl.store(dbg_ptr + (b * C + c) * HW + p, (g * vbg).to(dbg_ptr.dtype.element_ty), mask=active)
    dm = composite_grads(m, vis, G, Gbg, occ_ptr, L * B, B, b, docc_ptr + (b * n_blocks + blk) * L * L, rows,
                         active, L, HAS_BG)
    tl.store(dmasks_ptr + m_offs, dm.to(dmasks_ptr.dtype.element_ty), mask=tile_mask)


def _meta(layers: torch.Tensor, block: int) -> dict:
    L = layers.shape[0]
    return dict(L=L, LP=triton.next_power_of_2(L), ACC64=layers.dtype == torch.float64, BLOCK=block)


def composite_forward(layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                      background: Optional[torch.Tensor]) -> torch.Tensor:
    """``(L, B, C, H, W)``, ``(L, B, 1, H, W)``, ``(L, L, B)``, ``(B, C, H, W)`` or None → ``(B, C, H, W)``."""
    L, B, C, H, W = layers.shape
    out = torch.empty(B, C, H, W, dtype=layers.dtype, device=layers.device)
    if out.numel() == 0:
        return out
    layers, masks, occlusion = layers.contiguous(), masks.contiguous(), occlusion.contiguous()
    bg = background.contiguous() if background is not None else out
    block = block_size(BLOCK, H * W)
    _composite_forward_kernel[(B, triton.cdiv(H * W, block))](
        out, layers, masks, occlusion, bg, B, C, H * W, HAS_BG=background is not None, **_meta(layers, block))
    return out


def composite_backward(grad: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                       background: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   Optional[torch.Tensor]]:
    """Gradients of :func:`composite_forward` to layers, masks, occlusion and background (None without one)."""
    L, B, C, H, W = layers.shape
    block = block_size(BLOCK, H * W)
    n_blocks = triton.cdiv(H * W, block)
    acc = torch.float64 if layers.dtype == torch.float64 else torch.float32
    layers, masks, occlusion, grad = layers.contiguous(), masks.contiguous(), occlusion.contiguous(), grad.contiguous()
    dlayers = torch.empty_like(layers)
    dmasks = torch.empty_like(masks)
    dbg = torch.empty_like(background, memory_format=torch.contiguous_format) if background is not None else None
    partial = torch.zeros(B, n_blocks, L, L, dtype=acc, device=layers.device)
    if grad.numel():
        _composite_backward_kernel[(B, n_blocks)](
            dlayers, dmasks, partial, dbg if dbg is not None else dlayers, grad, layers, masks, occlusion,
            background.contiguous() if background is not None else layers, B, C, H * W, n_blocks,
            HAS_BG=background is not None, **_meta(layers, block))
    else:
        dlayers.zero_(), dmasks.zero_()
        if dbg is not None:
            dbg.zero_()
    docc = partial.sum(1).permute(1, 2, 0).contiguous().to(occlusion.dtype)
    return dlayers, dmasks, docc, dbg
