"""Greedy sprite selection: K×B candidate scores per layer without any K×B×C×H×W tensor.

For layer l, with the other layers' current choices fixed, the composite with candidate ``(x_l, m_l)`` is

.. math:: \\mathrm{out} = S_0 - m_l S_1 + A_l m_l x_l

where ``T_k = Π_{j ∉ {k,l}} (1 − o_jk m_j) m_k x_k`` is the contribution of layer k ≠ l without layer l,
``T_bg = Π_{j≠l} (1 − m_j) bg``, ``S0 = Σ T_k + T_bg``, ``S1 = Σ o_lk T_k + T_bg`` and
``A_l = Π_{j≠l} (1 − o_jl m_j)``. A prep kernel computes ``R = S0 − x``, ``S1`` and ``A`` for the layer
(image-size, once per layer); the scoring kernel then reads each candidate — sampled from sprite space
with the layer's position warp, mask noise and softclip on the fly, or read from image space — and
reduces ``Σ (R − m S1 + A m x_l)²`` per (k, b). The chosen candidates are then written into the current
layers by the same kernel in store mode.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .composite import NUM_WARPS, load_rows, row, visibility, with_row
from .render_loss import pixel_centres, placement_coords
from .sampling import block_size, corners, gather4, interp, interpreted, launch, softclip

BLOCK = 32 * NUM_WARPS  # one pixel per thread in the prep kernel's layer tiles (see kernels/composite.py)


@triton.jit(do_not_specialize=["l", "B"])
def _prep_kernel(r_ptr, s1_ptr, a_ptr, x_ptr, cur_col_ptr, cur_m_ptr, occ_ptr, bg_ptr, l, B, C, HW,
                 L: tl.constexpr, LP: tl.constexpr, HAS_BG: tl.constexpr, ACC64: tl.constexpr, BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    p = (tl.program_id(1) * BLOCK + tl.arange(0, BLOCK))[None, :]
    rows = tl.arange(0, LP)[:, None]
    active = p < HW
    # Layer l is left out (mask 0): the visibilities are then those without l, and T_l = 0.
    m = with_row(load_rows(cur_m_ptr + b * HW, B * HW, p, active, rows, L, acc), rows, l, 0.0)
    vis, vbg = visibility(m, occ_ptr, L * B, B, b, rows, L)
    o_row = tl.load(occ_ptr + l * L * B + rows * B + b, mask=(rows < L) & (rows != l), other=0.0).to(acc)
    weight = vis * m
    for c in range(C):
        col = load_rows(cur_col_ptr + (b * C + c) * HW, B * C * HW, p, active, rows, L, acc)
        s0 = tl.sum(weight * col, axis=0, keep_dims=True)
        s1 = tl.sum(o_row * weight * col, axis=0, keep_dims=True)
        if HAS_BG:
            t_bg = vbg * tl.load(bg_ptr + (b * C + c) * HW + p, mask=active, other=0.0).to(acc)
            s0 += t_bg
            s1 += t_bg
        target = tl.load(x_ptr + (b * C + c) * HW + p, mask=active, other=0.0).to(acc)
        tl.store(r_ptr + (b * C + c) * HW + p, s0 - target, mask=active)
        tl.store(s1_ptr + (b * C + c) * HW + p, s1, mask=active)
    tl.store(a_ptr + b * HW + p, row(vis, rows, l), mask=active)


# Arguments that change with the batch size or the layer: not specialised (a partial last batch must not
# recompile); the per-layer slices (candidates[l], theta[l], the current layer) start at offsets whose
# alignment changes with the batch size too.
SCORE_BATCH_ARGS = ["B", "s_k", "m_k"]
SCORE_SLICES = ["out_col_ptr", "out_m_ptr", "cand_ptr", "mask_ptr", "theta_ptr"]


@triton.jit(do_not_specialize=SCORE_BATCH_ARGS, do_not_specialize_on_alignment=SCORE_SLICES)
def _score_kernel(dist_ptr, choice_ptr, out_col_ptr, out_m_ptr, r_ptr, s1_ptr, a_ptr,
                  cand_ptr, mask_ptr, theta_ptr, noise_ptr, basis_ptr, B, C, H, W, h, w, inv_numel,
                  s_k, s_b, s_c, s_y, s_x, m_k, m_b, m_y, m_x, n_k, n_y, n_x,
                  SPRITE: tl.constexpr, HAS_NOISE: tl.constexpr, STORE: tl.constexpr, ATEN_CPU: tl.constexpr,
                  ACC64: tl.constexpr, BLOCK: tl.constexpr):
    """Score candidate (k, b) of one layer (grid (K, B)), or in STORE mode write candidate
    ``choice[b]`` into the current layer (grid (1, B))."""
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    b = tl.program_id(1).to(tl.int64)
    if STORE:
        k = tl.load(choice_ptr + b).to(tl.int64)
    else:
        k = tl.program_id(0).to(tl.int64)
    HW = H * W
    base = cand_ptr + k * s_k + b * s_b
    err = tl.zeros([BLOCK], dtype=acc)
    for start in range(0, HW, BLOCK):
        p = start + tl.arange(0, BLOCK)
        active = p < HW
        py = p // W
        px = p % W
        if SPRITE:
            xb, yb = pixel_centres(basis_ptr, p, W, active, acc)
            ix, iy, _, _ = placement_coords(theta_ptr + b * 6, xb, yb, h, w, ATEN_CPU, acc)
            o00, o01, o10, o11, m00, m01, m10, m11, wx0, wx1, wy0, wy1 = corners(ix, iy, h, w, s_y, s_x, active)
            v00, v01, v10, v11 = gather4(base + C * s_c, o00, o01, o10, o11, m00, m01, m10, m11, acc)
            m = interp(v00, v01, v10, v11, wx0, wx1, wy0, wy1)
            if HAS_NOISE:
                v00, v01, v10, v11 = gather4(base + (C + 1) * s_c, o00, o01, o10, o11, m00, m01, m10, m11, acc)
                canvas = interp(v00, v01, v10, v11, wx0, wx1, wy0, wy1)
                nz = tl.load(noise_ptr + k * n_k + py * n_y + px * n_x, mask=active, other=0.0).to(acc)
                m = softclip(m + canvas * nz, 0.01)
        else:
            m = tl.load(mask_ptr + k * m_k + b * m_b + py * m_y + px * m_x, mask=active, other=0.0).to(acc)
        if STORE:
            tl.store(out_m_ptr + b * HW + p, m.to(out_m_ptr.dtype.element_ty), mask=active)
        else:
            am = tl.load(a_ptr + b * HW + p, mask=active, other=0.0).to(acc) * m
        for c in range(C):
            if SPRITE:
                v00, v01, v10, v11 = gather4(base + c * s_c, o00, o01, o10, o11, m00, m01, m10, m11, acc)
                col = interp(v00, v01, v10, v11, wx0, wx1, wy0, wy1)
            else:
                col = tl.load(base + c * s_c + py * s_y + px * s_x, mask=active, other=0.0).to(acc)
            if STORE:
                tl.store(out_col_ptr + (b * C + c) * HW + p, col.to(out_col_ptr.dtype.element_ty), mask=active)
            else:
                r = tl.load(r_ptr + (b * C + c) * HW + p, mask=active, other=0.0).to(acc)
                s1 = tl.load(s1_ptr + (b * C + c) * HW + p, mask=active, other=0.0).to(acc)
                e = r - m * s1 + am * col
                err += tl.where(active, e * e, 0.0)
    if not STORE:
        tl.store(dist_ptr + k * B + b, tl.sum(err, axis=0) * inv_numel)


def greedy_select(x: torch.Tensor, candidates: torch.Tensor, masks: Optional[torch.Tensor],
                  theta: Optional[torch.Tensor],
                  occlusion: torch.Tensor, background: Optional[torch.Tensor], n_iter: int,
                  empty_penalty: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                  basis: Optional[torch.Tensor]) -> torch.Tensor:
    """One-hot ``(L, K, B)`` greedy selection; inputs are assumed validated.

    Sprite space (``theta`` ``(L, B, 6)`` placement matrices and ``basis`` ``(W + H,)`` given):
    ``candidates`` ``(L, K, B, C + E, h, w)`` with the mask (and canvas) as channels C (C + 1), ``noise``
    ``(K, 1, H, W)`` or None. Image space (``theta`` None): ``candidates`` ``(L, K, B, C, H, W)`` and
    ``masks`` ``(L, K, B, 1, H, W)``. Any strides.
    """
    B, C, H, W = x.shape
    L, K = candidates.shape[:2]
    HW = H * W
    sprite = theta is not None
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, occlusion = x.contiguous(), occlusion.contiguous()
    bg = background.contiguous() if background is not None else x
    cur_col = x.new_zeros(L, B, C, H, W)
    cur_m = x.new_zeros(L, B, H, W)
    r = torch.empty(B, C, H, W, dtype=acc, device=x.device)
    s1 = torch.empty_like(r)
    a = torch.empty(B, H, W, dtype=acc, device=x.device)
    dist = torch.empty(K, B, dtype=acc, device=x.device)
    selection = x.new_zeros(L, K, B)
    if B == 0 or HW == 0:
        return selection
    h, w = candidates.shape[-2:]
    block = block_size(BLOCK, HW)
    meta = dict(ACC64=x.dtype == torch.float64, BLOCK=block)
    if sprite:
        theta, basis = theta.contiguous(), basis.contiguous()
    mask_strides = (0, 0, 0, 0) if sprite else tuple(masks.stride(i) for i in (1, 2, 4, 5))
    noise_strides = (noise.stride(0), noise.stride(2), noise.stride(3)) if noise is not None else (0, 0, 0)
    for _ in range(n_iter):
        for l in range(L):
            launch(_prep_kernel, (B, triton.cdiv(HW, block)),
                r, s1, a, x, cur_col, cur_m, occlusion, bg, l, B, C, HW,
                L=L, LP=triton.next_power_of_2(L), HAS_BG=background is not None, num_warps=NUM_WARPS, **meta)
            cand = candidates[l]
            layer_args = (cand, masks[l] if not sprite else cand, theta[l] if sprite else cand,
                          noise if noise is not None else cand, basis if sprite else cand, B, C, H, W, h, w,
                          1.0 / (C * HW),
                          *cand.stride(), *mask_strides, *noise_strides)
            flags = dict(SPRITE=sprite, HAS_NOISE=noise is not None, ATEN_CPU=interpreted(), **meta)
            launch(_score_kernel, (K, B), dist, dist, cur_col, cur_m, r, s1, a, *layer_args, STORE=False, **flags)
            scores = dist if empty_penalty is None else dist + empty_penalty[:, None].to(acc)
            choice = scores.argmin(0)  # ties: the lowest k, as the reference
            selection[l] = 0
            selection[l].scatter_(0, choice[None], 1)
            launch(_score_kernel, (1, B), dist, choice, cur_col[l], cur_m[l], r, s1, a, *layer_args, STORE=True,
                   **flags)
    return selection
