"""The ``triton`` backend: fused Triton kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).

Defines the ops of :mod:`dtifast.ops.reference` with the reference's signatures; each validates its
inputs and calls ``dtifast::<op>_triton`` custom ops (registered in :mod:`dtifast.ops.warp`,
:mod:`dtifast.ops.composite`, :mod:`dtifast.ops.greedy`, :mod:`dtifast.ops.render` and
:mod:`dtifast.ops.pointwise`), so autograd and ``torch.compile`` see one op per kernel.
:func:`place_sprites` and :func:`composite_candidates` are compositions of those ops.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference
from .composite import composite_layers
from .greedy import greedy_select, greedy_select_sprites
from .pointwise import color_transform, softclip
from .render import render_loss
from .warp import warp_affine, warp_position, warp_projective, warp_similarity, warp_tps

__all__ = ["softclip", "color_transform", "warp_position", "warp_similarity", "warp_affine", "warp_projective",
           "warp_tps", "composite_layers", "composite_candidates", "greedy_select", "place_sprites",
           "greedy_select_sprites", "render_loss"]


def place_sprites(sprites: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                  noise: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dtifast.ops.reference.place_sprites` with the fused position warp and softclip kernels.

    Args:
        sprites: ``(N, C + 1, h, w)`` (colours, mask) or ``(N, C + 2, h, w)`` (… canvas) with ``noise``.
        params: ``(N, 3)``; out_size: ``(H, W)``; noise: ``(N, 1, H, W)`` or None.

    Returns:
        colours ``(N, C, H, W)`` and masks ``(N, 1, H, W)``.
    """
    return reference.place_sprites_with(sprites, params, out_size, noise, warp_position, softclip)


def composite_candidates(layers: torch.Tensor, masks: torch.Tensor,
                         backgrounds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`dtifast.ops.reference.composite_candidates` through the fused compositing kernel: each of
    the K·M·B candidates is a one-layer composite over its background.

    Args:
        layers: ``(K, B, C, H, W)``; masks: ``(K, B, 1, H, W)``; backgrounds: ``(M, B, C, H, W)`` or None.

    Returns:
        ``(B, M·K, C, H, W)``, candidate index ``m·K + k``.
    """
    return reference.composite_candidates_with(layers, masks, backgrounds, composite_layers)
