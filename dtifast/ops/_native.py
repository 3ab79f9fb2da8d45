"""The ``cpu`` and ``cuda`` backends: kernels of the compiled extension ``dtifast._C``.

Importing ``dtifast._C`` registers the ops under ``torch.ops.dtifast``; torch dispatches each call to
the CPU or CUDA kernel by the tensors' device. Autograd is attached here with
``torch.library.register_autograd``, so the ops also work under ``torch.compile``.
"""
from __future__ import annotations

from typing import Optional

import torch

from dtifast import _C  # noqa: F401  (registers torch.ops.dtifast.*)

from . import reference
from ._checks import (check_color_inputs, check_composite_inputs, check_greedy_options, check_image_candidates,
                      check_indexed_warp_inputs, check_sprite_space_inputs, check_tensor)

_NATIVE_DTYPES = (torch.float32, torch.float64)
_MAX_LAYERS = 16  # csrc/composite.h kMaxLayers: per-pixel layer state lives in registers/stack

# The compiled kernels behind each op: the ``cpu`` and ``cuda`` backends share this module, and an op is
# theirs on a device only where every kernel it calls is registered for that device.
_KERNELS = {
    "softclip": ("softclip",),
    "color_transform": ("color_transform",),
    "warp_position": ("warp",), "warp_similarity": ("warp",), "warp_affine": ("warp",),
    "warp_projective": ("warp",), "warp_tps": ("warp",),
    "composite_layers": ("composite",), "composite_candidates": ("composite",),
    "place_sprites": ("warp", "softclip"),
    "render_loss": ("render_loss",),
    "greedy_select_sprites": ("greedy_select",),
    "greedy_select": ("greedy_select_layers",),
}


def implements(op: str, device: torch.device) -> bool:
    """Whether ``dtifast._C`` has the kernels of ``op`` for ``device``'s type (CPU, or CUDA when built)."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device.type)
    return key is not None and op in _KERNELS and all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"dtifast::{k}", key) for k in _KERNELS[op])


def _check_native(t: torch.Tensor, name: str) -> None:
    """The kernels exist for float32/float64 on CPU (and CUDA where built); say so rather than fail deep."""
    check_tensor(t, name, dtypes=_NATIVE_DTYPES, finite=False)
    if t.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"{name} must be on CPU or CUDA for the native backend, got {t.device}")


def _softclip_setup_context(ctx, inputs, output):
    x, slope = inputs
    ctx.slope = slope
    ctx.save_for_backward(x)


def _softclip_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.dtifast.softclip_backward(grad, x, ctx.slope), None


@torch.library.register_fake("dtifast::softclip")
def _softclip_fake(x, slope):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


torch.library.register_autograd("dtifast::softclip", _softclip_backward, setup_context=_softclip_setup_context)


def softclip(x: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """Native :func:`dtifast.ops.reference.softclip` (float32/float64)."""
    check_tensor(x, "x", dtypes=_NATIVE_DTYPES, finite=False)
    return torch.ops.dtifast.softclip(x, float(slope))


@torch.library.register_fake("dtifast::color_transform")
def _color_fake(x, params, slope):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("dtifast::color_transform_backward")
def _color_backward_fake(grad, x, params, slope):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(params, memory_format=torch.contiguous_format))


def _color_setup_context(ctx, inputs, output):
    x, params, slope = inputs
    ctx.slope = slope
    ctx.save_for_backward(x, params)


def _color_backward(ctx, grad):
    x, params = ctx.saved_tensors
    dx, dparams = torch.ops.dtifast.color_transform_backward(grad, x, params, ctx.slope)
    return dx, dparams, None


torch.library.register_autograd("dtifast::color_transform", _color_backward, setup_context=_color_setup_context)


def color_transform(x: torch.Tensor, params: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """Native :func:`dtifast.ops.reference.color_transform`: ``x`` ``(N, C + E, h, w)`` or ``(N, 1, h, w)``,
    ``params`` ``(N, 2·C)`` interleaved (gain, bias) → ``(N, C + E, h, w)``; one pass, softclip fused."""
    x, _ = check_color_inputs(x, params)
    _check_native(x, "x")
    return torch.ops.dtifast.color_transform(x, params, float(slope))


def place_sprites(sprites: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                  noise: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Native :func:`dtifast.ops.reference.place_sprites` (the native position warp and softclip):
    ``sprites`` ``(N, C + 1 or C + 2, h, w)``, ``params`` ``(N, 3)``, ``noise`` ``(N, 1, H, W)`` or None →
    colours ``(N, C, H, W)`` and masks ``(N, 1, H, W)``."""
    return reference.place_sprites_with(sprites, params, out_size, noise, warp_position, softclip)


# ----------------------------------------------------------------------------------------------------
# Warps: one C++ op (dtifast::warp) for the three grid families; the raw head parameters become the
# transform the kernel reads through the reference's own matrix functions, so autograd chains the
# kernel's theta gradient to the parameters without a second copy of that math.
# ----------------------------------------------------------------------------------------------------

_AFFINE, _PROJECTIVE, _TPS = 0, 1, 2  # csrc/sampling.h WarpMode


@torch.library.register_fake("dtifast::warp")
def _warp_fake(x, theta, wts, index, mode, out_h, out_w, border):
    return x.new_empty(theta.shape[0], x.shape[1], out_h, out_w)


@torch.library.register_fake("dtifast::warp_backward")
def _warp_backward_fake(grad, x, theta, wts, index, mode, out_h, out_w, border, need_x, need_theta):
    return (torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else x.new_empty(0),
            torch.empty_like(theta, memory_format=torch.contiguous_format) if need_theta else x.new_empty(0))


def _warp_setup_context(ctx, inputs, output):
    x, theta, wts, index, mode, out_h, out_w, border = inputs
    ctx.save_for_backward(x, theta, wts, index)
    ctx.meta = (mode, out_h, out_w, border)


def _warp_backward(ctx, grad):
    x, theta, wts, index = ctx.saved_tensors
    need_x, need_theta = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    dx, dtheta = torch.ops.dtifast.warp_backward(grad, x, theta, wts, index, *ctx.meta, need_x, need_theta)
    return (dx if need_x else None), (dtheta if need_theta else None), None, None, None, None, None, None


torch.library.register_autograd("dtifast::warp", _warp_backward, setup_context=_warp_setup_context)


def _warp(x: torch.Tensor, theta: torch.Tensor, wts: Optional[torch.Tensor], mode: int, out_size: tuple[int, int],
          padding: str, index: Optional[torch.Tensor]) -> torch.Tensor:
    _check_native(x, "x")
    return torch.ops.dtifast.warp(x, theta, wts, index, mode, out_size[0], out_size[1], padding == "border")


def warp_position(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                  padding: str = "zeros", *, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Native :func:`dtifast.ops.reference.warp_position`: same convention (``F.affine_grid`` pixel
    centres, ``align_corners=False`` bilinear), arguments ``x`` ``(N, C, h, w)`` (or ``(K, C, h, w)`` read
    through ``index`` ``(N,)`` in place), ``params`` ``(N, 3)`` and result ``(N, C, H, W)``; the grid is
    computed on the fly, never stored."""
    out_size = check_indexed_warp_inputs(x, params, 3, out_size, padding, index)
    return _warp(x, reference.position_matrix(params).reshape(-1, 6), None, _AFFINE, out_size, padding, index)


def warp_similarity(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                    padding: str = "zeros", *, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Native :func:`dtifast.ops.reference.warp_similarity`; ``params`` ``(N, 4)`` as ``(a, b, tx, ty)``."""
    out_size = check_indexed_warp_inputs(x, params, 4, out_size, padding, index)
    return _warp(x, reference.similarity_matrix(params).reshape(-1, 6), None, _AFFINE, out_size, padding, index)


def warp_affine(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                padding: str = "zeros", *, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Native :func:`dtifast.ops.reference.warp_affine`; ``params`` ``(N, 6)``, the 2×3 matrix row-major."""
    out_size = check_indexed_warp_inputs(x, params, 6, out_size, padding, index)
    return _warp(x, reference.affine_matrix(params).reshape(-1, 6), None, _AFFINE, out_size, padding, index)


def warp_projective(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                    padding: str = "zeros", *, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Native :func:`dtifast.ops.reference.warp_projective`.

    **Convention:** output pixels on ``linspace(-1, 1)`` per axis (kornia 0.3, not pixel centres),
    ``(u, v, w) = H·(x, y, 1)``, sample at ``(u/w, v/w)`` or ``(u, v)`` where ``|w| <= 1e-8``;
    ``params`` ``(N, 9)`` row-major, ``H = params + I``.
    """
    out_size = check_indexed_warp_inputs(x, params, 9, out_size, padding, index)
    return _warp(x, reference.projective_matrix(params).reshape(-1, 9), None, _PROJECTIVE, out_size, padding, index)


def warp_tps(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros",
             grid_size: int = 4, *, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Native :func:`dtifast.ops.reference.warp_tps`: ``params`` ``(N, grid_size², 2)`` offsets (or flat
    ``(N, 2·grid_size²)``); the kernel evaluates ``W @ (control points + params)`` per pixel with the
    reference's ``(H·W, grid_size²)`` matrix W."""
    if not isinstance(grid_size, int) or grid_size < 2:
        raise ValueError(f"grid_size must be an int >= 2, got {grid_size!r}")
    if isinstance(params, torch.Tensor) and params.dim() == 2 and params.shape[1] == 2 * grid_size ** 2:
        params = params.view(params.shape[0], grid_size ** 2, 2)
    out_size = check_indexed_warp_inputs(x, params, (grid_size ** 2, 2), out_size, padding, index)
    source = reference.tps_control_points(grid_size, params.dtype, params.device) + params
    wts = reference.tps_weights(grid_size, out_size, params.dtype, params.device)
    return _warp(x, source, wts, _TPS, out_size, padding, index)


# ----------------------------------------------------------------------------------------------------
# Layer compositing
# ----------------------------------------------------------------------------------------------------

@torch.library.register_fake("dtifast::composite")
def _composite_fake(layers, masks, occlusion, background):
    return layers.new_empty(layers.shape[1:])


@torch.library.register_fake("dtifast::composite_backward")
def _composite_backward_fake(grad, layers, masks, occlusion, background, need_layers, need_masks, need_occlusion,
                             need_background):
    def grad_like(t, needed):
        return torch.empty_like(t, memory_format=torch.contiguous_format) if needed and t is not None \
            else layers.new_empty(0)
    return (grad_like(layers, need_layers), grad_like(masks, need_masks), grad_like(occlusion, need_occlusion),
            grad_like(background, need_background))


def _composite_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _composite_backward(ctx, grad):
    layers, masks, occlusion, background = ctx.saved_tensors
    needs = ctx.needs_input_grad[:4]
    grads = torch.ops.dtifast.composite_backward(grad, layers, masks, occlusion, background, *needs)
    return tuple(g if need else None for g, need in zip(grads, needs))


torch.library.register_autograd("dtifast::composite", _composite_backward, setup_context=_composite_setup_context)


def composite_layers(layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                     background: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Native :func:`dtifast.ops.reference.composite_layers` (one pass per pixel, no (L, L, B, H, W) tensor).

    .. math:: \\mathrm{out} = \\sum_k \\prod_{j \\ne k} (1 - o_{jk}\\, m_j)\\; m_k\\, x_k

    Args:
        layers: ``(L, B, C, H, W)`` with ``L <= 16``; masks: ``(L, B, 1, H, W)``; occlusion: ``(L, L, B)``
            (diagonal ignored); background: ``(B, C, H, W)`` or None.

    Returns:
        ``(B, C, H, W)``.
    """
    check_composite_inputs(layers, masks, occlusion, background)
    _check_native(layers, "layers")
    if layers.shape[0] > _MAX_LAYERS:
        raise ValueError(f"the native compositing takes at most {_MAX_LAYERS} layers, got {layers.shape[0]}")
    return torch.ops.dtifast.composite(layers, masks, occlusion, background)


def composite_candidates(layers: torch.Tensor, masks: torch.Tensor,
                         backgrounds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Native :func:`dtifast.ops.reference.composite_candidates` through the compositing kernel: ``layers``
    ``(K, B, C, H, W)``, ``masks`` ``(K, B, 1, H, W)``, ``backgrounds`` ``(M, B, C, H, W)`` or None →
    ``(B, M·K, C, H, W)``, candidate index ``m·K + k``."""
    return reference.composite_candidates_with(layers, masks, backgrounds, composite_layers)


# ----------------------------------------------------------------------------------------------------
# Render loss: place + mask noise + composite + MSE in one pass; the backward recomputes that pass.
# ----------------------------------------------------------------------------------------------------

@torch.library.register_fake("dtifast::render_loss")
def _render_loss_fake(x, sprites, theta, occlusion, background, noise):
    return x.new_empty(())


@torch.library.register_fake("dtifast::render_loss_backward")
def _render_loss_backward_fake(grad, x, sprites, theta, occlusion, background, noise, *needs):
    inputs = (x, sprites, theta, occlusion, background, noise)
    return [torch.empty_like(t, memory_format=torch.contiguous_format) if need and t is not None else x.new_empty(0)
            for t, need in zip(inputs, needs)]


def _render_loss_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _render_loss_backward(ctx, grad):
    inputs = ctx.saved_tensors
    needs = ctx.needs_input_grad[:6]
    grads = torch.ops.dtifast.render_loss_backward(grad, *inputs, *needs)
    return tuple(g if need else None for g, need in zip(grads, needs))


torch.library.register_autograd("dtifast::render_loss", _render_loss_backward,
                                setup_context=_render_loss_setup_context)


def render_loss(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                background: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Native :func:`dtifast.ops.reference.render_loss`: position warp of the selected sprites, mask noise,
    occlusion compositing over the background and the MSE in one pass per pixel (nothing image-sized stored).

    Args:
        x: target images ``(B, C, H, W)``.
        sprites: ``(L, B, C + 1, h, w)`` (colours, mask) or ``(L, B, C + 2, h, w)`` (… canvas) with ``noise``.
        params: ``(L, B, 3)`` raw position parameters ``(s, tx, ty)``.
        occlusion: ``(L, L, B)``; background: ``(B, C, H, W)`` or None.
        noise: ``(L, B, 1, H, W)`` scaled mask noise, or None.

    Returns:
        Scalar mean squared error over ``B, C, H, W``; differentiable in every tensor argument.
    """
    L = sprites.shape[0] if isinstance(sprites, torch.Tensor) and sprites.dim() == 5 else "L"
    check_sprite_space_inputs(x, sprites, params, occlusion, background, noise, ("L",), (L, x.shape[0]))
    _check_native(x, "x")
    B = x.shape[0]
    if L > _MAX_LAYERS:
        raise ValueError(f"the native render loss takes at most {_MAX_LAYERS} layers, got {L}")
    theta = reference.position_matrix(params.reshape(L * B, 3)).reshape(L, B, 6)
    return torch.ops.dtifast.render_loss(x, sprites, theta, occlusion, background, noise)


# ----------------------------------------------------------------------------------------------------
# Greedy selection with sprite-space candidates (no gradient)
# ----------------------------------------------------------------------------------------------------

@torch.library.register_fake("dtifast::greedy_select")
def _greedy_select_fake(x, sprites, theta, occlusion, background, n_iter, penalty, noise):
    return x.new_empty(sprites.shape[0], sprites.shape[1], x.shape[0])


def greedy_select_sprites(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                          background: Optional[torch.Tensor] = None, n_iter: int = 1,
                          empty_penalty: Optional[torch.Tensor] = None,
                          noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Native :func:`dtifast.ops.reference.greedy_select_sprites`: each candidate is placed on the fly and
    scored against the per-pixel decomposition ``S0 - m·S1 + A·m·c`` of the other layers, so no
    ``(K, B, C, H, W)`` tensor is built; ties go to the lowest k.

    Args:
        x: ``(B, C, H, W)``.
        sprites: ``(L, K, B, C + E, h, w)`` candidates (E = 1: mask; E = 2: mask, canvas with ``noise``);
            an expanded view (stride 0 over L, K or B) is read in place.
        params: ``(L, B, 3)`` position parameters of each layer.
        occlusion: ``(L, L, B)``; background: ``(B, C, H, W)`` or None (black).
        n_iter: sweeps over the layers; empty_penalty: ``(K,)`` or None; noise: ``(K, 1, H, W)`` or None.

    Returns:
        ``(L, K, B)`` one-hot selection in ``x``'s dtype.
    """
    K = sprites.shape[1] if isinstance(sprites, torch.Tensor) and sprites.dim() == 6 else "K"
    check_sprite_space_inputs(x, sprites, params, occlusion, background, noise, ("L", "K"), (K,))
    check_greedy_options(x, sprites.shape[1], n_iter, empty_penalty)
    _check_native(x, "x")
    L, B = sprites.shape[0], x.shape[0]
    if L > _MAX_LAYERS:
        raise ValueError(f"the native greedy selection takes at most {_MAX_LAYERS} layers, got {L}")
    with torch.no_grad():
        theta = reference.position_matrix(params.reshape(L * B, 3)).reshape(L, B, 6)
        return torch.ops.dtifast.greedy_select(x, sprites, theta, occlusion, background, n_iter, empty_penalty,
                                               noise)


def greedy_select(x: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                  background: Optional[torch.Tensor] = None, n_iter: int = 1,
                  empty_penalty: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Native :func:`dtifast.ops.reference.greedy_select` on image-space candidates, with the scoring of
    :func:`greedy_select_sprites` (``S0 - m·S1 + A·m·c`` per pixel, no composite built per candidate).

    Args:
        x: ``(B, C, H, W)``; layers: ``(L, K, B, C, H, W)`` with ``L <= 16``; masks: ``(L, K, B, 1, H, W)``;
        occlusion: ``(L, L, B)``; background: ``(B, C, H, W)`` or None (black); n_iter: sweeps;
        empty_penalty: ``(K,)`` or None.

    Returns:
        ``(L, K, B)`` one-hot selection in ``x``'s dtype; ties go to the lowest k.
    """
    check_image_candidates(x, layers, masks, occlusion, background, n_iter, empty_penalty)
    _check_native(x, "x")
    if layers.shape[0] > _MAX_LAYERS:
        raise ValueError(f"the native greedy selection takes at most {_MAX_LAYERS} layers, got {layers.shape[0]}")
    with torch.no_grad():
        return torch.ops.dtifast.greedy_select_layers(x, layers, masks, occlusion, background, n_iter, empty_penalty)
