"""Public ops of dtifast: one function per op, dispatched to a backend.

Every op takes an optional ``backend`` (``"torch"``, ``"cpu"``, ``"cuda"``, ``"triton"``; see
:mod:`dtifast.ops._backend` for the selection rules), validates its inputs once and runs the chosen
backend. Each op family lives in one module with its validation, autograd and every backend's
registration (``docs/fused_ops.md`` has the table of where each part is):

* :mod:`dtifast.ops.warp`: ``warp_theta``, ``warp_position``, ``warp_similarity``, ``warp_affine``,
  ``warp_projective``, ``warp_tps``;
* :mod:`dtifast.ops.composite`: ``composite_layers``, ``composite_candidates``, ``candidate_distances``;
* :mod:`dtifast.ops.greedy`: ``greedy_select``, ``greedy_select_sprites``;
* :mod:`dtifast.ops.render`: ``place_sprites``, ``render_loss``;
* :mod:`dtifast.ops.pointwise`: ``softclip``, ``color_transform``.

:mod:`dtifast.ops.reference` holds the eager oracle (the ``torch`` backend), :mod:`dtifast.ops.geometry`
the transform matrices and bases. Input *values* (NaN/inf, index range) are checked only when asked
(:func:`value_checks`), since reading them stalls a GPU.
"""
from __future__ import annotations

from . import reference
from ._backend import BACKENDS, BackendError, registered_ops, resolve
from ._checks import set_value_checks, value_checks, value_checks_enabled
from .composite import candidate_distances, composite_candidates, composite_layers
from .geometry import affine_matrix, position_matrix, projective_matrix, similarity_matrix
from .greedy import greedy_select, greedy_select_sprites
from .pointwise import color_transform, softclip
from .reference import projective_grid, tps_grid, with_background
from .render import place_sprites, render_loss
from .warp import warp_affine, warp_position, warp_projective, warp_similarity, warp_theta, warp_tps

__all__ = [
    "BACKENDS", "BackendError", "resolve", "registered_ops", "reference",
    "value_checks", "set_value_checks", "value_checks_enabled",
    "softclip", "color_transform",
    "warp_theta", "warp_position", "warp_similarity", "warp_affine", "warp_projective", "warp_tps",
    "composite_layers", "composite_candidates", "candidate_distances", "greedy_select", "greedy_select_sprites",
    "place_sprites", "render_loss",
    "position_matrix", "similarity_matrix", "affine_matrix", "projective_matrix", "projective_grid",
    "tps_grid", "with_background",
]
