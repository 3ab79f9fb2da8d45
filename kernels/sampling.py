"""Shared Triton device functions: bilinear sampling (``F.grid_sample`` semantics) and softclip.

Every fused kernel that reads an image at a warped location (warps, greedy scoring, render loss) uses
these, so the sampling rules live in one place:

* ``align_corners=False``: normalised ``g`` in ``[-1, 1]`` maps to pixel ``((g + 1)·size − 1) / 2``;
* ``zeros`` padding reads 0 outside the image; ``border`` clamps the pixel coordinate to
  ``[0, size − 1]`` first, with a zero coordinate gradient where it clamped, ends included (as PyTorch);
* the four corner weights and their derivatives follow PyTorch's bilinear kernel, so values and
  gradients match ``F.grid_sample`` to rounding.

The functions work on tiles of any shape: pointer arguments may be scalars or tiles of per-row bases.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import triton
import triton.language as tl


@triton.jit
def softclip(z, slope):
    """``clamp(z, 0, 1) + slope·min(z, 0) + slope·max(z − 1, 0)``."""
    return tl.minimum(tl.maximum(z, 0.0), 1.0) + slope * tl.minimum(z, 0.0) + slope * tl.maximum(z - 1.0, 0.0)


@triton.jit
def softclip_grad(z, slope):
    """d softclip / dz with the reference's subgradient: 1 + slope/2 exactly at 0 and 1 (torch's
    clamp passes the gradient at its bounds, minimum/maximum split it in half at ties)."""
    inside = ((z >= 0.0) & (z <= 1.0)).to(z.dtype)
    below = tl.where(z < 0.0, 1.0, tl.where(z == 0.0, 0.5, 0.0)).to(z.dtype)
    above = tl.where(z > 1.0, 1.0, tl.where(z == 1.0, 0.5, 0.0)).to(z.dtype)
    return inside + slope * (below + above)


@triton.jit
def source_index(g, size, BORDER: tl.constexpr, ATEN_CPU: tl.constexpr):
    """Normalised coordinate → pixel coordinate and d(pixel)/d(normalised) (0 where border clamps).

    The operation order is ATen's, fused multiply-add included: at the identity an output pixel lands
    exactly on an input pixel and one ulp decides the floor, i.e. which neighbour the gradient uses. The
    CPU grid sampler (``ATEN_CPU``: the interpreter, checked against the CPU reference) computes
    ``fma(g + 1, size / 2, -0.5)``; the CUDA one ``((g + 1) * size - 1) / 2`` with the multiply-add fused.
    """
    size_f = size * 1.0  # size may arrive as a constexpr (Triton specialises 1)
    if ATEN_CPU:
        i = tl.fma(g + 1.0, size_f * 0.5, -0.5)
    else:
        i = tl.fma(g + 1.0, size_f, -1.0) * 0.5
    d = tl.zeros_like(i) + size_f * 0.5
    if BORDER:
        # torch counts the clamp's ends as outside: no gradient at exactly 0 or size - 1 either.
        d = tl.where((i > 0.0) & (i < size_f - 1.0), d, 0.0)
        i = tl.minimum(tl.maximum(i, 0.0), size_f - 1.0)
    else:
        # Beyond one pixel outside, all four corners read zeros whatever the exact location; clamping
        # there keeps the integer conversion in range for huge scales or near-singular homographies.
        i = tl.minimum(tl.maximum(i, -2.0), size_f + 1.0)
    return i, d


@triton.jit
def corners(ix, iy, h, w, stride_y, stride_x, active):
    """Offsets, validity and weights of the four bilinear corners of pixel location ``(ix, iy)``.

    Returns ``(o00, o01, o10, o11, m00, m01, m10, m11, wx0, wx1, wy0, wy1)``; corner ``yx`` is row
    ``y0 + y``, column ``x0 + x``; ``m`` masks corners outside the image or outside ``active``.
    """
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    wx1 = ix - x0f
    wy1 = iy - y0f
    wx0 = 1.0 - wx1
    wy0 = 1.0 - wy1
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    x1 = x0 + 1
    y1 = y0 + 1
    vx0 = (x0 >= 0) & (x0 < w)
    vx1 = (x1 >= 0) & (x1 < w)
    vy0 = active & (y0 >= 0) & (y0 < h)
    vy1 = active & (y1 >= 0) & (y1 < h)
    o00 = y0 * stride_y + x0 * stride_x
    o01 = y0 * stride_y + x1 * stride_x
    o10 = y1 * stride_y + x0 * stride_x
    o11 = y1 * stride_y + x1 * stride_x
    return o00, o01, o10, o11, vy0 & vx0, vy0 & vx1, vy1 & vx0, vy1 & vx1, wx0, wx1, wy0, wy1


@triton.jit
def gather4(base, o00, o01, o10, o11, m00, m01, m10, m11, acc_dtype: tl.constexpr):
    """The four corner values (0 where masked) in ``acc_dtype``."""
    v00 = tl.load(base + o00, mask=m00, other=0.0).to(acc_dtype)
    v01 = tl.load(base + o01, mask=m01, other=0.0).to(acc_dtype)
    v10 = tl.load(base + o10, mask=m10, other=0.0).to(acc_dtype)
    v11 = tl.load(base + o11, mask=m11, other=0.0).to(acc_dtype)
    return v00, v01, v10, v11


@triton.jit
def interp(v00, v01, v10, v11, wx0, wx1, wy0, wy1):
    """Bilinear value."""
    return wy0 * (wx0 * v00 + wx1 * v01) + wy1 * (wx0 * v10 + wx1 * v11)


@triton.jit
def interp_grad(v00, v01, v10, v11, wx0, wx1, wy0, wy1):
    """d value / d ix and d value / d iy (pixel units)."""
    return wy0 * (v01 - v00) + wy1 * (v11 - v10), wx0 * (v10 - v00) + wx1 * (v11 - v01)


@triton.jit
def scatter4(base, g, o00, o01, o10, o11, m00, m01, m10, m11, wx0, wx1, wy0, wy1):
    """Add ``g`` times each corner weight to the four corners (the input gradient of a bilinear read).

    Callers point ``base`` at a buffer owned by one sample (or one (layer, image) pair), so the atomics
    only meet other pixels of the same sample, never a whole batch on a few shared prototypes.
    """
    tl.atomic_add(base + o00, g * (wy0 * wx0), mask=m00)
    tl.atomic_add(base + o01, g * (wy0 * wx1), mask=m01)
    tl.atomic_add(base + o10, g * (wy1 * wx0), mask=m10)
    tl.atomic_add(base + o11, g * (wy1 * wx1), mask=m11)


@triton.jit
def record4(val_ptr, g, m00, m01, m10, m11, wx0, wx1, wy0, wy1, active):
    """The deterministic stand-in for :func:`scatter4`: store ``g`` times each corner weight at
    ``val_ptr + 0..3`` (0 for a corner outside the input) instead of adding it, for the launcher to add
    with ``index_add_`` (deterministic under ``torch.use_deterministic_algorithms``)."""
    tl.store(val_ptr + 0, tl.where(m00, g * (wy0 * wx0), 0.0), mask=active)
    tl.store(val_ptr + 1, tl.where(m01, g * (wy0 * wx1), 0.0), mask=active)
    tl.store(val_ptr + 2, tl.where(m10, g * (wy1 * wx0), 0.0), mask=active)
    tl.store(val_ptr + 3, tl.where(m11, g * (wy1 * wx1), 0.0), mask=active)


@triton.jit
def record_offsets4(idx_ptr, o00, o01, o10, o11, m00, m01, m10, m11, active):
    """The four corner offsets of :func:`record4`'s values at ``idx_ptr + 0..3`` (0 outside the input: its
    value is 0 there)."""
    tl.store(idx_ptr + 0, tl.where(m00, o00, 0), mask=active)
    tl.store(idx_ptr + 1, tl.where(m01, o01, 0), mask=active)
    tl.store(idx_ptr + 2, tl.where(m10, o10, 0), mask=active)
    tl.store(idx_ptr + 3, tl.where(m11, o11, 0), mask=active)


def deterministic() -> bool:
    """Whether the input gradients must not depend on the order of float atomics
    (``torch.use_deterministic_algorithms(True)``): the backward kernels then record each bilinear
    corner's contribution and the launcher sums them with ``index_add_``, in chunks of
    :data:`RECORD_CHUNK` contributions."""
    return torch.are_deterministic_algorithms_enabled()


RECORD_CHUNK = 1 << 24  # contributions recorded per pass in deterministic mode (64 MiB of float32 values)


def add_recorded(target: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor, plane_base: torch.Tensor) -> None:
    """Add recorded corner contributions into the flat ``target``: ``values`` ``(*planes, HW, 4)`` (four
    corners of HW pixels per plane), ``offsets`` within a plane, broadcastable to ``values`` (planes that
    share their corners share their offsets), ``plane_base`` ``planes``: where each plane starts in
    ``target``. ``index_add_`` adds in a fixed order under ``torch.use_deterministic_algorithms(True)``."""
    index = plane_base[..., None, None] + offsets.to(torch.int64)
    target.index_add_(0, index.expand_as(values).reshape(-1), values.reshape(-1))


def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def block_size(gpu_block: int, n: int) -> int:
    """Pixels per program: ``gpu_block`` on a GPU; under ``TRITON_INTERPRET=1`` one power-of-two block
    covering ``n`` (up to 4096), because the interpreter's cost is per program and per op, not per element."""
    if interpreted():
        return min(max(triton.next_power_of_2(max(n, 1)), gpu_block), 4096)
    return gpu_block


def launch(kernel: Any, grid: tuple, *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)``, or nothing when the tensors are fake (``FakeTensorMode``, meta).

    The launchers are then their ops' fake kernels: run on fake tensors they allocate exactly the
    outputs and the workspace that a real call allocates (what ``torch.compile`` and the device-memory
    estimate of :mod:`dtifast.bench.memory` see), and launch nothing.
    """
    if any(isinstance(a, torch.Tensor) and _fake(a) for a in args):
        return
    kernel[grid](*args, **kwargs)


def _fake(t: torch.Tensor) -> bool:
    return t.device.type == "meta" or torch._subclasses.fake_tensor.is_fake(t)
