"""``nn.Module`` wrappers of the fused ops, for layered models other than DTI-Sprites.

Each module holds only its configuration (sizes, padding, backend) and calls the public dispatching
op in :mod:`dtifast.ops`, so it runs the Triton kernels on CUDA by default, the C++/torch ops on CPU,
or whatever ``backend`` names. Shapes are those of the ops; see their docstrings.

Example:
    >>> warp = PositionWarp((16, 16))
    >>> warp(torch.rand(2, 4, 8, 8), torch.zeros(2, 3)).shape
    torch.Size([2, 4, 16, 16])
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from dtifast import ops
from dtifast.ops._checks import check_out_size, check_padding

__all__ = ["PositionWarp", "SimilarityWarp", "AffineWarp", "ProjectiveWarp", "TPSWarp", "LayerCompositor",
           "GreedySpriteSelector", "SpriteRenderLoss"]


class _Warp(nn.Module):
    """A warp of ``(N, C, h, w)`` images by ``(N, P)`` raw parameters to ``out_size``; with ``index``
    ``(N,)`` int64, ``x`` is ``(K, C, h, w)`` shared inputs and output n warps ``x[index[n]]`` (read in
    place by the fused backends)."""

    _op = staticmethod(ops.warp_affine)

    def __init__(self, out_size: Sequence[int], padding: str = "zeros", backend: Optional[str] = None):
        super().__init__()
        self.out_size = check_out_size(tuple(out_size))
        self.padding = check_padding(padding)
        self.backend = backend

    def forward(self, x: torch.Tensor, params: torch.Tensor, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._op(x, params, self.out_size, self.padding, index=index, backend=self.backend)

    def extra_repr(self) -> str:
        return f"out_size={self.out_size}, padding={self.padding!r}, backend={self.backend!r}"


class PositionWarp(_Warp):
    """:func:`dtifast.ops.warp_position`: params ``(N, 3)`` = ``(s, tx, ty)``, scale ``e^s + 1``."""

    _op = staticmethod(ops.warp_position)


class SimilarityWarp(_Warp):
    """:func:`dtifast.ops.warp_similarity`: params ``(N, 4)`` = ``(a, b, tx, ty)``."""

    _op = staticmethod(ops.warp_similarity)


class AffineWarp(_Warp):
    """:func:`dtifast.ops.warp_affine`: params ``(N, 6)``, a 2×3 matrix row-major (identity added)."""

    _op = staticmethod(ops.warp_affine)


class ProjectiveWarp(_Warp):
    """:func:`dtifast.ops.warp_projective`: params ``(N, 9)``, a 3×3 homography row-major (identity added)."""

    _op = staticmethod(ops.warp_projective)


class TPSWarp(_Warp):
    """:func:`dtifast.ops.warp_tps`: params ``(N, grid_size², 2)`` control-point offsets."""

    def __init__(self, out_size: Sequence[int], padding: str = "zeros", grid_size: int = 4,
                 backend: Optional[str] = None):
        super().__init__(out_size, padding, backend)
        if not isinstance(grid_size, int) or grid_size < 2:
            raise ValueError(f"grid_size must be an int >= 2, got {grid_size!r}")
        self.grid_size = grid_size

    def forward(self, x: torch.Tensor, params: torch.Tensor, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return ops.warp_tps(x, params, self.out_size, self.padding, self.grid_size, index=index, backend=self.backend)


class LayerCompositor(nn.Module):
    """:func:`dtifast.ops.composite_layers`: ``(L, B, C, H, W)`` layers, ``(L, B, 1, H, W)`` masks and an
    ``(L, L, B)`` occlusion matrix (optionally over a ``(B, C, H, W)`` background) → ``(B, C, H, W)``."""

    def __init__(self, backend: Optional[str] = None):
        super().__init__()
        self.backend = backend

    def forward(self, layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                background: Optional[torch.Tensor] = None) -> torch.Tensor:
        return ops.composite_layers(layers, masks, occlusion, background, backend=self.backend)


class GreedySpriteSelector(nn.Module):
    """:func:`dtifast.ops.greedy_select_sprites`: one-hot ``(L, K, B)`` choice of a sprite per layer."""

    def __init__(self, n_iter: int = 1, backend: Optional[str] = None):
        super().__init__()
        if not isinstance(n_iter, int) or n_iter < 1:
            raise ValueError(f"n_iter must be a positive int, got {n_iter!r}")
        self.n_iter, self.backend = n_iter, backend

    def forward(self, x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                background: Optional[torch.Tensor] = None, empty_penalty: Optional[torch.Tensor] = None,
                noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        return ops.greedy_select_sprites(x, sprites, params, occlusion, background, self.n_iter, empty_penalty,
                                         noise, backend=self.backend)


class SpriteRenderLoss(nn.Module):
    """:func:`dtifast.ops.render_loss`: place ``(L, B, C + E, h, w)`` sprites, composite, MSE to ``x``."""

    def __init__(self, backend: Optional[str] = None):
        super().__init__()
        self.backend = backend

    def forward(self, x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                background: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        return ops.render_loss(x, sprites, params, occlusion, background, noise, backend=self.backend)
