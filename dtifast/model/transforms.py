"""Transformation sequences: named modules, their parameter heads and the curriculum.

A sequence such as ``"color_projective_tps"`` applies its modules in order. All the prototypes that a
transformer handles (e.g. the L·K (layer, sprite) pairs) share one sequence *definition* but have their
own heads; the heads of one module for all G of them live in one :class:`BatchedMLP`.

The curriculum activates modules over epochs: module i > 0 with milestone m is active once
``epoch >= m`` (milestone 0: active from the start), exactly when upstream's per-epoch ``step()``
switches it on. The activation flags are a buffer, so checkpoints carry them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from dtifast import ops

from .heads import BatchedMLP

MODULE_ALIASES = {
    "id": "identity", "identity": "identity",
    "col": "color", "color": "color",
    "pos": "position", "position": "position",
    "sim": "similarity", "similarity": "similarity",
    "aff": "affine", "affine": "affine",
    "proj": "projective", "projective": "projective", "homography": "projective",
    "tps": "tps", "thinplatespline": "tps",
}
SPATIAL = ("position", "similarity", "affine", "projective", "tps")


@dataclass(frozen=True)
class ModuleSpec:
    kind: str
    n_params: int


def parse_sequence(name: str, n_colors: int, grid_size: int = 4) -> list[ModuleSpec]:
    """``"color_projective"`` → module specs, checking every name."""
    specs = []
    for part in name.split("_"):
        kind = MODULE_ALIASES.get(part)
        if kind is None:
            if part in ("morpho", "morphological"):
                raise ValueError(f"transformation {part!r} (in {name!r}) is not supported by dtifast")
            raise ValueError(f"unknown transformation {part!r} in sequence {name!r}; "
                             f"known: {sorted(set(MODULE_ALIASES))}")
        n = {"identity": 0, "color": 2 * n_colors, "position": 3, "similarity": 4, "affine": 6,
             "projective": 9, "tps": 2 * grid_size ** 2}[kind]
        specs.append(ModuleSpec(kind, n))
    return specs


def initial_activations(n_modules: int, curriculum: Union[bool, Sequence[int], None]) -> list[bool]:
    """Flags at epoch 0: the first module and those with milestone 0 are on."""
    if not curriculum:
        return [True] * n_modules
    milestones = list(curriculum)
    if len(milestones) != n_modules - 1:
        raise ValueError(f"a curriculum needs one milestone per module after the first ({n_modules - 1}), "
                         f"got {milestones}")
    return [True] + [m <= 0 for m in milestones]


class TransformSequence(nn.Module):
    """G parallel instances of one transformation sequence, each with its own heads.

    Args:
        name: sequence name, modules joined by ``_`` (``identity``, ``color``, ``position``,
            ``similarity``, ``affine``, ``projective``, ``tps``).
        n_heads: G (e.g. L·K for sprite transformers, L for the layer transformer, M for backgrounds).
        in_features: encoder feature size.
        out_size: ``(H, W)`` of the spatial warps' output (projective keeps its input size, as upstream).
        n_colors: colour channels.
        padding: ``"zeros"`` (sprites) or ``"border"`` (backgrounds).
        curriculum: False, or one epoch milestone per module after the first.
        n_hidden_layers, grid_size: head depth and TPS control grid.
        backend: op backend for the warps (None: device default).
    """

    def __init__(self, name: str, n_heads: int, in_features: int, out_size: Sequence[int], n_colors: int,
                 padding: str = "zeros", curriculum: Union[bool, Sequence[int], None] = False,
                 n_hidden_layers: int = 2, grid_size: int = 4, backend: Optional[str] = None):
        super().__init__()
        self.name = name
        self.specs = parse_sequence(name, n_colors, grid_size)
        self.n_heads, self.out_size, self.padding = n_heads, tuple(out_size), padding
        self.grid_size, self.backend = grid_size, backend
        self.milestones = list(curriculum) if curriculum else [0] * (len(self.specs) - 1)
        self.register_buffer("activations", torch.tensor(initial_activations(len(self.specs), curriculum)))
        # The flags as Python bools too: a forward picks its modules from them and must not read a GPU buffer.
        self._active = initial_activations(len(self.specs), curriculum)
        self.register_load_state_dict_post_hook(_follow_loaded_activations)
        # heads[str(i)] for module i when it has parameters (identity has none).
        self.heads = nn.ModuleDict({
            str(i): BatchedMLP(n_heads, in_features, spec.n_params, n_hidden_layers)
            for i, spec in enumerate(self.specs) if spec.n_params > 0})

    @property
    def is_identity(self) -> bool:
        return all(s.kind == "identity" for s in self.specs)

    def active_specs(self) -> list[tuple[int, ModuleSpec]]:
        return [(i, s) for i, s in enumerate(self.specs) if self._active[i] and s.kind != "identity"]

    def set_epoch(self, epoch: int) -> None:
        """Activate every module whose milestone has passed (never deactivates, as upstream)."""
        for i, m in enumerate(self.milestones, start=1):
            if epoch >= m:
                self.activations[i] = True
                self._active[i] = True

    def set_activations(self, flags: torch.Tensor) -> None:
        """Set which modules are active (e.g. from an upstream checkpoint's curriculum state)."""
        self.activations.copy_(flags)
        _follow_loaded_activations(self, None)

    def predict(self, features: torch.Tensor) -> dict[int, torch.Tensor]:
        """Parameters ``{module index: (G, B, P)}`` of the active modules."""
        return {i: self.heads[str(i)](features) for i, _ in self.active_specs()}

    def apply(self, x: torch.Tensor, params: dict[int, torch.Tensor], only: Optional[Callable[[str], bool]] = None
              ) -> torch.Tensor:
        """Apply the active modules to ``x`` ``(G, B, C', h, w)`` (may be an expanded view).

        Args:
            x: inputs per head and image.
            params: output of :meth:`predict`, each ``(G, B, P)`` (or broadcastable over G or B).
            only: optional filter on module kinds (e.g. to leave the final position warp to a fused op).

        Returns:
            ``(G, B, C', H', W')``.
        """
        for i, spec in self.active_specs():
            if only is not None and not only(spec.kind):
                continue
            G, B = x.shape[:2]
            p = params[i].expand(G, B, -1).reshape(G * B, -1)
            if spec.kind in SPATIAL and B > 1 and x.stride(1) == 0:
                # The same input for every image (the sprite bank expanded over the batch): the warp reads
                # the G inputs in place through an index instead of a G·B copy, which autograd would keep.
                index = torch.arange(G, device=x.device).repeat_interleave(B)
                flat = apply_module(spec.kind, x[:, 0], p, self.out_size, self.padding, self.grid_size, self.backend,
                                    index=index)
            else:
                flat = x.reshape(G * B, *x.shape[2:])
                flat = apply_module(spec.kind, flat, p, self.out_size, self.padding, self.grid_size, self.backend)
            x = flat.view(G, B, *flat.shape[1:])
        return x

    @torch.no_grad()
    def copy_head(self, dst: int, src: int) -> None:
        for head in self.heads.values():
            head.copy_head(dst, src)


def _follow_loaded_activations(module: TransformSequence, incompatible_keys: object) -> None:
    module._active = [bool(a) for a in module.activations.tolist()]


def apply_module(kind: str, x: torch.Tensor, params: torch.Tensor, out_size: Sequence[int], padding: str,
                 grid_size: int, backend: Optional[str], index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One transformation on a batch ``(N, C', h, w)`` with raw parameters ``(N, P)``; a warp (not the
    colour transform) may instead read shared inputs ``(K, C', h, w)`` through ``index`` ``(N,)``."""
    if kind == "color":
        if index is not None:
            raise ValueError("the colour transform takes no index; pass one input per parameter row")
        return ops.color_transform(x, params, backend=backend)
    if kind == "projective":  # upstream warps homographies to the input's own size
        return ops.warp_projective(x, params, tuple(x.shape[-2:]), padding, index=index, backend=backend)
    if kind == "tps":
        return ops.warp_tps(x, params.view(params.shape[0], -1, 2), tuple(out_size), padding, grid_size,
                            index=index, backend=backend)
    warp = {"position": ops.warp_position, "similarity": ops.warp_similarity, "affine": ops.warp_affine}[kind]
    return warp(x, params, tuple(out_size), padding, index=index, backend=backend)
