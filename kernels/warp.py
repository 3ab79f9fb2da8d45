"""Fused warps: sampling-grid generation and bilinear sampling in one kernel, forward and backward.

One kernel family serves every warp; ``MODE`` picks how an output pixel's normalised source location
is computed from the per-image transform ``theta`` and the ``basis`` it applies to (no grid tensor is
ever stored; :mod:`dtifast.ops.geometry` builds both):

* ``AFFINE`` (position, similarity, affine): ``theta`` ``(N, 6)`` is the 2×3 matrix with the identity
  already added; ``basis`` ``(W + H,)`` holds ``F.affine_grid``'s pixel-centre coordinates (x of each
  column, then y of each row);
* ``PROJECTIVE``: ``theta`` ``(N, 9)`` is the homography; ``basis`` ``(W + H,)`` holds ``linspace(-1, 1)``
  per axis (kornia 0.3); ``(u, v, w) = H·(x, y, 1)`` and the location is ``(u/w, v/w)``, or ``(u, v)``
  where ``|w| <= eps``;
* ``TPS``: ``theta`` ``(N, G², 2)`` are the source control points; ``basis`` is the TPS interpolation
  matrix ``W`` ``(H·W, G²)`` and the location of output pixel p is ``Σ_g W[p, g]·theta[g]``.

Output image n reads input image ``index[n]`` (or n without an index), so K shared prototypes can be
warped by L·B transforms without copying them. The backward writes the input gradient per *output*
sample (atomics only between pixels of one sample) and the transform gradient as per-block partial
sums; the launcher reduces both on the host side (a matmul with the one-hot index, a sum over blocks),
so nothing serialises on atomics into a few shared prototypes.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .sampling import (RECORD_CHUNK, add_recorded, block_size, corners, deterministic, gather4, interp, interp_grad,
                       interpreted, launch, record4, record_offsets4, scatter4, source_index)

AFFINE, PROJECTIVE, TPS = 0, 1, 2
N_THETA = {AFFINE: 6, PROJECTIVE: 9}
HOMOGENEOUS_EPS = 1e-8
BLOCK = 128


@triton.jit
def _affine_point(t, xb, yb, acc: tl.constexpr):
    """``(t0·x + t1·y + t2, t3·x + t4·y + t5)`` for a row-major 2×3 (or the top of a 3×3) at ``t``."""
    gx = tl.load(t + 0).to(acc) * xb + tl.load(t + 1).to(acc) * yb + tl.load(t + 2).to(acc)
    gy = tl.load(t + 3).to(acc) * xb + tl.load(t + 4).to(acc) * yb + tl.load(t + 5).to(acc)
    return gx, gy


@triton.jit
def _source_coords(n, p, active, W, theta_ptr, basis_ptr, eps, MODE: tl.constexpr, G2: tl.constexpr,
                   acc: tl.constexpr):
    """Normalised source location ``(gx, gy)`` of output pixels ``p`` of image ``n``, and the base point
    ``(xb, yb)`` it came from (unused for TPS)."""
    if MODE == 2:
        t = theta_ptr + n * (2 * G2)
        xb = tl.zeros(p.shape, dtype=acc)
        yb = tl.zeros(p.shape, dtype=acc)
        gx = tl.zeros(p.shape, dtype=acc)
        gy = tl.zeros(p.shape, dtype=acc)
        for g in tl.static_range(G2):
            wg = tl.load(basis_ptr + p * G2 + g, mask=active, other=0.0).to(acc)
            gx += wg * tl.load(t + 2 * g).to(acc)
            gy += wg * tl.load(t + 2 * g + 1).to(acc)
    else:
        xb = tl.load(basis_ptr + p % W, mask=active, other=0.0).to(acc)
        yb = tl.load(basis_ptr + W + p // W, mask=active, other=0.0).to(acc)
        if MODE == 0:
            gx, gy = _affine_point(theta_ptr + n * 6, xb, yb, acc)
        else:
            t = theta_ptr + n * 9
            u, v = _affine_point(t, xb, yb, acc)
            w = tl.load(t + 6).to(acc) * xb + tl.load(t + 7).to(acc) * yb + tl.load(t + 8).to(acc)
            scale = 1.0 / tl.where(tl.abs(w) > eps, w, 1.0)
            gx = u * scale
            gy = v * scale
    return gx, gy, xb, yb


@triton.jit
def _warp_forward_kernel(out_ptr, x_ptr, theta_ptr, index_ptr, basis_ptr,
                         C, h, w, H, W, eps,
                         sx_n, sx_c, sx_y, sx_x,
                         MODE: tl.constexpr, G2: tl.constexpr, HAS_INDEX: tl.constexpr, BORDER: tl.constexpr,
                         ATEN_CPU: tl.constexpr, ACC64: tl.constexpr, BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    n = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    active = p < H * W
    gx, gy, _, _ = _source_coords(n, p, active, W, theta_ptr, basis_ptr, eps, MODE, G2, acc)
    ix, _ = source_index(gx, w, BORDER, ATEN_CPU)
    iy, _ = source_index(gy, h, BORDER, ATEN_CPU)
    o00, o01, o10, o11, m00, m01, m10, m11, wx0, wx1, wy0, wy1 = corners(ix, iy, h, w, sx_y, sx_x, active)
    src = tl.load(index_ptr + n).to(tl.int64) if HAS_INDEX else n
    x_base = x_ptr + src * sx_n
    out_base = out_ptr + n * C * H * W + p
    for c in range(C):
        v00, v01, v10, v11 = gather4(x_base + c * sx_c, o00, o01, o10, o11, m00, m01, m10, m11, acc)
        val = interp(v00, v01, v10, v11, wx0, wx1, wy0, wy1)
        tl.store(out_base + c * H * W, val.to(out_ptr.dtype.element_ty), mask=active)


@triton.jit(do_not_specialize=["n0"])
def _warp_backward_kernel(dx_ptr, dtheta_ptr, rec_val_ptr, rec_idx_ptr, grad_ptr, x_ptr, theta_ptr, index_ptr,
                          basis_ptr, n0, C, h, w, H, W, eps, n_blocks,
                          sx_n, sx_c, sx_y, sx_x,
                          MODE: tl.constexpr, G2: tl.constexpr, N_THETA: tl.constexpr, HAS_INDEX: tl.constexpr,
                          BORDER: tl.constexpr, NEED_DX: tl.constexpr, NEED_DTHETA: tl.constexpr,
                          RECORD: tl.constexpr, ATEN_CPU: tl.constexpr, ACC64: tl.constexpr, BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    n = n0 + tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    p = blk * BLOCK + tl.arange(0, BLOCK)
    active = p < H * W
    gx, gy, xb, yb = _source_coords(n, p, active, W, theta_ptr, basis_ptr, eps, MODE, G2, acc)
    ix, dix = source_index(gx, w, BORDER, ATEN_CPU)
    iy, diy = source_index(gy, h, BORDER, ATEN_CPU)
    o00, o01, o10, o11, m00, m01, m10, m11, wx0, wx1, wy0, wy1 = corners(ix, iy, h, w, sx_y, sx_x, active)
    src = tl.load(index_ptr + n).to(tl.int64) if HAS_INDEX else n
    x_base = x_ptr + src * sx_n
    grad_base = grad_ptr + n * C * H * W + p
    # The input gradient goes to this output sample's own buffer (contiguous (N, C, h, w)).
    dx_base = dx_ptr + n * C * h * w
    d00, d01, d10, d11, _, _, _, _, _, _, _, _ = corners(ix, iy, h, w, w, 1, active)
    if NEED_DX and RECORD:  # deterministic mode: record the corners, the launcher adds them in a fixed order
        record_offsets4(rec_idx_ptr + ((n - n0) * H * W + p) * 4, d00, d01, d10, d11, m00, m01, m10, m11, active)
    gix = tl.zeros([BLOCK], dtype=acc)
    giy = tl.zeros([BLOCK], dtype=acc)
    for c in range(C):
        g = tl.load(grad_base + c * H * W, mask=active, other=0.0).to(acc)
        if NEED_DTHETA:
            v00, v01, v10, v11 = gather4(x_base + c * sx_c, o00, o01, o10, o11, m00, m01, m10, m11, acc)
            dvx, dvy = interp_grad(v00, v01, v10, v11, wx0, wx1, wy0, wy1)
            gix += g * dvx
            giy += g * dvy
        if NEED_DX:
            if RECORD:
                record4(rec_val_ptr + (((n - n0) * C + c) * H * W + p) * 4, g, m00, m01, m10, m11, wx0, wx1, wy0,
                        wy1, active)
            else:
                scatter4(dx_base + c * h * w, g, d00, d01, d10, d11, m00, m01, m10, m11, wx0, wx1, wy0, wy1)
    if NEED_DTHETA:
        dgx = tl.where(active, gix * dix, 0.0)
        dgy = tl.where(active, giy * diy, 0.0)
        out = dtheta_ptr + (n * n_blocks + blk) * N_THETA
        if MODE == 2:
            for g in tl.static_range(G2):
                wg = tl.load(basis_ptr + p * G2 + g, mask=active, other=0.0).to(acc)
                tl.store(out + 2 * g, tl.sum(wg * dgx, axis=0))
                tl.store(out + 2 * g + 1, tl.sum(wg * dgy, axis=0))
        else:
            if MODE == 1:
                t = theta_ptr + n * 9
                u, v = _affine_point(t, xb, yb, acc)
                wh = tl.load(t + 6).to(acc) * xb + tl.load(t + 7).to(acc) * yb + tl.load(t + 8).to(acc)
                divided = tl.abs(wh) > eps
                inv = 1.0 / tl.where(divided, wh, 1.0)
                dw = tl.where(divided, -(dgx * u + dgy * v) * inv * inv, 0.0)
                tl.store(out + 6, tl.sum(dw * xb, axis=0))
                tl.store(out + 7, tl.sum(dw * yb, axis=0))
                tl.store(out + 8, tl.sum(dw, axis=0))
                dgx = dgx * inv
                dgy = dgy * inv
            tl.store(out + 0, tl.sum(dgx * xb, axis=0))
            tl.store(out + 1, tl.sum(dgx * yb, axis=0))
            tl.store(out + 2, tl.sum(dgx, axis=0))
            tl.store(out + 3, tl.sum(dgy * xb, axis=0))
            tl.store(out + 4, tl.sum(dgy * yb, axis=0))
            tl.store(out + 5, tl.sum(dgy, axis=0))


def _launch_args(x: torch.Tensor, out_size: tuple[int, int]) -> tuple:
    H, W = out_size
    return (x.shape[1], x.shape[2], x.shape[3], H, W, HOMOGENEOUS_EPS)


def _flags(x: torch.Tensor, mode: int, theta: torch.Tensor, index: Optional[torch.Tensor], border: bool) -> dict:
    return dict(MODE=mode, G2=theta.shape[1] if mode == TPS else 1, HAS_INDEX=index is not None, BORDER=border,
                ATEN_CPU=interpreted(), ACC64=x.dtype == torch.float64)


def warp_forward(x: torch.Tensor, theta: torch.Tensor, basis: torch.Tensor, index: Optional[torch.Tensor], mode: int,
                 out_size: tuple[int, int], border: bool) -> torch.Tensor:
    """Warp ``x`` ``(K, C, h, w)`` (any strides) by ``theta`` ``(N, …)`` applied to ``basis`` → ``(N, C, H, W)``.

    ``index`` ``(N,)`` int64 picks the input image of each output (None: ``K == N``, image n). Inputs are
    assumed validated.
    """
    N = theta.shape[0]
    H, W = out_size
    out = torch.empty(N, x.shape[1], H, W, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    theta, basis = theta.contiguous(), basis.contiguous()
    block = block_size(BLOCK, H * W)
    launch(_warp_forward_kernel, (N, triton.cdiv(H * W, block)),
        out, x, theta, index if index is not None else theta, basis, *_launch_args(x, out_size), *x.stride(),
        BLOCK=block, **_flags(x, mode, theta, index, border))
    return out


def warp_backward(grad: torch.Tensor, x: torch.Tensor, theta: torch.Tensor, basis: torch.Tensor,
                  index: Optional[torch.Tensor], mode: int, out_size: tuple[int, int], border: bool,
                  need_dx: bool, need_dtheta: bool) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of :func:`warp_forward` to ``x`` (shape of ``x``) and ``theta`` (shape of ``theta``).

    The input gradient is accumulated per output sample with atomics, or, under
    ``torch.use_deterministic_algorithms(True)``, recorded per bilinear corner and added with
    ``index_add_`` in a fixed order (chunks of output samples; see :func:`sampling.deterministic`).
    """
    N = theta.shape[0]
    H, W = out_size
    C, h, w = x.shape[1:]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    theta, basis, grad = theta.contiguous(), basis.contiguous(), grad.contiguous()
    block = block_size(BLOCK, H * W)
    n_blocks = triton.cdiv(H * W, block)
    n_theta = theta[0].numel() if N else N_THETA.get(mode, 0)
    dx_samples = torch.zeros(N, C, h, w, dtype=acc, device=x.device) if need_dx else None
    partial = torch.zeros(N, n_blocks, max(n_theta, 1), dtype=acc, device=x.device) if need_dtheta else None
    if N and grad.numel() and (need_dx or need_dtheta):
        record = need_dx and deterministic()
        chunk = max(1, RECORD_CHUNK // max(C * H * W * 4, 1)) if record else N
        for n0 in range(0, N, chunk):
            count = min(chunk, N - n0)
            values = torch.zeros(count, C, H * W, 4, dtype=acc, device=x.device) if record else theta
            offsets = torch.zeros(count, 1, H * W, 4, dtype=torch.int32, device=x.device) if record else theta
            launch(_warp_backward_kernel, (count, n_blocks),
                   dx_samples if need_dx else theta, partial if need_dtheta else theta, values, offsets, grad, x, theta,
                   index if index is not None else theta, basis, n0, *_launch_args(x, out_size), n_blocks, *x.stride(),
                   N_THETA=n_theta, NEED_DX=need_dx, NEED_DTHETA=need_dtheta, RECORD=record, BLOCK=block,
                   **_flags(x, mode, theta, index, border))
            if record:
                planes = (torch.arange(n0, n0 + count, device=x.device)[:, None] * C
                          + torch.arange(C, device=x.device)[None, :]) * (h * w)
                add_recorded(dx_samples.view(-1), values, offsets, planes)
    dx = dtheta = None
    if need_dx:
        if index is None:
            dx = dx_samples.to(x.dtype)
        else:
            # Sum the per-sample gradients into the shared inputs: one (K, N) × (N, C·h·w) product.
            onehot = torch.zeros(x.shape[0], N, dtype=acc, device=x.device)
            onehot[index, torch.arange(N, device=x.device)] = 1
            dx = (onehot @ dx_samples.view(N, -1)).view(x.shape).to(x.dtype)
    if need_dtheta:
        dtheta = partial[..., :n_theta].sum(1).view(theta.shape).to(theta.dtype)
    return dx, dtheta
