"""Fused render loss: placement warp of the selected sprites → mask noise → compositing → squared error.

One program handles one image and a block of pixels, one pixel per thread, all L layers of that pixel
in the thread's registers (the layout of :mod:`dtifast.kernels.composite`, whose tile helpers composite
the layers). Nothing of image size is stored besides the per-block partial sums. The backward
recomputes the forward in the same way and produces the gradients of the sprites (atomics into each
(layer, image) sprite: only pixels of one image meet there), the placement matrices and the occlusion
(per-block partial sums), the background, the target and the noise.

Registers: a layer keeps only its sampling location (two floats), mask and colours between phases; the
bilinear taps are recomputed from the location where a phase needs them (a few ALU operations) rather
than kept, inside runtime loops over the layers, so one layer's taps are live at a time. That holds the
backward at L = 6 under the 255 registers a thread may have (it spilled when every layer kept its taps
and tap values).

Placement of layer l (``F.affine_grid``, pixel centres, zeros padding): output location ``(x, y)`` (from
the ``basis`` of pixel-centre coordinates) reads the sprite at ``theta_l · (x, y, 1)``, ``theta_l`` the
layer's 2×3 matrix; with noise, the mask is ``softclip(mask + canvas · noise)`` after the warp.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .composite import BLOCK, NUM_WARPS, composite_grads, load_rows, row, store_rows, total, visibility, with_row
from .sampling import (RECORD_CHUNK, add_recorded, block_size, corners, deterministic, gather4, interp, interp_grad,
                       interpreted, launch, record4, record_offsets4, scatter4, softclip, softclip_grad, source_index)

MASK_SLOPE = tl.constexpr(0.01)  # upstream's softclip slope for the noisy mask
# Arguments that change with the batch size: not specialised (a partial last batch must not recompile).
BATCH_ARGS = ["B", "s_l", "s_b", "n_l", "n_b"]


@triton.jit
def pixel_centres(basis_ptr, p, W, active, acc: tl.constexpr):
    """Normalised pixel-centre coordinates of flat pixel indices ``p`` (``F.affine_grid``,
    ``align_corners=False``), read from the ``(W + H,)`` basis (:func:`dtifast.ops.geometry.affine_basis`)."""
    xb = tl.load(basis_ptr + p % W, mask=active, other=0.0).to(acc)
    yb = tl.load(basis_ptr + W + p // W, mask=active, other=0.0).to(acc)
    return xb, yb


@triton.jit
def placement_coords(theta_ptr, xb, yb, h, w, ATEN_CPU: tl.constexpr, acc: tl.constexpr):
    """Sprite pixel location of output points for the 2×3 placement matrix at (scalar) ``theta_ptr``, and
    d(pixel)/d(normalised) per axis."""
    t0 = tl.load(theta_ptr).to(acc)
    t1 = tl.load(theta_ptr + 1).to(acc)
    t2 = tl.load(theta_ptr + 2).to(acc)
    t3 = tl.load(theta_ptr + 3).to(acc)
    t4 = tl.load(theta_ptr + 4).to(acc)
    t5 = tl.load(theta_ptr + 5).to(acc)
    ix, dix = source_index(t0 * xb + t1 * yb + t2, w, False, ATEN_CPU)
    iy, diy = source_index(t3 * xb + t4 * yb + t5, h, False, ATEN_CPU)
    return ix, iy, dix, diy


@triton.jit
def sample(base, ix, iy, h, w, s_y, s_x, active, acc: tl.constexpr):
    """Bilinear value of the plane at ``base`` (zeros padding) at pixel location ``(ix, iy)``."""
    o00, o01, o10, o11, m00, m01, m10, m11, wx0, wx1, wy0, wy1 = corners(ix, iy, h, w, s_y, s_x, active)
    v00, v01, v10, v11 = gather4(base, o00, o01, o10, o11, m00, m01, m10, m11, acc)
    return interp(v00, v01, v10, v11, wx0, wx1, wy0, wy1)


@triton.jit
def sample_with_grad(base, ix, iy, h, w, s_y, s_x, active, acc: tl.constexpr):
    """:func:`sample` and the value's derivatives along the pixel x and y axes."""
    o00, o01, o10, o11, m00, m01, m10, m11, wx0, wx1, wy0, wy1 = corners(ix, iy, h, w, s_y, s_x, active)
    v00, v01, v10, v11 = gather4(base, o00, o01, o10, o11, m00, m01, m10, m11, acc)
    dvx, dvy = interp_grad(v00, v01, v10, v11, wx0, wx1, wy0, wy1)
    return interp(v00, v01, v10, v11, wx0, wx1, wy0, wy1), dvx, dvy


@triton.jit
def scatter(base, g, ix, iy, h, w, active):
    """Add ``g`` times the bilinear weights of ``(ix, iy)`` into the contiguous ``(h, w)`` plane at ``base``."""
    o00, o01, o10, o11, m00, m01, m10, m11, wx0, wx1, wy0, wy1 = corners(ix, iy, h, w, w, 1, active)
    scatter4(base, g, o00, o01, o10, o11, m00, m01, m10, m11, wx0, wx1, wy0, wy1)


@triton.jit
def record(val_ptr, g, ix, iy, h, w, active):
    """:func:`scatter`'s contributions recorded at ``val_ptr + 0..3`` instead (deterministic mode)."""
    _, _, _, _, m00, m01, m10, m11, wx0, wx1, wy0, wy1 = corners(ix, iy, h, w, w, 1, active)
    record4(val_ptr, g, m00, m01, m10, m11, wx0, wx1, wy0, wy1, active)


@triton.jit
def plane_gradient(dbase, rec_ptr, g, ix, iy, h, w, active, RECORD: tl.constexpr):
    """The gradient ``g`` of a bilinear read at ``(ix, iy)`` into a contiguous ``(h, w)`` plane: added at
    ``dbase``, or recorded at ``rec_ptr`` in deterministic mode."""
    if RECORD:
        record(rec_ptr, g, ix, iy, h, w, active)
    else:
        scatter(dbase, g, ix, iy, h, w, active)


@triton.jit
def noise_at(noise_ptr, l, b, p, W, n_l, n_b, n_y, n_x, active, acc: tl.constexpr):
    return tl.load(noise_ptr + l * n_l + b * n_b + (p // W) * n_y + (p % W) * n_x, mask=active, other=0.0).to(acc)


@triton.jit
def place_layers(sp_ptr, theta_ptr, noise_ptr, b, p, xb, yb, active, rows, colour_rows, B, W, h, w,
                 s_l, s_b, s_c, s_y, s_x, n_l, n_b, n_y, n_x, C: tl.constexpr, LP: tl.constexpr,
                 L: tl.constexpr, HAS_NOISE: tl.constexpr, ATEN_CPU: tl.constexpr, acc: tl.constexpr):
    """Every layer's sprite location at the block's pixels, its mask (after the noise) and its colours:
    ``[LP, BLOCK]`` tiles ``(ix, iy, m)`` and a ``[CP·LP, BLOCK]`` tile whose row ``c·LP + l`` is layer l's
    channel c; padding rows are 0. One layer's bilinear taps are live at a time."""
    IX = tl.zeros([rows.shape[0], p.shape[1]], dtype=acc)
    IY = tl.zeros_like(IX)
    M = tl.zeros_like(IX)
    COL = tl.zeros([colour_rows.shape[0], p.shape[1]], dtype=acc)
    for layer in range(L):
        ix, iy, _, _ = placement_coords(theta_ptr + (layer * B + b) * 6, xb, yb, h, w, ATEN_CPU, acc)
        base = sp_ptr + layer * s_l + b * s_b
        m = sample(base + C * s_c, ix, iy, h, w, s_y, s_x, active, acc)
        if HAS_NOISE:
            canvas = sample(base + (C + 1) * s_c, ix, iy, h, w, s_y, s_x, active, acc)
            m = softclip(m + canvas * noise_at(noise_ptr, layer, b, p, W, n_l, n_b, n_y, n_x, active, acc), MASK_SLOPE)
        for ch in range(C):
            COL = with_row(COL, colour_rows, ch * LP + layer,
                           sample(base + ch * s_c, ix, iy, h, w, s_y, s_x, active, acc))
        IX = with_row(IX, rows, layer, ix)
        IY = with_row(IY, rows, layer, iy)
        M = with_row(M, rows, layer, m)
    return IX, IY, M, COL


@triton.jit
def residual(x_ptr, bg_ptr, b, p, active, HW, weight, vbg, COL, rows, crows, colour_rows, C: tl.constexpr,
             LP: tl.constexpr, L: tl.constexpr, HAS_BG: tl.constexpr, acc: tl.constexpr):
    """The composite minus the target per channel (``[CP, BLOCK]``; 0 at inactive pixels and padding
    channels) and the background tile (zeros without one)."""
    out = tl.zeros([crows.shape[0], p.shape[1]], dtype=acc)
    for c in tl.static_range(C):
        out_c = row(weight, rows, 0) * row(COL, colour_rows, c * LP)
        for l in tl.static_range(1, L):
            out_c += row(weight, rows, l) * row(COL, colour_rows, c * LP + l)
        out = with_row(out, crows, c, out_c)
    BG = tl.zeros_like(out)
    if HAS_BG:
        BG = load_rows(bg_ptr + b * C * HW, HW, p, active, crows, C, acc)
        out += vbg * BG
    return tl.where(active, out - load_rows(x_ptr + b * C * HW, HW, p, active, crows, C, acc), 0.0), BG


@triton.jit(do_not_specialize=BATCH_ARGS)
def _render_loss_kernel(partial_ptr, x_ptr, sp_ptr, theta_ptr, occ_ptr, bg_ptr, noise_ptr, basis_ptr,
                        B, H, W, h, w,
                        s_l, s_b, s_c, s_y, s_x, n_l, n_b, n_y, n_x,
                        C: tl.constexpr, CP: tl.constexpr, L: tl.constexpr, LP: tl.constexpr, HAS_BG: tl.constexpr,
                        HAS_NOISE: tl.constexpr, ATEN_CPU: tl.constexpr, ACC64: tl.constexpr, BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    b = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    HW = H * W
    p = (blk * BLOCK + tl.arange(0, BLOCK))[None, :]
    rows = tl.arange(0, LP)[:, None]
    crows = tl.arange(0, CP)[:, None]
    colour_rows = tl.arange(0, CP * LP)[:, None]
    active = p < HW
    xb, yb = pixel_centres(basis_ptr, p, W, active, acc)
    IX, IY, M, COL = place_layers(sp_ptr, theta_ptr, noise_ptr, b, p, xb, yb, active, rows, colour_rows, B, W, h, w,
                                  s_l, s_b, s_c, s_y, s_x, n_l, n_b, n_y, n_x, C, LP, L, HAS_NOISE, ATEN_CPU, acc)
    vis, vbg = visibility(M, occ_ptr, L * B, B, b, rows, L)
    diff, _ = residual(x_ptr, bg_ptr, b, p, active, HW, vis * M, vbg, COL, rows, crows, colour_rows, C, LP, L,
                       HAS_BG, acc)
    tl.store(partial_ptr + b * tl.num_programs(1) + blk, total(diff * diff))


@triton.jit(do_not_specialize=BATCH_ARGS + ["b0"])
def _render_loss_backward_kernel(dsp_ptr, dtheta_ptr, docc_ptr, dbg_ptr, dx_ptr, dnoise_ptr, rec_val_ptr, rec_idx_ptr,
                                 gout_ptr, x_ptr, sp_ptr, theta_ptr, occ_ptr, bg_ptr, noise_ptr, basis_ptr,
                                 b0, B, H, W, h, w, inv_numel,
                                 s_l, s_b, s_c, s_y, s_x, n_l, n_b, n_y, n_x,
                                 C: tl.constexpr, CP: tl.constexpr, L: tl.constexpr, LP: tl.constexpr,
                                 HAS_BG: tl.constexpr, HAS_NOISE: tl.constexpr, NEED_DX: tl.constexpr,
                                 NEED_DNOISE: tl.constexpr, RECORD: tl.constexpr, ATEN_CPU: tl.constexpr,
                                 ACC64: tl.constexpr, BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    b = b0 + tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    n_blocks = tl.num_programs(1)
    HW = H * W
    p = (blk * BLOCK + tl.arange(0, BLOCK))[None, :]
    rows = tl.arange(0, LP)[:, None]
    crows = tl.arange(0, CP)[:, None]
    colour_rows = tl.arange(0, CP * LP)[:, None]
    active = p < HW
    CE = C + 1 + HAS_NOISE
    xb, yb = pixel_centres(basis_ptr, p, W, active, acc)
    IX, IY, M, COL = place_layers(sp_ptr, theta_ptr, noise_ptr, b, p, xb, yb, active, rows, colour_rows, B, W, h, w,
                                  s_l, s_b, s_c, s_y, s_x, n_l, n_b, n_y, n_x, C, LP, L, HAS_NOISE, ATEN_CPU, acc)
    vis, vbg = visibility(M, occ_ptr, L * B, B, b, rows, L)
    weight = vis * M
    diff, BG = residual(x_ptr, bg_ptr, b, p, active, HW, weight, vbg, COL, rows, crows, colour_rows, C, LP, L,
                        HAS_BG, acc)
    g = diff * (2.0 * tl.load(gout_ptr).to(acc) * inv_numel)           # d loss / d composite, [CP, BLOCK]
    if NEED_DX:
        store_rows(dx_ptr + b * C * HW, HW, p, active, -g, crows, C)
    Gbg = tl.sum(g * BG, axis=0, keep_dims=True)
    if HAS_BG:
        store_rows(dbg_ptr + b * C * HW, HW, p, active, g * vbg, crows, C)
    G = tl.zeros_like(M)                                                # Σ_c g_c x_lc, [LP, BLOCK]
    for l in tl.static_range(L):
        G_l = row(g, crows, 0) * row(COL, colour_rows, l)
        for c in tl.static_range(1, C):
            G_l += row(g, crows, c) * row(COL, colour_rows, c * LP + l)
        G = with_row(G, rows, l, G_l)
    dm = composite_grads(M, vis, G, Gbg, occ_ptr, L * B, B, b, docc_ptr + (b * n_blocks + blk) * L * L, rows,
                         active, L, HAS_BG)
    # Per layer: the colours' and the mask's gradients into the sprite (by the sampling weights) and into
    # the sampling location (GIX, GIY: d loss / d pixel location).
    GIX = tl.zeros_like(M)
    GIY = tl.zeros_like(M)
    for layer in range(L):
        ix = row(IX, rows, layer)
        iy = row(IY, rows, layer)
        w_l = row(weight, rows, layer)
        base = sp_ptr + layer * s_l + b * s_b
        dbase = dsp_ptr + (layer * B + b) * CE * h * w
        # Deterministic mode: this (image, layer)'s corner contributions, plane by plane, for the launcher.
        rbase = rec_val_ptr + ((b - b0) * L + layer) * CE * HW * 4 + p * 4
        if RECORD:
            o00, o01, o10, o11, m00, m01, m10, m11, _, _, _, _ = corners(ix, iy, h, w, w, 1, active)
            record_offsets4(rec_idx_ptr + (((b - b0) * L + layer) * HW + p) * 4, o00, o01, o10, o11, m00, m01, m10,
                            m11, active)
        gix = tl.zeros_like(ix)
        giy = tl.zeros_like(ix)
        for ch in range(C):
            dcol = row(g, crows, ch) * w_l
            _, dvx, dvy = sample_with_grad(base + ch * s_c, ix, iy, h, w, s_y, s_x, active, acc)
            gix += dcol * dvx
            giy += dcol * dvy
            plane_gradient(dbase + ch * h * w, rbase + ch * HW * 4, dcol, ix, iy, h, w, active, RECORD)
        mask, dmx, dmy = sample_with_grad(base + C * s_c, ix, iy, h, w, s_y, s_x, active, acc)
        dz = row(dm, rows, layer)
        if HAS_NOISE:
            canvas, dcx, dcy = sample_with_grad(base + (C + 1) * s_c, ix, iy, h, w, s_y, s_x, active, acc)
            nz = noise_at(noise_ptr, layer, b, p, W, n_l, n_b, n_y, n_x, active, acc)
            dz = dz * softclip_grad(mask + canvas * nz, MASK_SLOPE)
            if NEED_DNOISE:
                tl.store(dnoise_ptr + (layer * B + b) * HW + p, (dz * canvas).to(dnoise_ptr.dtype.element_ty),
                         mask=active)
            plane_gradient(dbase + (C + 1) * h * w, rbase + (C + 1) * HW * 4, dz * nz, ix, iy, h, w, active, RECORD)
            gix += dz * nz * dcx
            giy += dz * nz * dcy
        plane_gradient(dbase + C * h * w, rbase + C * HW * 4, dz, ix, iy, h, w, active, RECORD)
        GIX = with_row(GIX, rows, layer, gix + dz * dmx)
        GIY = with_row(GIY, rows, layer, giy + dz * dmy)
    # Placement matrices: gx = t0·x + t1·y + t2, gy = t3·x + t4·y + t5, d(pixel)/d(normalised) = size / 2
    # (zeros padding never clamps); per-block partial sums, one reduction over the pixels per entry.
    dgx = tl.where(active, GIX * (w * 0.5), 0.0)
    dgy = tl.where(active, GIY * (h * 0.5), 0.0)
    out_theta = dtheta_ptr + ((b * n_blocks + blk) * L + rows) * 6
    tl.store(out_theta, tl.sum(dgx * xb, axis=1, keep_dims=True), mask=rows < L)
    tl.store(out_theta + 1, tl.sum(dgx * yb, axis=1, keep_dims=True), mask=rows < L)
    tl.store(out_theta + 2, tl.sum(dgx, axis=1, keep_dims=True), mask=rows < L)
    tl.store(out_theta + 3, tl.sum(dgy * xb, axis=1, keep_dims=True), mask=rows < L)
    tl.store(out_theta + 4, tl.sum(dgy * yb, axis=1, keep_dims=True), mask=rows < L)
    tl.store(out_theta + 5, tl.sum(dgy, axis=1, keep_dims=True), mask=rows < L)


def _common(sprites: torch.Tensor, noise: Optional[torch.Tensor]) -> tuple:
    noise_strides = (noise.stride(0), noise.stride(1), noise.stride(3), noise.stride(4)) if noise is not None \
        else (0, 0, 0, 0)
    return (*sprites.stride(), *noise_strides)


def _meta(x: torch.Tensor, sprites: torch.Tensor, background: Optional[torch.Tensor], noise: Optional[torch.Tensor],
          block: int) -> dict:
    C, L = x.shape[1], sprites.shape[0]
    return dict(C=C, CP=triton.next_power_of_2(C), L=L, LP=triton.next_power_of_2(L), HAS_BG=background is not None,
                HAS_NOISE=noise is not None, ATEN_CPU=interpreted(), ACC64=sprites.dtype == torch.float64,
                BLOCK=block, num_warps=NUM_WARPS)


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
        launch(_render_loss_kernel, (B, n_blocks),
            partial, x, sprites, theta, occlusion, bg, noise if noise is not None else x, basis,
            B, H, W, sprites.shape[3], sprites.shape[4], *_common(sprites, noise),
            **_meta(x, sprites, background, noise, block))
    # An empty batch has no error to average: 0, not 0/0.
    return (partial.sum() / max(x.numel(), 1)).to(x.dtype)


def render_loss_backward(grad: torch.Tensor, x: torch.Tensor, sprites: torch.Tensor, theta: torch.Tensor,
                         occlusion: torch.Tensor, background: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                         basis: torch.Tensor, needs: tuple[bool, ...]) -> list[Optional[torch.Tensor]]:
    """Gradients to ``(x, sprites, theta, occlusion, background, noise)`` where ``needs`` asks for them
    (None otherwise, and for an absent background or noise); sprite gradients are contiguous.

    The sprite gradient is accumulated with atomics into each (layer, image) sprite, or, under
    ``torch.use_deterministic_algorithms(True)``, recorded per bilinear corner and added with
    ``index_add_`` in a fixed order (chunks of images; see :func:`sampling.deterministic`).
    """
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
    record = deterministic()
    chunk = max(1, RECORD_CHUNK // max(L * CE * H * W * 4, 1)) if record else max(B, 1)
    for b0 in range(0, B if n_blocks else 0, chunk):
        count = min(chunk, B - b0)
        values = torch.zeros(count, L, CE, H * W, 4, dtype=acc, device=x.device) if record else x
        offsets = torch.zeros(count, L, 1, H * W, 4, dtype=torch.int32, device=x.device) if record else x
        launch(_render_loss_backward_kernel, (count, n_blocks),
               dsp, dtheta, docc, dbg if dbg is not None else x, dx if dx is not None else x,
               dnoise if dnoise is not None else x, values, offsets, grad.reshape(1),
               x, sprites, theta, occlusion, background.contiguous() if background is not None else x,
               noise if noise is not None else x, basis, b0, B, H, W, h, w, 1.0 / max(x.numel(), 1),
               *_common(sprites, noise), NEED_DX=need_x, NEED_DNOISE=need_noise, RECORD=record,
               **_meta(x, sprites, background, noise, block))
        if record:
            layers = torch.arange(L, device=x.device)[None, :, None]
            images = torch.arange(b0, b0 + count, device=x.device)[:, None, None]
            planes = torch.arange(CE, device=x.device)[None, None, :]
            add_recorded(dsp.view(-1), values, offsets, ((layers * B + images) * CE + planes) * (h * w))
    return [dx,
            dsp.to(sprites.dtype) if need_sprites else None,
            dtheta.sum(1).transpose(0, 1).contiguous().to(theta.dtype) if need_theta else None,
            docc.sum(1).permute(1, 2, 0).contiguous().to(occlusion.dtype) if need_occ else None,
            dbg if need_bg else None,
            dnoise]
