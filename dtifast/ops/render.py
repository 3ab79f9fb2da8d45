"""Placing sprites in the image and the fused render loss, on every backend.

Public ops: :func:`place_sprites` (position warp + train-time mask noise) and :func:`render_loss` (place the
selected sprites, composite them over the background with the occlusion matrix, mean squared error
against the images: one pass, nothing of image size stored; the backward recomputes the pass).

(The module is not called ``render_loss``: a submodule of that name would replace the public function
``dtifast.ops.render_loss`` on import.)

Where each part lives:

* reference (the ``torch`` backend): :func:`dtifast.ops.reference.place_sprites`, ``render_loss``;
* Triton kernels: ``kernels/render_loss.py`` (sampling from ``kernels/sampling.py``, the layer tile from
  ``kernels/composite.py``);
* C++ and CUDA kernels: ``csrc/render_loss.cpp`` (+ ``csrc/place.h``, ``csrc/composite.h``),
  ``csrc/cuda/render_loss.cu`` + ``bind_render_loss.cpp``;
* custom ops (one contract, :mod:`dtifast.ops._library`): ``dtifast::render_loss(x, sprites, theta,
  occlusion, background, noise, basis)`` and its ``_triton`` twin, where ``theta`` ``(L, B, 6)`` are the
  layers' placement matrices (built here from the raw position parameters) and ``basis`` the image's
  pixel-centre coordinates (:func:`dtifast.ops.geometry.affine_basis`).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import geometry, reference
from ._backend import OpSpec, native_error, register, select
from ._checks import check_max_layers, check_place_inputs, check_sprite_space_inputs
from ._library import define_triton_op, fused_op, register_autograd
from .pointwise import softclip
from .warp import warp_position

__all__ = ["place_sprites", "render_loss"]


def _render_loss_triton(x: torch.Tensor, sprites: torch.Tensor, theta: torch.Tensor, occlusion: torch.Tensor,
                        background: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                        basis: torch.Tensor) -> torch.Tensor:
    from dtifast.kernels import render_loss as kernels
    return kernels.render_loss_forward(x, sprites, theta, occlusion, background, noise, basis)


def _render_loss_backward_triton(grad: torch.Tensor, x: torch.Tensor, sprites: torch.Tensor, theta: torch.Tensor,
                                 occlusion: torch.Tensor, background: Optional[torch.Tensor],
                                 noise: Optional[torch.Tensor], basis: torch.Tensor, need_x: bool, need_sprites: bool,
                                 need_theta: bool, need_occlusion: bool, need_background: bool,
                                 need_noise: bool) -> list[torch.Tensor]:
    from dtifast.kernels import render_loss as kernels
    needs = (need_x, need_sprites, need_theta, need_occlusion, need_background, need_noise)
    grads = kernels.render_loss_backward(grad, x, sprites, theta, occlusion, background, noise, basis, needs)
    # Separate empty tensors: the outputs of a custom op must not alias each other.
    return [g if g is not None else x.new_empty(0) for g in grads]


def _render_loss_fake(x, sprites, theta, occlusion, background, noise, basis):
    return x.new_empty(())


define_triton_op("render_loss", _render_loss_triton, _render_loss_backward_triton, n_diff=6)
if native_error() is None:
    register_autograd("render_loss", forward_fake=_render_loss_fake, n_diff=6)


def place_sprites(sprites: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                  noise: Optional[torch.Tensor] = None, *,
                  backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Place sprites in the image by their layer's position transform, with optional mask noise.

    The sprite is warped with :func:`dtifast.ops.warp_position` (zeros padding). With ``noise``, the sprite
    carries a footprint channel ("canvas", 1 inside the sprite, 0 for the empty sprite); the mask becomes
    ``softclip(mask + canvas · noise)`` after the warp, which is upstream's train-time mask noise.

    Args:
        sprites: ``(N, C + 1, h, w)`` colours then mask, or ``(N, C + 2, h, w)`` colours, mask, canvas
            when ``noise`` is given.
        params: ``(N, 3)`` raw position parameters ``(s, tx, ty)``.
        out_size: ``(H, W)``.
        noise: ``(N, 1, H, W)`` already scaled noise (upstream: ``0.4 · (2u - 1)``), or None.
        backend: see :mod:`dtifast.ops._backend` (the warp and softclip run on it).

    Returns:
        colours ``(N, C, H, W)`` and masks ``(N, 1, H, W)``.
    """
    out_size = check_place_inputs(sprites, params, out_size, noise)
    name = select("place_sprites", backend, sprites.device, sprites.dtype)
    if name == "torch":
        return reference.place_sprites(sprites, params, out_size, noise)
    warped = warp_position(sprites, params, out_size, "zeros", backend=name)
    n_color = sprites.shape[1] - (1 if noise is None else 2)
    colors, mask = warped[:, :n_color], warped[:, n_color:n_color + 1]
    if noise is not None:
        mask = softclip(mask + warped[:, n_color + 1:] * noise, backend=name)
    return colors, mask


def render_loss(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                background: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None, *,
                backend: Optional[str] = None) -> torch.Tensor:
    """Reconstruction loss of the selected sprites: place, composite over the background, MSE.

    .. math:: \\mathcal{L} = \\mathrm{mean}\\big((\\mathrm{composite}(\\mathrm{place}(s_l, p_l)) - x)^2\\big)

    Args:
        x: target images ``(B, C, H, W)``.
        sprites: selected sprites ``(L, B, C + E, h, w)`` (colours, mask, and canvas when ``noise`` is
            given; see :func:`place_sprites`); any strides (expanded views are read in place).
        params: ``(L, B, 3)`` position parameters ``(s, tx, ty)``.
        occlusion: ``(L, L, B)`` (see :func:`dtifast.ops.composite_layers`).
        background: ``(B, C, H, W)`` or None (black).
        noise: ``(L, B, 1, H, W)`` scaled mask noise of each selected sprite, or None.
        backend: see :mod:`dtifast.ops._backend`.

    Returns:
        Scalar mean squared error over ``B, C, H, W`` (0 for an empty batch); gradients flow to every input.
    """
    L = sprites.shape[0] if isinstance(sprites, torch.Tensor) and sprites.dim() == 5 else "L"
    check_sprite_space_inputs(x, sprites, params, occlusion, background, noise, ("L",), (L, x.shape[0]))
    name = select("render_loss", backend, x.device, x.dtype)
    if name == "torch":
        return reference.render_loss(x, sprites, params, occlusion, background, noise)
    check_max_layers(sprites.shape[0], name)
    theta = geometry.position_matrix(params.reshape(-1, 3)).view(params.shape[0], params.shape[1], 6)
    basis = geometry.affine_basis(tuple(x.shape[-2:]), x.dtype, x.device)
    return fused_op("render_loss", name)(x, sprites, theta, occlusion, background, noise, basis)


register(OpSpec("place_sprites", place_sprites, native=("warp_theta", "softclip"), triton=True))
register(OpSpec("render_loss", render_loss, native=("render_loss",), triton=True))
