"""The ``triton`` backend: fused Triton kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).

Defines the ops of :mod:`dtifast.ops.reference` that have a fused kernel, with the reference's
signatures; each validates its inputs and calls a ``dtifast::<op>_triton`` custom op (registered in
:mod:`dtifast.ops.warp`, :mod:`dtifast.ops.composite`, :mod:`dtifast.ops.greedy` and
:mod:`dtifast.ops.render_loss`), so autograd and ``torch.compile`` see one op per call.
"""
from __future__ import annotations

from .warp import warp_affine, warp_position, warp_projective, warp_similarity, warp_tps

__all__ = ["warp_position", "warp_similarity", "warp_affine", "warp_projective", "warp_tps"]
