"""Fused warps: sampling-grid generation and bilinear sampling in one kernel, forward and backward.

One kernel family serves every warp; ``MODE`` picks how an output pixel's normalised source location
is computed from the per-image transform ``theta`` (no grid tensor is ever stored):

* ``AFFINE`` (position, similarity, affine): ``theta`` ``(N, 6)`` is the 2×3 matrix with the identity
  already added; output pixels sit at pixel centres (``F.affine_grid``, ``align_corners=False``);
* ``PROJECTIVE``: ``theta`` ``(N, 9)`` is the homography; output pixels sit on ``linspace(-1, 1)``
  (kornia 0.3), ``(u, v, w) = H·(x, y, 1)`` and the location is ``(u/w, v/w)``, or ``(u, v)`` where
  ``|w| <= eps``;
* ``TPS``: ``theta`` ``(N, G², 2)`` are the source control points; the location of output pixel p is
  ``Σ_g W[p, g]·theta[g]`` with the precomputed TPS interpolation matrix ``W`` ``(H·W, G²)``.

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

from .sampling import block_size, corners, gather4, interp, interp_grad, scatter4, source_index

AFFINE, PROJECTIVE, TPS = 0, 1, 2
N_THETA = {AFFINE: 6, PROJECTIVE: 9}
HOMOGENEOUS_EPS = 1e-8
BLOCK = 128


@triton.jit
def _base_coords(p, H, W, step_x, step_y, MODE: tl.constexpr, acc: tl.constexpr):
    """Normalised output coordinates of flat pixel indices ``p``: pixel centres or linspace(-1, 1)."""
    i = (p // W).to(acc)
    j = (p % W).to(acc)
    if MODE == 0:
        xb = (2.0 * j + 1.0) / W - 1.0
        yb = (2.0 * i + 1.0) / H - 1.0
    else:
        xb = j * step_x - 1.0
        yb = i * step_y - 1.0
    return xb, yb


@triton.jit
def _source_coords(n, p, active, H, W, step_x, step_y, theta_ptr, tpsw_ptr, eps,
                   MODE: tl.constexpr, G2: tl.constexpr, acc: tl.constexpr):
    """Normalised source location ``(gx, gy)`` of output pixels ``p`` of image ``n``."""
    xb, yb = _base_coords(p, H, W, step_x, step_y, MODE, acc)
    if MODE == 0:
        t = theta_ptr + n * 6
        gx = tl.load(t + 0).to(acc) * xb + tl.load(t + 1).to(acc) * yb + tl.load(t + 2).to(acc)
        gy = tl.load(t + 3).to(acc) * xb + tl.load(t + 4).to(acc) * yb + tl.load(t + 5).to(acc)
    elif MODE == 1:
        t = theta_ptr + n * 9
        u = tl.load(t + 0).to(acc) * xb + tl.load(t + 1).to(acc) * yb + tl.load(t + 2).to(acc)
        v = tl.load(t + 3).to(acc) * xb + tl.load(t + 4).to(acc) * yb + tl.load(t + 5).to(acc)
        w = tl.load(t + 6).to(acc) * xb + tl.load(t + 7).to(acc) * yb + tl.load(t + 8).to(acc)
        scale = 1.0 / tl.where(tl.abs(w) > eps, w, 1.0)
        gx = u * scale
        gy = v * scale
    else:
        t = theta_ptr + n * (2 * G2)
        gx = tl.zeros_like(xb)
        gy = tl.zeros_like(xb)
        for g in tl.static_range(G2):
            wg = tl.load(tpsw_ptr + p * G2 + g, mask=active, other=0.0).to(acc)
            gx += wg * tl.load(t + 2 * g).to(acc)
            gy += wg * tl.load(t + 2 * g + 1).to(acc)
    return gx, gy


@triton.jit
def _warp_forward_kernel(out_ptr, x_ptr, theta_ptr, index_ptr, tpsw_ptr,
                         C, h, w, H, W, step_x, step_y, eps,
                         sx_n, sx_c, sx_y, sx_x,
                         MODE: tl.constexpr, G2: tl.constexpr, HAS_INDEX: tl.constexpr, BORDER: tl.constexpr,
                         ACC64: tl.constexpr, BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    n = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    active = p < H * W
    gx, gy = _source_coords(n, p, active, H, W, step_x, step_y, theta_ptr, tpsw_ptr, eps, MODE, G2, acc)
    ix, _ = source_index(gx, w, BORDER)
    iy, _ = source_index(gy, h, BORDER)
    o00, o01, o10, o11, m00, m01, m10, m11, wx0, wx1, wy0, wy1 = corners(ix, iy, h, w, sx_y, sx_x, active)
    src = tl.load(index_ptr + n).to(tl.int64) if HAS_INDEX else n
    x_base = x_ptr + src * sx_n
    out_base = out_ptr + n * C * H * W + p
    for c in range(C):
        v00, v01, v10, v11 = gather4(x_base + c * sx_c, o00, o01, o10, o11, m00, m01, m10, m11, acc)
        val = interp(v00, v01, v10, v11, wx0, wx1, wy0, wy1)
        tl.store(out_base + c * H * W, val.to(out_ptr.dtype.element_ty), mask=active)


@triton.jit
def _warp_backward_kernel(dx_ptr, dtheta_ptr, grad_ptr, x_ptr, theta_ptr, index_ptr, tpsw_ptr,
                          C, h, w, H, W, step_x, step_y, eps, n_blocks,
                          sx_n, sx_c, sx_y, sx_x,
                          MODE: tl.constexpr, G2: tl.constexpr, N_THETA: tl.constexpr, HAS_INDEX: tl.constexpr,
                          BORDER: tl.constexpr, NEED_DX: tl.constexpr, NEED_DTHETA: tl.constexpr,
                          ACC64: tl.constexpr, BLOCK: tl.constexpr):
    acc: tl.constexpr = tl.float64 if ACC64 else tl.float32
    n = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    p = blk * BLOCK + tl.arange(0, BLOCK)
    active = p < H * W
    gx, gy = _source_coords(n, p, active, H, W, step_x, step_y, theta_ptr, tpsw_ptr, eps, MODE, G2, acc)
    ix, dix = source_index(gx, w, BORDER)
    iy, diy = source_index(gy, h, BORDER)
    o00, o01, o10, o11, m00, m01, m10, m11, wx0, wx1, wy0, wy1 = corners(ix, iy, h, w, sx_y, sx_x, active)
    src = tl.load(index_ptr + n).to(tl.int64) if HAS_INDEX else n
    x_base = x_ptr + src * sx_n
    grad_base = grad_ptr + n * C * H * W + p
    # The input gradient goes to this output sample's own buffer (contiguous (N, C, h, w)).
    dx_base = dx_ptr + n * C * h * w
    d00, d01, d10, d11, _, _, _, _, _, _, _, _ = corners(ix, iy, h, w, w, 1, active)
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
            scatter4(dx_base + c * h * w, g, d00, d01, d10, d11, m00, m01, m10, m11, wx0, wx1, wy0, wy1)
    if NEED_DTHETA:
        dgx = tl.where(active, gix * dix, 0.0)
        dgy = tl.where(active, giy * diy, 0.0)
        out = dtheta_ptr + (n * n_blocks + blk) * N_THETA
        if MODE == 2:
            for g in tl.static_range(G2):
                wg = tl.load(tpsw_ptr + p * G2 + g, mask=active, other=0.0).to(acc)
                tl.store(out + 2 * g, tl.sum(wg * dgx, axis=0))
                tl.store(out + 2 * g + 1, tl.sum(wg * dgy, axis=0))
        else:
            xb, yb = _base_coords(p, H, W, step_x, step_y, MODE, acc)
            if MODE == 1:
                t = theta_ptr + n * 9
                u = tl.load(t + 0).to(acc) * xb + tl.load(t + 1).to(acc) * yb + tl.load(t + 2).to(acc)
                v = tl.load(t + 3).to(acc) * xb + tl.load(t + 4).to(acc) * yb + tl.load(t + 5).to(acc)
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


def _linspace_step(n: int) -> float:
    # torch.linspace(-1, 1, 1) is [-1]: a single row/column sits at -1, hence step 0.
    return 2.0 / (n - 1) if n > 1 else 0.0


def _launch_args(x: torch.Tensor, out_size: tuple[int, int]) -> tuple:
    H, W = out_size
    return (x.shape[1], x.shape[2], x.shape[3], H, W, _linspace_step(W), _linspace_step(H), HOMOGENEOUS_EPS)


def warp_forward(x: torch.Tensor, theta: torch.Tensor, index: Optional[torch.Tensor], tps_weights: Optional[torch.Tensor],
                 mode: int, out_size: tuple[int, int], border: bool) -> torch.Tensor:
    """Warp ``x`` ``(K, C, h, w)`` (any strides) by ``theta`` ``(N, …)`` → ``(N, C, H, W)``.

    ``index`` ``(N,)`` int64 picks the input image of each output (None: ``K == N``, image n);
    ``tps_weights`` ``(H·W, G²)`` is needed for ``mode == TPS``. Inputs are assumed validated.
    """
    N = theta.shape[0]
    H, W = out_size
    out = torch.empty(N, x.shape[1], H, W, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    theta = theta.contiguous()
    g2 = theta.shape[1] if mode == TPS else 1
    dummy = theta
    block = block_size(BLOCK, H * W)
    grid = (N, triton.cdiv(H * W, block))
    _warp_forward_kernel[grid](
        out, x, theta, index if index is not None else dummy, tps_weights if tps_weights is not None else dummy,
        *_launch_args(x, out_size), *x.stride(),
        MODE=mode, G2=g2, HAS_INDEX=index is not None, BORDER=border, ACC64=x.dtype == torch.float64, BLOCK=block)
    return out


def warp_backward(grad: torch.Tensor, x: torch.Tensor, theta: torch.Tensor, index: Optional[torch.Tensor],
                  tps_weights: Optional[torch.Tensor], mode: int, out_size: tuple[int, int], border: bool,
                  need_dx: bool, need_dtheta: bool) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of :func:`warp_forward` to ``x`` (shape of ``x``) and ``theta`` (shape of ``theta``)."""
    N = theta.shape[0]
    H, W = out_size
    C, h, w = x.shape[1:]
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    theta = theta.contiguous()
    grad = grad.contiguous()
    block = block_size(BLOCK, H * W)
    n_blocks = triton.cdiv(H * W, block)
    n_theta = theta[0].numel() if N else N_THETA.get(mode, 0)
    dx_samples = torch.zeros(N, C, h, w, dtype=acc, device=x.device) if need_dx else None
    partial = torch.zeros(N, n_blocks, max(n_theta, 1), dtype=acc, device=x.device) if need_dtheta else None
    if N and grad.numel() and (need_dx or need_dtheta):
        dummy = theta
        g2 = theta.shape[1] if mode == TPS else 1
        _warp_backward_kernel[(N, n_blocks)](
            dx_samples if need_dx else dummy, partial if need_dtheta else dummy, grad, x, theta,
            index if index is not None else dummy, tps_weights if tps_weights is not None else dummy,
            *_launch_args(x, out_size), n_blocks, *x.stride(),
            MODE=mode, G2=g2, N_THETA=n_theta, HAS_INDEX=index is not None, BORDER=border,
            NEED_DX=need_dx, NEED_DTHETA=need_dtheta, ACC64=x.dtype == torch.float64, BLOCK=block)
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
