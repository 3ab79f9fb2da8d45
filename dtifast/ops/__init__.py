"""Public ops of dtifast: one function per op, dispatched to a backend.

Every function takes an optional ``backend`` (``"torch"``, ``"cpu"``, ``"cuda"``, ``"triton"``); see
:mod:`dtifast.ops._backend` for the selection rules. Shapes and conventions are documented on the
eager twins in :mod:`dtifast.ops.reference`, which every backend matches.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference
from ._backend import BACKENDS, BackendError, resolve
from .reference import (affine_matrix, position_matrix, projective_grid, projective_matrix,
                        similarity_matrix, tps_grid, with_background)

__all__ = [
    "BACKENDS", "BackendError", "resolve", "reference",
    "softclip", "warp_position", "warp_similarity", "warp_affine", "warp_projective", "warp_tps",
    "color_transform", "composite_layers", "composite_candidates", "greedy_select",
    "position_matrix", "similarity_matrix", "affine_matrix", "projective_matrix", "projective_grid",
    "tps_grid", "with_background", "place_sprites", "greedy_select_sprites", "render_loss",
]


def _device(t: object) -> torch.device:
    # Bad input is reported by the backend's own checks; only a tensor has a device to dispatch on.
    return t.device if isinstance(t, torch.Tensor) else torch.device("cpu")


def softclip(x: torch.Tensor, slope: float = 0.01, *, backend: Optional[str] = None) -> torch.Tensor:
    return resolve("softclip", backend, _device(x))[1](x, slope)


def warp_position(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros",
                  *, index: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    return resolve("warp_position", backend, _device(x))[1](x, params, out_size, padding, index=index)


def warp_similarity(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros",
                    *, index: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    return resolve("warp_similarity", backend, _device(x))[1](x, params, out_size, padding, index=index)


def warp_affine(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros",
                *, index: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    return resolve("warp_affine", backend, _device(x))[1](x, params, out_size, padding, index=index)


def warp_projective(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros",
                    *, index: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    return resolve("warp_projective", backend, _device(x))[1](x, params, out_size, padding, index=index)


def warp_tps(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros",
             grid_size: int = 4, *, index: Optional[torch.Tensor] = None, backend: Optional[str] = None
             ) -> torch.Tensor:
    return resolve("warp_tps", backend, _device(x))[1](x, params, out_size, padding, grid_size, index=index)


def color_transform(x: torch.Tensor, params: torch.Tensor, slope: float = 0.01, *,
                    backend: Optional[str] = None) -> torch.Tensor:
    return resolve("color_transform", backend, _device(x))[1](x, params, slope)


def composite_layers(layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                     background: Optional[torch.Tensor] = None, *, backend: Optional[str] = None) -> torch.Tensor:
    return resolve("composite_layers", backend, _device(layers))[1](layers, masks, occlusion, background)


def composite_candidates(layers: torch.Tensor, masks: torch.Tensor, backgrounds: Optional[torch.Tensor] = None,
                         *, backend: Optional[str] = None) -> torch.Tensor:
    return resolve("composite_candidates", backend, _device(layers))[1](layers, masks, backgrounds)


def greedy_select(x: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                  background: Optional[torch.Tensor] = None, n_iter: int = 1,
                  empty_penalty: Optional[torch.Tensor] = None, *, backend: Optional[str] = None) -> torch.Tensor:
    return resolve("greedy_select", backend, _device(x))[1](x, layers, masks, occlusion, background, n_iter,
                                                            empty_penalty)


def place_sprites(sprites: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                  noise: Optional[torch.Tensor] = None, *, backend: Optional[str] = None):
    return resolve("place_sprites", backend, _device(sprites))[1](sprites, params, out_size, noise)


def greedy_select_sprites(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                          background: Optional[torch.Tensor] = None, n_iter: int = 1,
                          empty_penalty: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None,
                          *, backend: Optional[str] = None) -> torch.Tensor:
    return resolve("greedy_select_sprites", backend, _device(x))[1](x, sprites, params, occlusion, background,
                                                                    n_iter, empty_penalty, noise)


def render_loss(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                background: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None, *,
                backend: Optional[str] = None) -> torch.Tensor:
    return resolve("render_loss", backend, _device(x))[1](x, sprites, params, occlusion, background, noise)


# The public functions share the reference's documentation (shapes, conventions, examples).
for _name in __all__:
    _fn, _ref = globals().get(_name), getattr(reference, _name, None)
    if callable(_fn) and _ref is not None and _fn is not _ref and _fn.__doc__ is None:
        _fn.__doc__ = (_ref.__doc__ or "") + "\n    backend: see :mod:`dtifast.ops._backend`.\n"
del _name, _fn, _ref
