"""Warps: sampling-grid generation fused with bilinear sampling, on every backend.

Public ops: :func:`warp_position`, :func:`warp_similarity`, :func:`warp_affine`, :func:`warp_projective`,
:func:`warp_tps` (raw head parameters, the identity added inside, as upstream) and :func:`warp_theta`
(the transform itself), which the others build on.

Where each part lives:

* reference (the ``torch`` backend): :mod:`dtifast.ops.reference` (``F.affine_grid`` / ``F.grid_sample``);
* transforms and bases: :mod:`dtifast.ops.geometry`;
* Triton kernels: ``kernels/warp.py`` (sampling helpers in ``kernels/sampling.py``);
* C++ and CUDA kernels: ``csrc/warp.cpp``, ``csrc/cuda/warp.cu`` (+ ``csrc/sampling.h``, ``bind_warp.cpp``);
* custom ops, all with one contract (:mod:`dtifast.ops._library`):
  ``dtifast::warp_theta(x, theta, basis, index, mode, out_h, out_w, border)`` (C++ / CUDA) and
  ``dtifast::warp_theta_triton`` (same arguments); the raw parameters become ``theta`` here, in PyTorch,
  so autograd chains the kernels' ``theta`` gradient to them.

Convention shared by every warp (``F.affine_grid`` / ``F.grid_sample`` with ``align_corners=False``, except
where a function says otherwise): images ``(N, C, h, w)``, outputs ``(N, C, H, W)`` with ``(H, W) = out_size``;
a transform maps *output* normalised coordinates ``(x, y)`` in ``[-1, 1]`` (x along the width) to the
*input* location sampled bilinearly; ``padding="zeros"`` reads zeros outside the input, ``"border"``
repeats the edge pixels. With ``index`` (int64 ``(N,)``), ``x`` is ``(K, C, h, w)`` shared inputs and
output n warps ``x[index[n]]``, read in place by the fused backends (the reference copies ``x[index]``).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import geometry, reference
from ._backend import OpSpec, native_error, register, select
from ._checks import check_indexed_warp_inputs, check_tensor
from ._library import define_triton_op, fused_op, register_autograd

__all__ = ["warp_theta", "warp_position", "warp_similarity", "warp_affine", "warp_projective", "warp_tps",
           "WARP_KINDS"]

# The grid families: how an output pixel's source location comes from theta (csrc/sampling.h WarpMode and
# kernels/warp.py MODE use the same numbers).
WARP_KINDS = {"affine": 0, "projective": 1, "tps": 2}
_THETA_SHAPE = {"affine": (2, 3), "projective": (3, 3)}


# ----------------------------------------------------------------------------------------------------
# Custom ops: the Triton twin of the C++ dtifast::warp_theta, then fakes and autograd for both
# ----------------------------------------------------------------------------------------------------

def _warp_theta_triton(x: torch.Tensor, theta: torch.Tensor, basis: torch.Tensor, index: Optional[torch.Tensor],
                       mode: int, out_h: int, out_w: int, border: bool) -> torch.Tensor:
    from dtifast.kernels import warp as kernels
    return kernels.warp_forward(x, theta, basis, index, mode, (out_h, out_w), border)


def _warp_theta_backward_triton(grad: torch.Tensor, x: torch.Tensor, theta: torch.Tensor, basis: torch.Tensor,
                                index: Optional[torch.Tensor], mode: int, out_h: int, out_w: int, border: bool,
                                need_x: bool, need_theta: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from dtifast.kernels import warp as kernels
    dx, dtheta = kernels.warp_backward(grad, x, theta, basis, index, mode, (out_h, out_w), border, need_x,
                                       need_theta)
    return (dx if dx is not None else x.new_empty(0)), (dtheta if dtheta is not None else theta.new_empty(0))


def _warp_fake(x, theta, basis, index, mode, out_h, out_w, border):
    return x.new_empty(theta.shape[0], x.shape[1], out_h, out_w)


define_triton_op("warp_theta", _warp_theta_triton, _warp_theta_backward_triton, n_diff=2)
if native_error() is None:
    register_autograd("warp_theta", forward_fake=_warp_fake, n_diff=2)


# ----------------------------------------------------------------------------------------------------
# Public ops
# ----------------------------------------------------------------------------------------------------

def _basis(kind: str, out_size: tuple[int, int], grid_size: int, like: torch.Tensor) -> torch.Tensor:
    if kind == "affine":
        return geometry.affine_basis(out_size, like.dtype, like.device)
    if kind == "projective":
        return geometry.linspace_basis(out_size, like.dtype, like.device)
    return geometry.tps_weights(grid_size, out_size, like.dtype, like.device)


def _fused_warp(backend: str, x: torch.Tensor, theta: torch.Tensor, kind: str, out_size: tuple[int, int],
                padding: str, index: Optional[torch.Tensor], grid_size: int = 0) -> torch.Tensor:
    basis = _basis(kind, out_size, grid_size, theta)
    return fused_op("warp_theta", backend)(x, theta, basis, index, WARP_KINDS[kind], out_size[0], out_size[1],
                                          padding == "border")


# The matrix warps: the transform matrix built from the raw head outputs, and the warp_theta kind it is.
MATRICES = {"warp_position": (geometry.position_matrix, "affine"),
            "warp_similarity": (geometry.similarity_matrix, "affine"),
            "warp_affine": (geometry.affine_matrix, "affine"),
            "warp_projective": (geometry.projective_matrix, "projective")}


def _parametric_warp(op: str, x: torch.Tensor, params: torch.Tensor, n_params: int, out_size: tuple[int, int],
                     padding: str, index: Optional[torch.Tensor], backend: Optional[str]) -> torch.Tensor:
    """The body of the four matrix warps: checks, the backend, then the reference or the fused
    ``warp_theta`` on the matrix that :data:`MATRICES` builds from the raw parameters."""
    out_size = check_indexed_warp_inputs(x, params, n_params, out_size, padding, index)
    name = select(op, backend, x.device, x.dtype)
    if name == "torch":
        return getattr(reference, op)(x, params, out_size, padding, index=index)
    matrix, kind = MATRICES[op]
    return _fused_warp(name, x, matrix(params).flatten(1), kind, out_size, padding, index)


def _tps_params(params: object, grid_size: object) -> object:
    if not isinstance(grid_size, int) or isinstance(grid_size, bool) or grid_size < 2:
        raise ValueError(f"grid_size must be an int >= 2, got {grid_size!r}")
    if isinstance(params, torch.Tensor) and params.dim() == 2 and params.shape[1] == 2 * grid_size ** 2:
        return params.view(params.shape[0], grid_size ** 2, 2)
    return params


def warp_theta(x: torch.Tensor, theta: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros", *,
               kind: str = "affine", index: Optional[torch.Tensor] = None,
               backend: Optional[str] = None) -> torch.Tensor:
    """Warp by a transform given directly (the identity *not* added), fused with bilinear sampling.

    **Convention:** ``kind="affine"``: ``theta`` ``(N, 2, 3)``, output pixels at ``F.affine_grid``'s pixel
    centres; ``kind="projective"``: ``theta`` ``(N, 3, 3)`` homography, output pixels on ``linspace(-1, 1)``
    per axis (kornia 0.3, see :func:`warp_projective`); ``kind="tps"``: ``theta`` ``(N, G², 2)`` source
    control points of a thin-plate spline through ``G × G`` target points on ``linspace(-1, 1)``. Sampling
    as in the module docstring.

    Args:
        x: ``(N, C, h, w)``, or ``(K, C, h, w)`` shared inputs with ``index``.
        theta: the transforms, shaped as ``kind`` says (a flat ``(N, 6)`` / ``(N, 9)`` is accepted too).
        out_size: ``(H, W)``.
        padding: ``"zeros"`` or ``"border"``.
        kind: ``"affine"``, ``"projective"`` or ``"tps"``.
        index: optional int64 ``(N,)``: output n warps ``x[index[n]]``.
        backend: see :mod:`dtifast.ops._backend`.

    Returns:
        ``(N, C, H, W)``.

    Example:
        >>> warp_theta(torch.rand(2, 3, 8, 8), torch.eye(2, 3).expand(2, 2, 3), (8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """
    if kind not in WARP_KINDS:
        raise ValueError(f"kind must be one of {tuple(WARP_KINDS)}, got {kind!r}")
    check_tensor(theta, "theta")
    if kind == "tps":
        grid_size = round((theta.shape[1] if theta.dim() == 3 else 0) ** 0.5)
        shape: tuple[int, ...] = (grid_size ** 2, 2)
        if grid_size < 2 or theta.shape[1] != grid_size ** 2:
            raise ValueError(f"theta must be (N, G*G, 2) TPS source points for kind='tps', got {tuple(theta.shape)}")
    else:
        grid_size, shape = 0, _THETA_SHAPE[kind]
        n_flat = shape[0] * shape[1]
        if theta.dim() == 2 and theta.shape[1] == n_flat:
            theta = theta.view(-1, *shape)
    out_size = check_indexed_warp_inputs(x, theta, shape, out_size, padding, index, "theta")
    name = select("warp_theta", backend, x.device, x.dtype)
    if name == "torch":
        return reference.warp_theta(x, theta, out_size, padding, kind, index)
    flat = theta.reshape(theta.shape[0], -1) if kind != "tps" else theta
    return _fused_warp(name, x, flat, kind, out_size, padding, index, grid_size)


def warp_position(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros", *,
                  index: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    """Warp by a position transform (isotropic scale and translation).

    .. math:: A = \\begin{bmatrix} e^s + 1 & 0 & t_x \\\\ 0 & e^s + 1 & t_y \\end{bmatrix}

    **Convention:** output normalised coordinates ``(x, y)`` (``F.affine_grid`` with
    ``align_corners=False``, so pixel centres) map to input coordinates ``A·(x, y, 1)``; bilinear sampling.
    Zero parameters give scale 2 (upstream's identity added to ``e^s``).

    Args:
        x: images ``(N, C, h, w)``, or ``(K, C, h, w)`` shared inputs with ``index``.
        params: raw head outputs ``(N, 3)`` as ``(s, tx, ty)``.
        out_size: ``(H, W)`` of the output.
        padding: ``"zeros"`` or ``"border"``.
        index: optional int64 ``(N,)``: output n warps ``x[index[n]]``.
        backend: see :mod:`dtifast.ops._backend`.

    Returns:
        ``(N, C, H, W)``.

    Example:
        >>> warp_position(torch.rand(2, 4, 8, 8), torch.zeros(2, 3), (16, 16)).shape
        torch.Size([2, 4, 16, 16])
    """
    return _parametric_warp("warp_position", x, params, 3, out_size, padding, index, backend)


def warp_similarity(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros", *,
                    index: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    """Warp by a similarity ``A = [[a + 1, -b, tx], [b, a + 1, ty]]``.

    Same convention, arguments and return as :func:`warp_position`, with ``params`` ``(N, 4)`` as
    ``(a, b, tx, ty)`` (zero parameters: the identity).
    """
    return _parametric_warp("warp_similarity", x, params, 4, out_size, padding, index, backend)


def warp_affine(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros", *,
                index: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    """Warp by an affine map ``A = params.view(2, 3) + [I | 0]``.

    Same convention, arguments and return as :func:`warp_position`, with ``params`` ``(N, 6)`` holding the
    2×3 matrix row-major.
    """
    return _parametric_warp("warp_affine", x, params, 6, out_size, padding, index, backend)


def warp_projective(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros", *,
                    index: Optional[torch.Tensor] = None, backend: Optional[str] = None) -> torch.Tensor:
    """Warp by a homography ``H = params.view(3, 3) + I``.

    **Convention:** output pixel ``(i, j)`` sits at ``(x, y) = (linspace(-1,1,W)[j], linspace(-1,1,H)[i])``
    (the image corners, *not* pixel centres: upstream's pinned kornia 0.3 ``homography_warp``);
    ``(u, v, w) = H·(x, y, 1)`` and the sample location is ``(u / w, v / w)``, or ``(u, v)`` where
    ``|w| <= 1e-8``; bilinear sampling with ``align_corners=False``. Upstream always uses
    ``out_size = (h, w)``; other sizes are allowed.

    Args:
        x: images ``(N, C, h, w)``, or ``(K, C, h, w)`` shared inputs with ``index``.
        params: raw head outputs ``(N, 9)``, the 3×3 matrix row-major.
        out_size: ``(H, W)``.
        padding: ``"zeros"`` or ``"border"``.
        index, backend: as in :func:`warp_position`.

    Returns:
        ``(N, C, H, W)``.

    Example:
        >>> warp_projective(torch.rand(1, 3, 5, 5), torch.zeros(1, 9), (5, 5)).shape
        torch.Size([1, 3, 5, 5])
    """
    return _parametric_warp("warp_projective", x, params, 9, out_size, padding, index, backend)


def warp_tps(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros",
             grid_size: int = 4, *, index: Optional[torch.Tensor] = None,
             backend: Optional[str] = None) -> torch.Tensor:
    """Warp by a thin-plate spline through ``grid_size²`` control points.

    **Convention:** ``grid_size × grid_size`` target control points on ``linspace(-1, 1)`` (row-major, y
    outer); source control points = target + ``params``; the TPS interpolant through them is evaluated at
    target coordinates ``linspace(-1, 1)`` per axis (the image corners, not pixel centres).

    Args:
        x: images ``(N, C, h, w)``, or ``(K, C, h, w)`` shared inputs with ``index``.
        params: control-point offsets ``(N, grid_size², 2)`` as ``(x, y)`` (a flat ``(N, 2·grid_size²)``
            head output is accepted and viewed so).
        out_size: ``(H, W)``.
        padding: ``"zeros"`` or ``"border"``.
        grid_size: control points per axis (upstream: 4).
        index, backend: as in :func:`warp_position`.

    Returns:
        ``(N, C, H, W)``.

    Example:
        >>> warp_tps(torch.rand(2, 3, 6, 6), torch.zeros(2, 16, 2), (6, 6)).shape
        torch.Size([2, 3, 6, 6])
    """
    params = _tps_params(params, grid_size)
    out_size = check_indexed_warp_inputs(x, params, (grid_size ** 2, 2), out_size, padding, index)
    name = select("warp_tps", backend, x.device, x.dtype)
    if name == "torch":
        return reference.warp_tps(x, params, out_size, padding, grid_size, index=index)
    source = geometry.cached_control_points(grid_size, params.dtype, params.device) + params
    return _fused_warp(name, x, source, "tps", out_size, padding, index, grid_size)


for _op in (warp_theta, warp_position, warp_similarity, warp_affine, warp_projective, warp_tps):
    register(OpSpec(_op.__name__, _op, native=("warp_theta",), triton=True))
