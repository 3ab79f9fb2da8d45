"""Greedy sprite selection (no gradient: the choice is a constant of the training step), on every backend.

Public ops: :func:`greedy_select` (candidates given in image space) and :func:`greedy_select_sprites`
(candidates in sprite space, placed on the fly by their layer's position transform: the fused kernels
never build the ``(L, K, B, C, H, W)`` image-space candidates).

For layer l, with the other layers' current choices fixed, the composite with candidate ``(x_l, m_l)`` is
``S0 − m_l·S1 + A_l·m_l·x_l`` per pixel (see ``kernels/greedy.py``); the fused backends score every
candidate from these three terms.

Where each part lives:

* reference (the ``torch`` backend): :func:`dtifast.ops.reference.greedy_select`, ``greedy_select_sprites``
  (upstream's algorithm: every candidate composited in full);
* Triton kernels: ``kernels/greedy.py``; C++: ``csrc/greedy.cpp``; CUDA: ``csrc/cuda/greedy.cu`` +
  ``bind_greedy.cpp`` (sprite space only);
* custom ops (one contract each): ``dtifast::greedy_select(x, layers, masks, occlusion, background,
  n_iter, empty_penalty)``, ``dtifast::greedy_select_sprites(x, sprites, theta, occlusion, background,
  n_iter, empty_penalty, noise, basis)`` and their ``_triton`` twins; ``theta`` ``(L, B, 6)`` are the
  layers' placement matrices built here, ``basis`` the image's pixel-centre coordinates.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import geometry, reference
from ._backend import OpSpec, native_error, register, select
from ._checks import check_greedy_options, check_image_candidates, check_max_layers, check_sprite_space_inputs
from ._library import fused_op

__all__ = ["greedy_select", "greedy_select_sprites"]


def _greedy_sprites_triton(x: torch.Tensor, sprites: torch.Tensor, theta: torch.Tensor, occlusion: torch.Tensor,
                           background: Optional[torch.Tensor], n_iter: int, empty_penalty: Optional[torch.Tensor],
                           noise: Optional[torch.Tensor], basis: torch.Tensor) -> torch.Tensor:
    from dtifast.kernels import greedy as kernels
    return kernels.greedy_select(x, sprites, None, theta, occlusion, background, n_iter, empty_penalty, noise, basis)


def _greedy_images_triton(x: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                          background: Optional[torch.Tensor], n_iter: int,
                          empty_penalty: Optional[torch.Tensor]) -> torch.Tensor:
    from dtifast.kernels import greedy as kernels
    return kernels.greedy_select(x, layers, masks, None, occlusion, background, n_iter, empty_penalty, None, None)


def _selection_fake(x, candidates, *args):
    return x.new_empty(candidates.shape[:3])


for _name, _impl in (("greedy_select_sprites", _greedy_sprites_triton), ("greedy_select", _greedy_images_triton)):
    torch.library.custom_op(f"dtifast::{_name}_triton", mutates_args=())(_impl)
    # The Triton launcher is its own fake kernel (it allocates its workspace, launches nothing on fakes).
    torch.library.register_fake(f"dtifast::{_name}_triton")(_impl)
    if native_error() is None:
        torch.library.register_fake(f"dtifast::{_name}")(_selection_fake)


def greedy_select(x: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                  background: Optional[torch.Tensor] = None, n_iter: int = 1,
                  empty_penalty: Optional[torch.Tensor] = None, *, backend: Optional[str] = None) -> torch.Tensor:
    """Greedy choice of one sprite per layer that minimises the reconstruction error (no gradient).

    Layers start empty (mask 0). For ``n_iter`` sweeps and each layer l in order, every candidate k is
    composited with the other layers' current choices over the background; the one with the smallest
    mean squared error (plus ``empty_penalty[k]``) is kept. Ties go to the lowest k.

    Args:
        x: target images ``(B, C, H, W)``.
        layers: candidates ``(L, K, B, C, H, W)``; masks: ``(L, K, B, 1, H, W)`` (any strides).
        occlusion: ``(L, L, B)`` (see :func:`dtifast.ops.composite_layers`).
        background: ``(B, C, H, W)`` or None (black, still with mask 1).
        n_iter: number of sweeps over the layers (upstream: 1–3).
        empty_penalty: ``(K,)`` added to each candidate's error (upstream: λ for non-empty sprites, 0 for
            the empty one), or None.
        backend: see :mod:`dtifast.ops._backend`.

    Returns:
        ``(L, K, B)`` one-hot selection in ``x``'s dtype.
    """
    check_image_candidates(x, layers, masks, occlusion, background, n_iter, empty_penalty)
    name = select("greedy_select", backend, x.device, x.dtype)
    with torch.no_grad():
        if name == "torch":
            return reference.greedy_select(x, layers, masks, occlusion, background, n_iter, empty_penalty)
        check_max_layers(layers.shape[0], name)
        return fused_op("greedy_select", name)(x, layers, masks, occlusion, background, n_iter, empty_penalty)


def greedy_select_sprites(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                          background: Optional[torch.Tensor] = None, n_iter: int = 1,
                          empty_penalty: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None, *,
                          backend: Optional[str] = None) -> torch.Tensor:
    """:func:`greedy_select` with the candidates given in sprite space (the same one-hot selection).

    Args:
        x: ``(B, C, H, W)``.
        sprites: ``(L, K, B, C + E, h, w)`` candidates after the sprite-level and colour transforms
            (E = 1: mask; E = 2: mask and canvas, with ``noise``); any strides, so an expanded view over
            L or B is read in place.
        params: ``(L, B, 3)`` position parameters of each layer (shared by its K candidates).
        occlusion, background, n_iter, empty_penalty: as in :func:`greedy_select`.
        noise: ``(K, 1, H, W)`` scaled mask noise of each sprite (shared over layers and images), or None.
        backend: see :mod:`dtifast.ops._backend`.

    Returns:
        ``(L, K, B)`` one-hot selection in ``x``'s dtype.
    """
    K = sprites.shape[1] if isinstance(sprites, torch.Tensor) and sprites.dim() == 6 else "K"
    check_sprite_space_inputs(x, sprites, params, occlusion, background, noise, ("L", "K"), (K,))
    check_greedy_options(x, sprites.shape[1], n_iter, empty_penalty)
    name = select("greedy_select_sprites", backend, x.device, x.dtype)
    with torch.no_grad():
        if name == "torch":
            return reference.greedy_select_sprites(x, sprites, params, occlusion, background, n_iter, empty_penalty,
                                                   noise)
        check_max_layers(sprites.shape[0], name)
        L, B = params.shape[:2]
        theta = geometry.position_matrix(params.reshape(L * B, 3)).view(L, B, 6)
        basis = geometry.affine_basis(tuple(x.shape[-2:]), x.dtype, x.device)
        return fused_op("greedy_select_sprites", name)(x, sprites, theta, occlusion, background, n_iter,
                                                        empty_penalty, noise, basis)


register(OpSpec("greedy_select", greedy_select, native=("greedy_select",), triton=True))
register(OpSpec("greedy_select_sprites", greedy_select_sprites, native=("greedy_select_sprites",), triton=True))
