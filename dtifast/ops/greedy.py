"""Fused greedy selection registered as ``dtifast::greedy_select_sprites_triton`` and
``dtifast::greedy_select_triton`` (no gradient: the selection is a constant of the training step).

See :mod:`dtifast.kernels.greedy`: per layer, one prep kernel and one K×B scoring kernel; the only
image-size buffers are the L current layers and three per-layer terms, never K×B×C×H×W.
"""
from __future__ import annotations

from typing import Optional

import torch

from dtifast.kernels import greedy as kg

from ._checks import check_greedy_options, check_image_candidates, check_sprite_space_inputs

__all__ = ["greedy_select_sprites", "greedy_select"]


@torch.library.custom_op("dtifast::greedy_select_sprites_triton", mutates_args=())
def _greedy_sprites(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                    background: Optional[torch.Tensor], n_iter: int, empty_penalty: Optional[torch.Tensor],
                    noise: Optional[torch.Tensor]) -> torch.Tensor:
    return kg.greedy_select(x, sprites, None, params, occlusion, background, n_iter, empty_penalty, noise)


@torch.library.register_fake("dtifast::greedy_select_sprites_triton")
def _(x, sprites, params, occlusion, background, n_iter, empty_penalty, noise):
    return x.new_empty(sprites.shape[:3])


@torch.library.custom_op("dtifast::greedy_select_triton", mutates_args=())
def _greedy_images(x: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                   background: Optional[torch.Tensor], n_iter: int, empty_penalty: Optional[torch.Tensor]) -> torch.Tensor:
    return kg.greedy_select(x, layers, masks, None, occlusion, background, n_iter, empty_penalty, None)


@torch.library.register_fake("dtifast::greedy_select_triton")
def _(x, layers, masks, occlusion, background, n_iter, empty_penalty):
    return x.new_empty(layers.shape[:3])


def greedy_select_sprites(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                          background: Optional[torch.Tensor] = None, n_iter: int = 1,
                          empty_penalty: Optional[torch.Tensor] = None,
                          noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused :func:`dtifast.ops.reference.greedy_select_sprites`: the same one-hot selection (ties: lowest k).

    Args:
        x: ``(B, C, H, W)``.
        sprites: ``(L, K, B, C + E, h, w)`` sprite-space candidates (E = 1: mask; E = 2: mask and canvas,
            with ``noise``); any strides, so an expanded view over L or B is read in place.
        params: ``(L, B, 3)`` position parameters of each layer.
        occlusion: ``(L, L, B)``; background: ``(B, C, H, W)`` or None; n_iter: sweeps;
        empty_penalty: ``(K,)`` or None.
        noise: ``(K, 1, H, W)`` scaled mask noise per sprite, or None.

    Returns:
        ``(L, K, B)`` one-hot selection in ``x``'s dtype.
    """
    K = sprites.shape[1] if isinstance(sprites, torch.Tensor) and sprites.dim() == 6 else "K"
    check_sprite_space_inputs(x, sprites, params, occlusion, background, noise, ("L", "K"), (K,))
    check_greedy_options(x, sprites.shape[1], n_iter, empty_penalty)
    with torch.no_grad():
        return _greedy_sprites(x, sprites, params, occlusion, background, n_iter, empty_penalty, noise)


def greedy_select(x: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                  background: Optional[torch.Tensor] = None, n_iter: int = 1,
                  empty_penalty: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused :func:`dtifast.ops.reference.greedy_select` on image-space candidates.

    Args:
        x: ``(B, C, H, W)``; layers: ``(L, K, B, C, H, W)``; masks: ``(L, K, B, 1, H, W)`` (any strides);
        occlusion: ``(L, L, B)``; background: ``(B, C, H, W)`` or None; n_iter: sweeps;
        empty_penalty: ``(K,)`` or None.

    Returns:
        ``(L, K, B)`` one-hot selection.
    """
    check_image_candidates(x, layers, masks, occlusion, background, n_iter, empty_penalty)
    with torch.no_grad():
        return _greedy_images(x, layers, masks, occlusion, background, n_iter, empty_penalty)
