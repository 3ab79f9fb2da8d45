"""Occlusion-aware layer compositing, forward and backward, on ``[LP, BLOCK]`` tiles (layers × pixels).

.. math:: \\mathrm{out} = \\sum_k v_k\\, m_k\\, x_k + v_{bg}\\, bg, \\quad
          v_k = \\prod_{j \\ne k} (1 - o_{jk} m_j), \\quad v_{bg} = \\prod_j (1 - m_j)

Register layout: a program covers ``BLOCK = 32 · NUM_WARPS`` pixels, one per thread, and a thread keeps
all L layers of its pixel in registers. Every value is a 2-D ``[R, BLOCK]`` tile (R layers, channels or
1) of one layout, so the compiler never converts between layouts; tiles are built from one-row loads
(:func:`load_rows`), never loaded as 2-D blocks: a 2-D load along contiguous pixels would make the
compiler vectorise it and spread a pixel's layers over threads and warps, so every product or sum over
the layers would go through shared memory (and the kernels spilled at L = 6). With a pixel's layers in
one thread, :func:`row` and the products over layers are register moves and multiplies.

Loops that load or store (over layers, channels) are runtime loops, not unrolled: each unrolled memory
operation costs the compiler's coalescing pass time over the whole kernel (the render-loss backward took
minutes to compile unrolled), and a loop body keeps one iteration's values live, not all of them.

The tile helpers (:func:`load_rows`, :func:`row`, :func:`visibility`, :func:`composite_grads`) are shared
with the render-loss and greedy kernels.

Gradients: with ``G_k = Σ_c g_c x_kc`` and ``P_jk = Π_{i ∉ {j,k}} (1 − o_ik m_i)`` (no division, so
``o·m = 1`` is fine):
``∂/∂m_j = v_j G_j − Σ_{k≠j} o_jk P_jk m_k G_k − Π_{i≠j}(1 − m_i) G_bg`` and
``∂/∂o_jk = −Σ_pixels m_j P_jk m_k G_k``, written as per-block partial sums that the launcher adds.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .sampling import block_size, launch

NUM_WARPS = 4
BLOCK = 32 * NUM_WARPS  # one pixel per thread (see the module docstring)


@triton.jit
def row(tile, rows, k):
    """Row ``k`` of an ``[R, BLOCK]`` tile as a ``[1, BLOCK]`` row (a register move: rows live in-thread);
    ``rows`` is ``tl.arange(0, R)[:, None]``."""
    return tl.sum(tl.where(rows == k, tile, 0.0), axis=0, keep_dims=True)


@triton.jit
def with_row(tile, rows, k, values):
    """``tile`` with row ``k`` replaced by the ``[1, BLOCK]`` row ``values``."""
    return tl.where(rows == k, values, tile)


@triton.jit
def total(x):
    """Sum of every element of a tile (a scalar: one reduction over the block's pixels)."""
    return tl.sum(tl.sum(x, axis=1), axis=0)


@triton.jit
def load_rows(ptr, row_stride, p, active, rows, L: tl.constexpr, acc: tl.constexpr):
    """The ``[R, BLOCK]`` tile whose row l < L is ``ptr[l·row_stride + p]`` (0 elsewhere), in ``acc``, from L
    one-row loads (see the module docstring for why not one 2-D load); ``p``, ``active``: ``[1, BLOCK]``."""
    tile = tl.zeros([rows.shape[0], p.shape[1]], dtype=acc)
    for l in range(L):
        tile = with_row(tile, rows, l, tl.load(ptr + l * row_stride + p, mask=active, other=0.0).to(acc))
    return tile


@triton.jit
def store_rows(ptr, row_stride, p, active, tile, rows, L: tl.constexpr):
    """Store rows l < L of an ``[R, BLOCK]`` tile to ``ptr[l·row_stride + p]`` (in ``ptr``'s dtype)."""
    for l in range(L):
        tl.store(ptr + l * row_stride + p, row(tile, rows, l).to(ptr.dtype.element_ty), mask=active)


@triton.jit
def occlusion_column(occ_ptr, s_oj, s_ok, b, k, rows, L: tl.constexpr, like):
    """``o[:, k, b]`` as an ``[LP, 1]`` column of ``like``'s dtype, 0 on the diagonal and the padding rows."""
    return tl.load(occ_ptr + rows * s_oj + k * s_ok + b, mask=(rows < L) & (rows != k), other=0.0).to(like.dtype)


@triton.jit
def occluders(m, occ_ptr, s_oj, s_ok, b, k, rows, L: tl.constexpr):
    """Tile of the factors ``1 − o_ik m_i`` by which layer i hides layer k (row k, and rows >= L: 1; the
    padding rows of ``m`` are 0)."""
    return 1.0 - occlusion_column(occ_ptr, s_oj, s_ok, b, k, rows, L, m) * m


@triton.jit
def product_of_rows(tile, rows, L: tl.constexpr):
    """Product of rows ``0..L-1`` of a tile, as a ``[1, BLOCK]`` row."""
    out = row(tile, rows, 0)
    for i in tl.static_range(1, L):
        out = out * row(tile, rows, i)
    return out


@triton.jit
def visibility(m, occ_ptr, s_oj, s_ok, b, rows, L: tl.constexpr):
    """Visibility tile ``v`` (``[LP, BLOCK]``) of every layer and ``v_bg`` (``[1, BLOCK]``) of the background,
    from the mask tile ``m`` (rows >= L are ignored)."""
    vis = tl.zeros_like(m)
    for k in tl.static_range(L):
        vis = with_row(vis, rows, k, product_of_rows(occluders(m, occ_ptr, s_oj, s_ok, b, k, rows, L), rows, L))
    return vis, product_of_rows(1.0 - m, rows, L)


@triton.jit
def products_of_the_others(f, scale, rows, L: tl.constexpr):
    """Tile whose row j is ``scale · Π_{i≠j} f_i`` over rows ``i < L`` of ``f`` (rows >= L: 0), from the
    products before and after j: O(L), no division (a factor may be 0)."""
    out = tl.zeros_like(f)
    before = scale
    for j in tl.static_range(L):
        out = with_row(out, rows, j, before)
        before = before * row(f, rows, j)
    after = tl.zeros_like(scale) + 1.0
    for j in tl.static_range(L - 1, -1, -1):
        out = with_row(out, rows, j, row(out, rows, j) * after)
        after = after * row(f, rows, j)
    return out


@triton.jit
def composite_grads(m, vis, G, Gbg, occ_ptr, s_oj, s_ok, b, docc_ptr, rows, active,
                    L: tl.constexpr, HAS_BG: tl.constexpr):
    """Mask gradient tile ``∂/∂m`` from ``G`` (``[LP, BLOCK]``) and ``G_bg`` (``[1, BLOCK]``); stores this
    block's partial ``∂/∂o`` (an ``L×L`` row-major block at ``docc_ptr``)."""
    dm = vis * G
    for k in tl.static_range(L):
        # Row j: P_jk m_k G_k with P_jk = Π_{i ∉ {j, k}} (1 − o_ik m_i) (the factors' row k is 1).
        mG_k = tl.where(active, row(m, rows, k) * row(G, rows, k), 0.0)
        terms = products_of_the_others(occluders(m, occ_ptr, s_oj, s_ok, b, k, rows, L), mG_k, rows, L)
        dm = dm - occlusion_column(occ_ptr, s_oj, s_ok, b, k, rows, L, m) * terms
        # ∂/∂o_jk of the block: one reduction over the pixels for the whole column k.
        tl.store(docc_ptr + rows * L + k, -tl.sum(m * terms, axis=1, keep_dims=True), mask=(rows < L) & (rows != k))
    if HAS_BG:
        dm = dm - products_of_the_others(1.0 - m, Gbg, rows, L)
    return dm


@triton.jit(do_not_specialize=["B"])
def _composite_forward_kernel(out_ptr, layers_ptr, masks_ptr, occ_ptr, bg_ptr, B, C, HW,
                              L: tl.constexpr, LP: tl.constexpr, HAS_BG: tl.constexpr, ACC64: tl.constexpr,
                              BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    p = (tl.program_id(1) * BLOCK + tl.arange(0, BLOCK))[None, :]
    rows = tl.arange(0, LP)[:, None]
    active = p < HW
    # layers (L, B, C, HW), masks (L, B, HW), occlusion (L, L, B), background (B, C, HW): contiguous
    m = load_rows(masks_ptr + b * HW, B * HW, p, active, rows, L, acc)
    vis, vbg = visibility(m, occ_ptr, L * B, B, b, rows, L)
    weight = vis * m
    for c in range(C):
        x = load_rows(layers_ptr + (b * C + c) * HW, B * C * HW, p, active, rows, L, acc)
        out = tl.sum(weight * x, axis=0, keep_dims=True)
        if HAS_BG:
            out += vbg * tl.load(bg_ptr + (b * C + c) * HW + p, mask=active, other=0.0).to(acc)
        tl.store(out_ptr + (b * C + c) * HW + p, out.to(out_ptr.dtype.element_ty), mask=active)


@triton.jit(do_not_specialize=["B"])
def _composite_backward_kernel(dlayers_ptr, dmasks_ptr, docc_ptr, dbg_ptr, grad_ptr, layers_ptr, masks_ptr, occ_ptr,
                               bg_ptr, B, C, HW, n_blocks,
                               L: tl.constexpr, LP: tl.constexpr, HAS_BG: tl.constexpr, ACC64: tl.constexpr,
                               BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    p = (blk * BLOCK + tl.arange(0, BLOCK))[None, :]
    rows = tl.arange(0, LP)[:, None]
    active = p < HW
    m = load_rows(masks_ptr + b * HW, B * HW, p, active, rows, L, acc)
    vis, vbg = visibility(m, occ_ptr, L * B, B, b, rows, L)
    weight = vis * m
    G = tl.zeros_like(m)
    Gbg = tl.zeros_like(vbg)
    for c in range(C):
        g = tl.load(grad_ptr + (b * C + c) * HW + p, mask=active, other=0.0).to(acc)
        x = load_rows(layers_ptr + (b * C + c) * HW, B * C * HW, p, active, rows, L, acc)
        G += g * x
        store_rows(dlayers_ptr + (b * C + c) * HW, B * C * HW, p, active, g * weight, rows, L)
        if HAS_BG:
            bg = tl.load(bg_ptr + (b * C + c) * HW + p, mask=active, other=0.0).to(acc)
            Gbg += g * bg
            tl.store(dbg_ptr + (b * C + c) * HW + p, (g * vbg).to(dbg_ptr.dtype.element_ty), mask=active)
    dm = composite_grads(m, vis, G, Gbg, occ_ptr, L * B, B, b, docc_ptr + (b * n_blocks + blk) * L * L, rows,
                         active, L, HAS_BG)
    store_rows(dmasks_ptr + b * HW, B * HW, p, active, dm, rows, L)


def _meta(layers: torch.Tensor, block: int) -> dict:
    L = layers.shape[0]
    return dict(L=L, LP=triton.next_power_of_2(L), ACC64=layers.dtype == torch.float64, BLOCK=block,
                num_warps=NUM_WARPS)


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
    launch(_composite_forward_kernel, (B, triton.cdiv(H * W, block)),
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
    dlayers = torch.zeros_like(layers)
    dmasks = torch.zeros_like(masks)
    dbg = torch.zeros_like(background, memory_format=torch.contiguous_format) if background is not None else None
    partial = torch.zeros(B, n_blocks, L, L, dtype=acc, device=layers.device)
    if grad.numel():
        launch(_composite_backward_kernel, (B, n_blocks),
            dlayers, dmasks, partial, dbg if dbg is not None else dlayers, grad, layers, masks, occlusion,
            background.contiguous() if background is not None else layers, B, C, H * W, n_blocks,
            HAS_BG=background is not None, **_meta(layers, block))
    docc = partial.sum(1).permute(1, 2, 0).contiguous().to(occlusion.dtype)
    return dlayers, dmasks, docc, dbg
