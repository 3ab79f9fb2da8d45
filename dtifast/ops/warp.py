"""Fused Triton warps registered as ``torch.library`` custom ops with autograd.

Ops (one per warp, all sharing :mod:`dtifast.kernels.warp`):
``dtifast::warp_{position,similarity,affine,projective,tps}_triton(x, params, index, out_h, out_w, border)``
and their ``…_backward_triton`` twins. Each converts the raw head parameters into the transform the
kernel reads (the identity added exactly as :mod:`dtifast.ops.reference` does), and maps the kernel's
transform gradient back to the raw parameters in closed form.

``index`` (optional, int64 ``(N,)``) lets N outputs read K shared inputs ``x`` ``(K, C, h, w)``
without copying them; the input gradient is then summed per prototype (see the kernel module).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

from dtifast.kernels import warp as kw

from . import reference
from ._checks import check_indexed_warp_inputs

__all__ = ["warp_position", "warp_similarity", "warp_affine", "warp_projective", "warp_tps"]

_MODE = {"position": kw.AFFINE, "similarity": kw.AFFINE, "affine": kw.AFFINE, "projective": kw.PROJECTIVE,
         "tps": kw.TPS}


@functools.lru_cache(maxsize=32)
def _tps_weights(grid_size: int, out_size: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Cached per device so that a training loop does not copy the (H·W, G²) matrix every step.
    return reference.tps_weights(grid_size, out_size, dtype, device).contiguous()


def _theta(kind: str, params: torch.Tensor) -> torch.Tensor:
    """What the kernel reads: the 2×3 matrix (N, 6), the homography (N, 9) or source points (N, G², 2)."""
    n = params.shape[0]
    if kind == "position":
        return reference.position_matrix(params).reshape(n, 6)
    if kind == "similarity":
        return reference.similarity_matrix(params).reshape(n, 6)
    if kind == "affine":
        return reference.affine_matrix(params).reshape(n, 6)
    if kind == "projective":
        return reference.projective_matrix(params).reshape(n, 9)
    grid_size = round(params.shape[1] ** 0.5)
    return reference.tps_control_points(grid_size, params.dtype, params.device) + params


def _params_grad(kind: str, params: torch.Tensor, dtheta: torch.Tensor) -> torch.Tensor:
    """Chain the transform gradient to the raw parameters (the Jacobian of :func:`_theta`)."""
    if kind == "position":
        d = dtheta.view(-1, 6)
        return torch.stack([(d[:, 0] + d[:, 4]) * torch.exp(params[:, 0]), d[:, 2], d[:, 5]], 1)
    if kind == "similarity":
        d = dtheta.view(-1, 6)
        return torch.stack([d[:, 0] + d[:, 4], d[:, 3] - d[:, 1], d[:, 2], d[:, 5]], 1)
    return dtheta.view(params.shape)


def _weights(kind: str, params: torch.Tensor, out_size: tuple[int, int]) -> Optional[torch.Tensor]:
    if kind != "tps":
        return None
    return _tps_weights(round(params.shape[1] ** 0.5), out_size, params.dtype, params.device)


def _register(kind: str) -> Callable:
    name = f"dtifast::warp_{kind}_triton"

    @torch.library.custom_op(name, mutates_args=())
    def forward(x: torch.Tensor, params: torch.Tensor, index: Optional[torch.Tensor], out_h: int, out_w: int,
                border: bool) -> torch.Tensor:
        size = (out_h, out_w)
        return kw.warp_forward(x, _theta(kind, params), index, _weights(kind, params, size), _MODE[kind], size, border)

    @torch.library.register_fake(name)
    def _(x, params, index, out_h, out_w, border):
        return x.new_empty(params.shape[0], x.shape[1], out_h, out_w)

    @torch.library.custom_op(name.replace("_triton", "_backward_triton"), mutates_args=())
    def backward(grad: torch.Tensor, x: torch.Tensor, params: torch.Tensor, index: Optional[torch.Tensor], out_h: int,
                 out_w: int, border: bool, need_x: bool, need_params: bool) -> tuple[torch.Tensor, torch.Tensor]:
        size = (out_h, out_w)
        dx, dtheta = kw.warp_backward(grad, x, _theta(kind, params), index, _weights(kind, params, size), _MODE[kind],
                                      size, border, need_x, need_params)
        # A custom op returns tensors only: an empty tensor stands for "not requested".
        dx = dx if dx is not None else x.new_empty(0)
        dp = _params_grad(kind, params, dtheta) if dtheta is not None else params.new_empty(0)
        return dx, dp

    @torch.library.register_fake(name.replace("_triton", "_backward_triton"))
    def _(grad, x, params, index, out_h, out_w, border, need_x, need_params):
        return (torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else x.new_empty(0),
                torch.empty_like(params, memory_format=torch.contiguous_format) if need_params else params.new_empty(0))

    def setup_context(ctx, inputs, output):
        x, params, index, out_h, out_w, border = inputs
        ctx.save_for_backward(x, params, index)
        ctx.meta = (out_h, out_w, border)

    def grad_fn(ctx, grad):
        x, params, index = ctx.saved_tensors
        need_x, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx, dp = backward(grad, x, params, index, *ctx.meta, need_x, need_params)
        return (dx if need_x else None), (dp if need_params else None), None, None, None, None

    torch.library.register_autograd(name, grad_fn, setup_context=setup_context)
    return forward


_OPS = {kind: _register(kind) for kind in _MODE}


def _warp(kind: str, x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str,
          index: Optional[torch.Tensor], n_params) -> torch.Tensor:
    out_size = check_indexed_warp_inputs(x, params, n_params, out_size, padding, index)
    return _OPS[kind](x, params, index, out_size[0], out_size[1], padding == "border")


def warp_position(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros", *,
                  index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused :func:`dtifast.ops.reference.warp_position` (same convention, arguments and result).

    Args:
        x: ``(N, C, h, w)``, or ``(K, C, h, w)`` shared inputs with ``index``.
        params: ``(N, 3)`` raw ``(s, tx, ty)``.
        out_size: ``(H, W)``.
        padding: ``"zeros"`` or ``"border"``.
        index: optional int64 ``(N,)``: output n warps ``x[index[n]]``.

    Returns:
        ``(N, C, H, W)``.
    """
    return _warp("position", x, params, out_size, padding, index, 3)


def warp_similarity(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros", *,
                    index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused :func:`dtifast.ops.reference.warp_similarity`; ``params`` ``(N, 4)``, ``index`` as :func:`warp_position`."""
    return _warp("similarity", x, params, out_size, padding, index, 4)


def warp_affine(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros", *,
                index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused :func:`dtifast.ops.reference.warp_affine`; ``params`` ``(N, 6)``, ``index`` as :func:`warp_position`."""
    return _warp("affine", x, params, out_size, padding, index, 6)


def warp_projective(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros", *,
                    index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused :func:`dtifast.ops.reference.warp_projective` (kornia-0.3 linspace grid, ``|w| <= 1e-8`` not
    divided); ``params`` ``(N, 9)``, ``index`` as :func:`warp_position`."""
    return _warp("projective", x, params, out_size, padding, index, 9)


def warp_tps(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros",
             grid_size: int = 4, *, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused :func:`dtifast.ops.reference.warp_tps`; ``params`` ``(N, grid_size², 2)`` (or flat
    ``(N, 2·grid_size²)``), ``index`` as :func:`warp_position`. The TPS interpolation matrix is
    precomputed once per (grid_size, out_size, dtype, device); the kernel evaluates the grid on the fly."""
    if not isinstance(grid_size, int) or grid_size < 2:
        raise ValueError(f"grid_size must be an int >= 2, got {grid_size!r}")
    if isinstance(params, torch.Tensor) and params.dim() == 2 and params.shape[1] == 2 * grid_size ** 2:
        params = params.view(params.shape[0], grid_size ** 2, 2)
    return _warp("tps", x, params, out_size, padding, index, (grid_size ** 2, 2))
