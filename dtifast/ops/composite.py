"""Occlusion-aware layer compositing, on every backend.

Public ops: :func:`composite_layers` (L layers over an optional background, with an occlusion matrix),
:func:`composite_candidates` (every sprite over every background: the single-object model's candidates)
and :func:`candidate_distances` (their mean squared errors against the image, the single-object model's
loss terms).

Where each part lives:

* reference (the ``torch`` backend): :func:`dtifast.ops.reference.composite_layers`, ``composite_candidates``,
  ``candidate_distances``;
* Triton kernels: ``kernels/composite.py`` (the layer-tile helpers are shared with the render loss);
* C++ and CUDA kernels: ``csrc/composite.cpp`` + ``csrc/composite.h`` (per-pixel math) +
  ``csrc/composite_kernel.h`` (CPU kernels, scalar and vector: ``csrc/composite_simd.h``),
  ``csrc/cuda/composite.cu`` + ``bind_composite.cpp``;
* custom ops (one contract, :mod:`dtifast.ops._library`):
  ``dtifast::composite_layers(layers, masks, occlusion, background)`` and its ``_triton`` twin;
  ``dtifast::composite_candidates(layers, masks, backgrounds)`` and
  ``dtifast::candidate_distances(layers, masks, backgrounds, x)`` (CPU only: the CUDA and Triton backends
  composite each candidate as one layer, and take the errors of those composites with torch).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference
from ._backend import OpSpec, native_error, register, select
from ._checks import (check_candidate_inputs, check_composite_inputs, check_max_layers, check_same_device_dtype,
                      check_shape, check_tensor)
from ._library import define_triton_op, fused_op, register_autograd

__all__ = ["composite_layers", "composite_candidates", "candidate_distances"]


def _composite_triton(layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                      background: Optional[torch.Tensor]) -> torch.Tensor:
    from dtifast.kernels import composite as kernels
    return kernels.composite_forward(layers, masks, occlusion, background)


def _composite_backward_triton(grad: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor,
                               occlusion: torch.Tensor, background: Optional[torch.Tensor], need_layers: bool,
                               need_masks: bool, need_occlusion: bool, need_background: bool
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from dtifast.kernels import composite as kernels
    grads = kernels.composite_backward(grad, layers, masks, occlusion, background)
    needs = (need_layers, need_masks, need_occlusion, need_background)
    return tuple(g if g is not None and need else layers.new_empty(0) for g, need in zip(grads, needs))


def _composite_fake(layers, masks, occlusion, background):
    return layers.new_empty(layers.shape[1:])


def _candidates_fake(layers, masks, backgrounds):
    K, B, C, H, W = layers.shape
    M = 1 if backgrounds is None else backgrounds.shape[0]
    return layers.new_empty(B, M * K, C, H, W)


def _distances_fake(layers, masks, backgrounds, x):
    M = 1 if backgrounds is None else backgrounds.shape[0]
    return layers.new_empty(layers.shape[1], M * layers.shape[0])


define_triton_op("composite_layers", _composite_triton, _composite_backward_triton, n_diff=4)
if native_error() is None:
    register_autograd("composite_layers", forward_fake=_composite_fake, n_diff=4)
    register_autograd("composite_candidates", forward_fake=_candidates_fake, n_diff=3)
    register_autograd("candidate_distances", forward_fake=_distances_fake, n_diff=4)


def composite_layers(layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                     background: Optional[torch.Tensor] = None, *, backend: Optional[str] = None) -> torch.Tensor:
    """Occlusion-aware composition of L layers (optionally over a background).

    .. math:: \\mathrm{out} = \\sum_k \\prod_{j \\ne k} (1 - o_{jk}\\, m_j)\\; m_k\\, x_k
              \\; + \\prod_j (1 - m_j)\\, \\mathrm{bg}

    **Convention:** ``occlusion[j, k, b]`` is how much layer j hides layer k in image b (upstream:
    ``o = tril(σ(head), -1)`` and ``o_{kj} = 1 - o_{jk}`` above the diagonal, or the fixed
    ``tril(1, -1)``); the diagonal is ignored. A background has mask 1, is hidden by every layer
    (``o_{j,bg} = 1``) and hides none.

    Args:
        layers: ``(L, B, C, H, W)`` colours (the fused backends take ``L <= 16``).
        masks: ``(L, B, 1, H, W)`` alpha masks.
        occlusion: ``(L, L, B)``.
        background: optional ``(B, C, H, W)``.
        backend: see :mod:`dtifast.ops._backend`.

    Returns:
        ``(B, C, H, W)``.

    Example:
        >>> occ = torch.tril(torch.ones(2, 2), -1)[..., None].expand(2, 2, 3)
        >>> composite_layers(torch.rand(2, 3, 3, 4, 4), torch.rand(2, 3, 1, 4, 4), occ).shape
        torch.Size([3, 3, 4, 4])
    """
    check_composite_inputs(layers, masks, occlusion, background)
    name = select("composite_layers", backend, layers.device, layers.dtype)
    if name == "torch":
        return reference.composite_layers(layers, masks, occlusion, background)
    check_max_layers(layers.shape[0], name)
    return fused_op("composite_layers", name)(layers, masks, occlusion, background)


def composite_candidates(layers: torch.Tensor, masks: torch.Tensor, backgrounds: Optional[torch.Tensor] = None, *,
                         backend: Optional[str] = None) -> torch.Tensor:
    """All K·M single-layer compositions of K sprites over M backgrounds (the single-object model).

    .. math:: \\mathrm{out}_{m,k} = (1 - m_k)\\, \\mathrm{bg}_m + m_k\\, x_k

    Args:
        layers: ``(K, B, C, H, W)``; masks: ``(K, B, 1, H, W)``;
        backgrounds: ``(M, B, C, H, W)`` or None (a black background).
        backend: see :mod:`dtifast.ops._backend`.

    Returns:
        ``(B, M·K, C, H, W)``, candidate index ``m·K + k`` (upstream's order).
    """
    M = check_candidate_inputs(layers, masks, backgrounds)
    name = select("composite_candidates", backend, layers.device, layers.dtype)
    if name == "torch":
        return reference.composite_candidates(layers, masks, backgrounds)
    if name == "cpu":
        return fused_op("composite_candidates", name)(layers, masks, backgrounds)
    # CUDA and Triton: each of the M·K·B candidates is a one-layer composite over its own background.
    K, B, C, H, W = layers.shape
    n = M * K * B
    flat_layers = layers[None].expand(M, -1, -1, -1, -1, -1).reshape(1, n, C, H, W)
    flat_masks = masks[None].expand(M, -1, -1, -1, -1, -1).reshape(1, n, 1, H, W)
    bg = None if backgrounds is None else backgrounds[:, None].expand(-1, K, -1, -1, -1, -1).reshape(n, C, H, W)
    out = fused_op("composite_layers", name)(flat_layers, flat_masks, layers.new_zeros(1, 1, n), bg)
    return out.view(M * K, B, C, H, W).transpose(0, 1)


def candidate_distances(x: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor,
                        backgrounds: Optional[torch.Tensor] = None, *, backend: Optional[str] = None) -> torch.Tensor:
    """Mean squared error of every candidate of :func:`composite_candidates` against its image.

    .. math:: d_{b, mK + k} = \\frac{1}{C H W} \\sum_{c, i, j} \\big((1 - m_k)\\, \\mathrm{bg}_m + m_k\\, x_k
              - \\mathrm{x}_b\\big)^2

    The C++ CPU kernel computes it in one pass over the pixels, without the ``(B, M·K, C, H, W)``
    candidates (forward and backward); other backends composite the candidates, then take the errors.

    Args:
        x: ``(B, C, H, W)`` images.
        layers: ``(K, B, C, H, W)``; masks: ``(K, B, 1, H, W)``;
        backgrounds: ``(M, B, C, H, W)`` or None (a black background).
        backend: see :mod:`dtifast.ops._backend`.

    Returns:
        ``(B, M·K)``, candidate index ``m·K + k`` (upstream's order).
    """
    check_candidate_inputs(layers, masks, backgrounds)
    check_tensor(x, "x", ndim=4)
    check_shape(x, "x", (layers.shape[1], *layers.shape[2:]))
    check_same_device_dtype(("layers", layers), ("x", x))
    name = select("candidate_distances", backend, layers.device, layers.dtype)
    if name == "torch":
        return reference.candidate_distances(x, layers, masks, backgrounds)
    if name == "cpu":
        return fused_op("candidate_distances", name)(layers, masks, backgrounds, x)
    return reference.candidate_errors(composite_candidates(layers, masks, backgrounds, backend=name), x)


register(OpSpec("composite_layers", composite_layers, native=("composite_layers",), triton=True))
register(OpSpec("composite_candidates", composite_candidates, native=("composite_layers",), triton=True))
register(OpSpec("candidate_distances", candidate_distances, native=("composite_layers",), triton=True))
