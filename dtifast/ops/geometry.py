"""Transforms from raw head parameters, and the per-pixel bases the fused warps apply them to.

The fused backends take a transform ``theta`` (a 2×3 matrix, a homography or TPS source points) and a
``basis`` (what ``theta`` is applied to at each output pixel), both built here in plain PyTorch, so that
autograd chains the kernels' ``theta`` gradient to the raw parameters.

The bases are computed by the same torch calls as the eager reference (``F.affine_grid``'s base grid,
``torch.linspace``, the TPS matrix), on the same device: at the identity transform an output pixel
lands exactly on an input pixel, and a last-bit difference there would change which neighbour the
bilinear gradient uses. They are cached per size, dtype and device, so a training loop builds them once
(except while tracing: see :func:`device_cached`).
"""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import unset_fake_temporarily

__all__ = ["position_matrix", "similarity_matrix", "affine_matrix", "projective_matrix", "tps_control_points",
           "tps_weights", "affine_basis", "linspace_basis", "linspace_grid"]

HOMOGENEOUS_EPS = 1e-8
F = TypeVar("F", bound=Callable)


def _in_fake_mode() -> bool:
    # The active fake mode sits in the dispatcher's FAKE mode slot: a C++ lookup, where detect_fake_mode
    # walks the Python mode stack (as long as a small warp's kernel, on every call). Dynamo's tracing context
    # is covered by is_compiling.
    return torch._C._get_dispatch_mode(torch._C._TorchDispatchModeKey.FAKE) is not None


def device_cached(fn: F) -> F:
    """An ``lru_cache`` of a function returning constant tensors, bypassed while ``torch.compile`` traces
    (the constants then belong in its graph) or a fake-tensor mode is active (a fake tensor must neither be
    cached for later real calls nor served from real ones)."""
    cached = functools.lru_cache(maxsize=64)(fn)

    @functools.wraps(fn)
    def wrapper(*args):
        if torch.compiler.is_compiling() or _in_fake_mode():
            return fn(*args)
        return cached(*args)

    wrapper.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


# The matrices that are linear in (functions of) the raw parameters, as one matrix product: theta =
# inputs @ MAP + BIAS, with theta row-major (N, 6). One autograd node where the stacked form made a dozen,
# which on small warps cost as much as the warp's kernel. Bit for bit the stacked form: every entry of MAP is
# 0 or ±1, so each output is one exact product plus exact zeros, then the bias added.
_LINEAR_MAPS = {
    # (e^s, tx, ty) -> [e^s + 1, 0, tx, 0, e^s + 1, ty]
    "position": ([[1, 0, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]], [1, 0, 0, 0, 1, 0]),
    # (a, b, tx, ty) -> [a + 1, -b, tx, b, a + 1, ty]
    "similarity": ([[1, 0, 0, 0, 1, 0], [0, -1, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1]],
                   [1, 0, 0, 0, 1, 0]),
}


@device_cached
def _linear_map(name: str, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    weights, bias = _LINEAR_MAPS[name]
    return (torch.tensor(weights, dtype=dtype, device=device), torch.tensor(bias, dtype=dtype, device=device))


def _apply_linear_map(name: str, inputs: torch.Tensor) -> torch.Tensor:
    weights, bias = _linear_map(name, inputs.dtype, inputs.device)
    return torch.addmm(bias, inputs, weights).view(-1, 2, 3)


def position_matrix(params: torch.Tensor) -> torch.Tensor:
    """``(N, 3)`` raw ``(s, tx, ty)`` → ``(N, 2, 3)`` matrix ``[[e^s + 1, 0, tx], [0, e^s + 1, ty]]``.

    The ``+1`` is upstream's identity added to ``e^s·I``: zero parameters give a scale of 2, i.e. the
    layer's sprite covers half the image in each direction.
    """
    return _apply_linear_map("position", torch.cat([torch.exp(params[:, :1]), params[:, 1:]], 1))


def similarity_matrix(params: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` raw ``(a, b, tx, ty)`` → ``(N, 2, 3)`` matrix ``[[a + 1, -b, tx], [b, a + 1, ty]]``."""
    return _apply_linear_map("similarity", params)


def affine_matrix(params: torch.Tensor) -> torch.Tensor:
    """``(N, 6)`` raw row-major 2×3 → ``(N, 2, 3)`` matrix ``params + [I | 0]``."""
    return params.view(-1, 2, 3) + torch.eye(2, 3, dtype=params.dtype, device=params.device)


def projective_matrix(params: torch.Tensor) -> torch.Tensor:
    """``(N, 9)`` raw row-major 3×3 → ``(N, 3, 3)`` homography ``params + I``."""
    return params.view(-1, 3, 3) + torch.eye(3, dtype=params.dtype, device=params.device)


def linspace_grid(out_size: tuple[int, int], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``(H, W, 2)`` points ``(x, y)`` on ``linspace(-1, 1)`` per axis (the image corners, not pixel centres)."""
    H, W = out_size
    ys = torch.linspace(-1, 1, H, dtype=dtype, device=device)
    xs = torch.linspace(-1, 1, W, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def tps_control_points(grid_size: int, dtype: torch.dtype = torch.float64,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """``(grid_size², 2)`` control points ``(x, y)`` on ``linspace(-1, 1)``, row-major (y outer, x inner)."""
    return linspace_grid((grid_size, grid_size), dtype, device).reshape(-1, 2)


@device_cached
def cached_control_points(grid_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """:func:`tps_control_points`, built once per (grid_size, dtype, device); callers must not modify it."""
    return tps_control_points(grid_size, dtype, device)


def _tps_radial(points: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """Thin-plate radial basis ``U(r) = r² log r = ½ d log d`` with ``d = r²`` and ``U(0) = 0``."""
    d = ((points[:, None, :] - control[None, :, :]) ** 2).sum(-1)
    return torch.nan_to_num(0.5 * d * torch.log(d), nan=0.0)


@functools.lru_cache(maxsize=64)
def _tps_weights_cpu64(grid_size: int, out_size: tuple[int, int]) -> torch.Tensor:
    """:func:`_solve_tps_weights`, cached as a real tensor even when first asked inside a fake-tensor trace."""
    with unset_fake_temporarily():
        return _solve_tps_weights(grid_size, out_size)


def _solve_tps_weights(grid_size: int, out_size: tuple[int, int]) -> torch.Tensor:
    """``(H·W, G²)`` matrix W such that the TPS grid is ``W @ source_control_points``.

    Solving the TPS system ``[[K, 1, P], [1ᵀ, 0, 0], [Pᵀ, 0, 0]]`` for the target control points P and
    evaluating the interpolant at the target coordinates gives a map that is linear in the source
    control points; W is that map. Computed in float64, except that the solver's control points are
    rounded to float32 and K is built in float32, as upstream's TPS grid does (it casts its float64
    control points with ``.float()``); float64 runs then reproduce upstream exactly.
    """
    ctrl32 = tps_control_points(grid_size, torch.float64).float()  # float64 linspace, then rounded
    ctrl = ctrl32.double()
    n = ctrl.shape[0]
    system = torch.zeros(n + 3, n + 3, dtype=torch.float64)
    system[:n, :n] = _tps_radial(ctrl32, ctrl32).double()
    system[:n, n] = 1
    system[n, :n] = 1
    system[:n, n + 1:] = ctrl
    system[n + 1:, :n] = ctrl.T
    inverse = torch.linalg.inv(system)
    target = linspace_grid(out_size, torch.float64, "cpu").reshape(-1, 2)
    basis = torch.cat([_tps_radial(target, ctrl), torch.ones(target.shape[0], 1, dtype=torch.float64), target], 1)
    return basis @ inverse[:, :n]


@device_cached
def tps_weights(grid_size: int, out_size: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The ``(H·W, grid_size²)`` TPS interpolation matrix in ``dtype`` on ``device`` (cached: a training loop
    does not copy it to the device every step)."""
    size = (int(out_size[0]), int(out_size[1]))
    if torch.compiler.is_compiling():  # a constant of the compiled graph, solved while tracing
        weights = _solve_tps_weights(int(grid_size), size)
    else:
        weights = _tps_weights_cpu64(int(grid_size), size)
        fake_mode = detect_fake_mode()
        if fake_mode is not None:  # a fake-tensor trace takes the real cached constant in as one of its own
            weights = fake_mode.from_tensor(weights)
    return weights.to(device=device, dtype=dtype).contiguous()


def _affine_axis(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # ATen's affine_grid_generator (align_corners=False): linspace(-1, 1, n) * (n - 1) / n, and 0 for n = 1.
    if n <= 1:
        return torch.zeros(n, dtype=dtype, device=device)
    return torch.linspace(-1, 1, n, dtype=dtype, device=device) * (n - 1) / n


@device_cached
def affine_basis(out_size: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(W + H,)``: the x of each output column then the y of each output row on ``F.affine_grid``'s base
    grid (pixel centres, ``align_corners=False``), bit-identical to ``F.affine_grid`` on ``device``."""
    H, W = out_size
    return torch.cat([_affine_axis(W, dtype, device), _affine_axis(H, dtype, device)]).contiguous()


@device_cached
def linspace_basis(out_size: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(W + H,)``: ``linspace(-1, 1, W)`` then ``linspace(-1, 1, H)`` (the projective warp's output points)."""
    H, W = out_size
    return torch.cat([torch.linspace(-1, 1, W, dtype=dtype, device=device),
                      torch.linspace(-1, 1, H, dtype=dtype, device=device)]).contiguous()
