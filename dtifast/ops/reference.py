"""Eager PyTorch twins of every dtifast op: the oracle that the fused backends are tested against.

These follow the math of the authors' DTI-Sprites code (github.com/monniert/dti-sprites) exactly, with
plain differentiable PyTorch, in float32 or float64. They materialise whatever the math needs, so they
are the memory and speed baseline that the fused kernels beat.

Conventions shared by all warps (the same as ``F.affine_grid``/``F.grid_sample`` with
``align_corners=False``, except where a function says otherwise):

* images are ``(N, C, h, w)``; outputs ``(N, C, H, W)`` with ``(H, W) = out_size``;
* transform parameters are the raw head outputs; the identity is added inside, so zero parameters
  give the identity transform;
* a transform maps *output* normalised coordinates ``(x, y)`` in ``[-1, 1]`` (x along the width) to the
  *input* location that is sampled bilinearly;
* ``padding="zeros"`` reads zeros outside the input, ``padding="border"`` repeats the edge pixels.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from ._checks import (check_candidate_inputs, check_color_inputs, check_composite_inputs, check_image_candidates,
                      check_indexed_warp_inputs, check_shape, check_tensor)

__all__ = [
    "softclip", "position_matrix", "similarity_matrix", "affine_matrix", "projective_matrix",
    "warp_position", "warp_similarity", "warp_affine", "warp_projective", "warp_tps",
    "projective_grid", "tps_grid", "color_transform", "composite_layers", "greedy_select",
    "composite_candidates", "with_background", "place_sprites", "greedy_select_sprites", "render_loss",
]

HOMOGENEOUS_EPS = 1e-8


# ----------------------------------------------------------------------------------------------------
# Softclip
# ----------------------------------------------------------------------------------------------------

def softclip(x: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """Soft clipping to ``[0, 1]``: identity inside, a line of slope ``slope`` outside.

    .. math:: \\mathrm{softclip}(x) = \\mathrm{clamp}(x, 0, 1) + s\\,\\min(x, 0) + s\\,\\max(x - 1, 0)

    Args:
        x: tensor of any shape, floating point.
        slope: slope outside ``[0, 1]`` (upstream: 0.01).

    Returns:
        Tensor of the same shape and dtype as ``x``.

    Example:
        >>> softclip(torch.tensor([-1.0, 0.5, 2.0]))
        tensor([-0.0100,  0.5000,  1.0100])
    """
    check_tensor(x, "x", finite=False)
    # minimum/maximum (not clamp) for the outer parts: at exactly 0 and 1 they split the gradient in
    # half, which is upstream's subgradient.
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return x.clamp(0, 1) + slope * torch.minimum(x, zero) + slope * torch.maximum(x - 1, zero)


# ----------------------------------------------------------------------------------------------------
# Transform matrices from raw parameters
# ----------------------------------------------------------------------------------------------------

def _eye_rows(params: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return torch.eye(rows, cols, dtype=params.dtype, device=params.device)


def position_matrix(params: torch.Tensor) -> torch.Tensor:
    """``(N, 3)`` raw ``(s, tx, ty)`` → ``(N, 2, 3)`` matrix ``[[e^s + 1, 0, tx], [0, e^s + 1, ty]]``.

    The ``+1`` is upstream's identity added to ``e^s·I``: zero parameters give a scale of 2, i.e. the
    layer's sprite covers half the image in each direction.
    """
    s, t = params[:, :1], params[:, 1:]
    scale = torch.exp(s)[:, :, None] * _eye_rows(params, 2, 2)
    return torch.cat([scale, t[:, :, None]], dim=2) + _eye_rows(params, 2, 3)


def similarity_matrix(params: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` raw ``(a, b, tx, ty)`` → ``(N, 2, 3)`` matrix ``[[a + 1, -b, tx], [b, a + 1, ty]]``."""
    a, b, tx, ty = params.unbind(1)
    one = torch.ones_like(a)
    return torch.stack([torch.stack([a + one, -b, tx], 1), torch.stack([b, a + one, ty], 1)], 1)


def affine_matrix(params: torch.Tensor) -> torch.Tensor:
    """``(N, 6)`` raw row-major 2×3 → ``(N, 2, 3)`` matrix ``params + [I | 0]``."""
    return params.view(-1, 2, 3) + _eye_rows(params, 2, 3)


def projective_matrix(params: torch.Tensor) -> torch.Tensor:
    """``(N, 9)`` raw row-major 3×3 → ``(N, 3, 3)`` homography ``params + I``."""
    return params.view(-1, 3, 3) + _eye_rows(params, 3, 3)


# ----------------------------------------------------------------------------------------------------
# Warps
# ----------------------------------------------------------------------------------------------------

def _gather(x: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
    # The reference materialises x[index]; the fused backends read the shared inputs in place.
    return x if index is None else x[index]


def _sample(x: torch.Tensor, grid: torch.Tensor, padding: str) -> torch.Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _affine_warp(x: torch.Tensor, theta: torch.Tensor, out_size: tuple[int, int], padding: str) -> torch.Tensor:
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], *out_size], align_corners=False)
    return _sample(x, grid, padding)


def warp_position(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                  padding: str = "zeros", *, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Warp by a position transform (isotropic scale and translation).

    .. math:: A = \\begin{bmatrix} e^s + 1 & 0 & t_x \\\\ 0 & e^s + 1 & t_y \\end{bmatrix}

    **Convention:** output normalised coordinates ``(x, y)`` (``F.affine_grid`` with
    ``align_corners=False``, so pixel centres) map to input coordinates ``A·(x, y, 1)``; bilinear sampling.

    Args:
        x: images ``(N, C, h, w)``, or ``(K, C, h, w)`` shared inputs with ``index``.
        params: raw head outputs ``(N, 3)`` as ``(s, tx, ty)``.
        out_size: ``(H, W)`` of the output.
        padding: ``"zeros"`` or ``"border"``.
        index: optional int64 ``(N,)``: output n warps ``x[index[n]]`` (every warp takes it; the fused
            backends read the K inputs in place instead of copying them N times).

    Returns:
        ``(N, C, H, W)``.

    Example:
        >>> warp_position(torch.rand(2, 4, 8, 8), torch.zeros(2, 3), (16, 16)).shape
        torch.Size([2, 4, 16, 16])
    """
    out_size = check_indexed_warp_inputs(x, params, 3, out_size, padding, index)
    x = _gather(x, index)
    return _affine_warp(x, position_matrix(params), out_size, padding)


def warp_similarity(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                    padding: str = "zeros", *, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Warp by a similarity: ``A = [[a + 1, -b, tx], [b, a + 1, ty]]``.

    Same convention, arguments and return as :func:`warp_position`, with ``params`` ``(N, 4)`` as
    ``(a, b, tx, ty)``.
    """
    out_size = check_indexed_warp_inputs(x, params, 4, out_size, padding, index)
    x = _gather(x, index)
    return _affine_warp(x, similarity_matrix(params), out_size, padding)


def warp_affine(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                padding: str = "zeros", *, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Warp by an affine map ``A = params.view(2, 3) + [I | 0]``.

    Same convention, arguments and return as :func:`warp_position`, with ``params`` ``(N, 6)`` holding
    the 2×3 matrix row-major.
    """
    out_size = check_indexed_warp_inputs(x, params, 6, out_size, padding, index)
    x = _gather(x, index)
    return _affine_warp(x, affine_matrix(params), out_size, padding)


def _linspace_grid(out_size: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(H, W, 2)`` grid of ``(x, y)`` on ``linspace(-1, 1)`` per axis (not pixel centres)."""
    H, W = out_size
    ys = torch.linspace(-1, 1, H, dtype=dtype, device=device)
    xs = torch.linspace(-1, 1, W, dtype=dtype, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def projective_grid(homography: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Sampling grid of a homography, kornia-0.3 ``homography_warp`` semantics.

    **Convention:** output pixel ``(i, j)`` sits at ``(x, y) = (linspace(-1,1,W)[j], linspace(-1,1,H)[i])``
    (the image corners, *not* pixel centres); ``(u, v, w) = H·(x, y, 1)`` and the sample location is
    ``(u / w, v / w)``, or ``(u, v)`` where ``|w| <= 1e-8``.

    Args:
        homography: ``(N, 3, 3)`` (identity already added).
        out_size: ``(H, W)``.

    Returns:
        ``(N, H, W, 2)`` grid for ``F.grid_sample`` (``align_corners=False``).
    """
    base = _linspace_grid(out_size, homography.dtype, homography.device)
    ones = torch.ones_like(base[..., :1])
    pts = torch.cat([base, ones], dim=-1).reshape(1, -1, 3)           # (1, HW, 3)
    uvw = pts @ homography.transpose(1, 2)                              # (N, HW, 3)
    w = uvw[..., 2:]
    scale = torch.where(w.abs() > HOMOGENEOUS_EPS, 1.0 / w, torch.ones_like(w))
    return (uvw[..., :2] * scale).reshape(homography.shape[0], *out_size, 2)


def warp_projective(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                    padding: str = "zeros", *, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Warp by a homography ``H = params.view(3, 3) + I``.

    **Convention:** see :func:`projective_grid` (output points on ``linspace(-1, 1)``, as upstream's
    pinned kornia 0.3); bilinear sampling with ``align_corners=False``. Upstream always uses
    ``out_size = (h, w)``; other sizes are allowed.

    Args:
        x: images ``(N, C, h, w)``.
        params: raw head outputs ``(N, 9)``, the 3×3 matrix row-major.
        out_size: ``(H, W)``.
        padding: ``"zeros"`` or ``"border"``.

    Returns:
        ``(N, C, H, W)``.

    Example:
        >>> warp_projective(torch.rand(1, 3, 5, 5), torch.zeros(1, 9), (5, 5)).shape
        torch.Size([1, 3, 5, 5])
    """
    out_size = check_indexed_warp_inputs(x, params, 9, out_size, padding, index)
    x = _gather(x, index)
    return _sample(x, projective_grid(projective_matrix(params), out_size), padding)


def _tps_radial(points: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """Thin-plate radial basis ``U(r) = r² log r = ½ d log d`` with ``d = r²`` and ``U(0) = 0``."""
    d = ((points[:, None, :] - control[None, :, :]) ** 2).sum(-1)
    u = 0.5 * d * torch.log(d)
    return torch.nan_to_num(u, nan=0.0)


def tps_control_points(grid_size: int, dtype: torch.dtype = torch.float64,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """``(grid_size², 2)`` control points ``(x, y)`` on ``linspace(-1, 1)``, row-major (y outer, x inner)."""
    return _linspace_grid((grid_size, grid_size), dtype, torch.device(device)).reshape(-1, 2)


@functools.lru_cache(maxsize=64)
def _tps_weights_cpu64(grid_size: int, out_size: tuple[int, int]) -> torch.Tensor:
    """``(H·W, G²)`` matrix W such that the TPS grid is ``W @ source_control_points``.

    Solving the TPS system ``[[K, 1, P], [1ᵀ, 0, 0], [Pᵀ, 0, 0]]`` for the target control points P and
    evaluating the interpolant at the target coordinates gives a map that is linear in the source
    control points; W is that map. Computed once per (grid_size, out_size) in float64, except that the
    solver's control points are rounded to float32 and K is built in float32, as upstream's TPS grid
    does (it casts its float64 control points with ``.float()``); float64 runs then reproduce upstream exactly.
    """
    ctrl32 = tps_control_points(grid_size, torch.float64).float()  # float64 linspace, then rounded
    ctrl = ctrl32.double()
    n = ctrl.shape[0]
    kernel = torch.zeros(n + 3, n + 3, dtype=torch.float64)
    kernel[:n, :n] = _tps_radial(ctrl32, ctrl32).double()
    kernel[:n, n] = 1
    kernel[n, :n] = 1
    kernel[:n, n + 1:] = ctrl
    kernel[n + 1:, :n] = ctrl.T
    inverse = torch.linalg.inv(kernel)
    target = _linspace_grid(out_size, torch.float64, torch.device("cpu")).reshape(-1, 2)
    repr_ = torch.cat([_tps_radial(target, ctrl), torch.ones(target.shape[0], 1, dtype=torch.float64), target], 1)
    return repr_ @ inverse[:, :n]


def tps_weights(grid_size: int, out_size: tuple[int, int], dtype: torch.dtype,
                device: torch.device) -> torch.Tensor:
    """The ``(H·W, grid_size²)`` TPS interpolation matrix (see :func:`tps_grid`) in ``dtype`` on ``device``."""
    return _tps_weights_cpu64(int(grid_size), tuple(int(s) for s in out_size)).to(device=device, dtype=dtype)


def tps_grid(params: torch.Tensor, out_size: tuple[int, int], grid_size: int = 4) -> torch.Tensor:
    """Thin-plate-spline sampling grid.

    **Convention:** ``grid_size × grid_size`` target control points on ``linspace(-1, 1)`` (row-major,
    y outer); source control points = target + ``params``; the TPS interpolant through them is evaluated
    at target coordinates ``linspace(-1, 1)`` per axis (the image corners, not pixel centres).

    Args:
        params: offsets ``(N, grid_size², 2)`` as ``(x, y)``.
        out_size: ``(H, W)``.
        grid_size: control points per axis.

    Returns:
        ``(N, H, W, 2)`` grid for ``F.grid_sample``.
    """
    source = tps_control_points(grid_size, params.dtype, params.device) + params
    weights = tps_weights(grid_size, out_size, params.dtype, params.device)
    return torch.matmul(weights, source).view(params.shape[0], *out_size, 2)


def warp_tps(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros",
             grid_size: int = 4, *, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Warp by a thin-plate spline through ``grid_size²`` control points (see :func:`tps_grid`).

    Args:
        x: images ``(N, C, h, w)``.
        params: control-point offsets ``(N, grid_size², 2)`` as ``(x, y)`` (a flat ``(N, 2·grid_size²)``
            head output is accepted and viewed so).
        out_size: ``(H, W)``.
        padding: ``"zeros"`` or ``"border"``.
        grid_size: control points per axis (upstream: 4).
        index: as in :func:`warp_position`.

    Returns:
        ``(N, C, H, W)``.

    Example:
        >>> warp_tps(torch.rand(2, 3, 6, 6), torch.zeros(2, 16, 2), (6, 6)).shape
        torch.Size([2, 3, 6, 6])
    """
    if not isinstance(grid_size, int) or grid_size < 2:
        raise ValueError(f"grid_size must be an int >= 2, got {grid_size!r}")
    if isinstance(params, torch.Tensor) and params.dim() == 2 and params.shape[1] == 2 * grid_size ** 2:
        params = params.view(params.shape[0], grid_size ** 2, 2)
    out_size = check_indexed_warp_inputs(x, params, (grid_size ** 2, 2), out_size, padding, index)
    x = _gather(x, index)
    return _sample(x, tps_grid(params, out_size, grid_size), padding)


# ----------------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------------

def color_transform(x: torch.Tensor, params: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """Per-channel gain and bias on the colour channels, then softclip; extra channels pass through.

    .. math:: y_c = \\mathrm{softclip}((1 + w_c)\\,x_c + b_c), \\quad c < C

    **Convention:** ``C = params.shape[1] // 2`` colour channels, interleaved ``(w_0, b_0, w_1, b_1, …)``.
    ``x`` holds the C colour channels first, then any extra channels (mask, canvas), which are returned
    unchanged. A grayscale image (1 colour channel, no extras) is expanded to C channels first.

    Args:
        x: ``(N, C + E, h, w)`` or ``(N, 1, h, w)``.
        params: ``(N, 2·C)`` raw head outputs.
        slope: softclip slope.

    Returns:
        ``(N, C + E, h, w)``.

    Example:
        >>> color_transform(torch.rand(2, 4, 5, 5), torch.zeros(2, 6)).shape
        torch.Size([2, 4, 5, 5])
    """
    x, n_color = check_color_inputs(x, params)
    color, extra = x[:, :n_color], x[:, n_color:]
    gain_bias = params.view(-1, n_color, 2, 1, 1)
    out = softclip((1 + gain_bias[:, :, 0]) * color + gain_bias[:, :, 1], slope)
    return torch.cat([out, extra], dim=1) if extra.shape[1] else out


# ----------------------------------------------------------------------------------------------------
# Layer compositing
# ----------------------------------------------------------------------------------------------------

def with_background(layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                    background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prepend a background as layer 0: mask 1, occluded by every layer, occluding none.

    Args:
        layers: ``(L, B, C, H, W)``; masks: ``(L, B, 1, H, W)``; occlusion: ``(L, L, B)``;
        background: ``(B, C, H, W)``.

    Returns:
        ``(L+1, B, C, H, W)``, ``(L+1, B, 1, H, W)``, ``(L+1, L+1, B)``.
    """
    L, B = occlusion.shape[0], occlusion.shape[2]
    ones_mask = torch.ones_like(masks[:1])
    occ = occlusion.new_zeros(L + 1, L + 1, B)
    occ[1:, 0] = 1
    occ[1:, 1:] = occlusion
    return (torch.cat([background[None], layers]), torch.cat([ones_mask, masks]), occ)


def composite_layers(layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                     background: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Occlusion-aware composition of L layers (optionally over a background).

    .. math:: \\mathrm{out} = \\sum_k \\prod_{j \\ne k} (1 - o_{jk}\\, m_j)\\; m_k\\, x_k

    **Convention:** ``occlusion[j, k, b]`` is how much layer j hides layer k in image b (upstream:
    ``o = tril(σ(head), -1)`` and ``o_{kj} = 1 - o_{jk}`` above the diagonal, or the fixed
    ``tril(1, -1)``); the diagonal is ignored. A background has mask 1, is hidden by every layer
    (``o_{j,bg} = 1``) and hides none.

    Args:
        layers: ``(L, B, C, H, W)`` colours.
        masks: ``(L, B, 1, H, W)`` alpha masks.
        occlusion: ``(L, L, B)``.
        background: optional ``(B, C, H, W)``.

    Returns:
        ``(B, C, H, W)``.

    Example:
        >>> occ = torch.tril(torch.ones(2, 2), -1)[..., None].expand(2, 2, 3)
        >>> composite_layers(torch.rand(2, 3, 3, 4, 4), torch.rand(2, 3, 1, 4, 4), occ).shape
        torch.Size([3, 3, 4, 4])
    """
    check_composite_inputs(layers, masks, occlusion, background)
    if background is not None:
        layers, masks, occlusion = with_background(layers, masks, occlusion, background)
    return _composite(layers, masks, occlusion)


def _composite(layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor) -> torch.Tensor:
    """:func:`composite_layers` without input checks or background (for callers that validated)."""
    L = layers.shape[0]
    off_diag = 1 - torch.eye(L, dtype=occlusion.dtype, device=occlusion.device)
    occ = (occlusion * off_diag[..., None])[:, :, :, None, None, None]    # (L_j, L_k, B, 1, 1, 1)
    visible = (1 - occ * masks[:, None]).prod(dim=0)                       # (L_k, B, 1, H, W)
    return (visible * masks * layers).sum(dim=0)


def composite_candidates(layers: torch.Tensor, masks: torch.Tensor,
                         backgrounds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """All K·M single-layer compositions of K sprites over M backgrounds (the single-object model).

    .. math:: \\mathrm{out}_{m,k} = (1 - m_k)\\, \\mathrm{bg}_m + m_k\\, x_k

    Args:
        layers: ``(K, B, C, H, W)``; masks: ``(K, B, 1, H, W)``;
        backgrounds: ``(M, B, C, H, W)`` or None (a black background).

    Returns:
        ``(B, M·K, C, H, W)``, candidate index ``m·K + k`` (upstream's order).
    """
    check_candidate_inputs(layers, masks, backgrounds)
    fg = masks * layers
    if backgrounds is None:
        return fg.transpose(0, 1)
    out = (1 - masks)[None] * backgrounds[:, None] + fg[None]             # (M, K, B, C, H, W)
    return out.flatten(0, 1).transpose(0, 1)


def composite_candidates_with(layers: torch.Tensor, masks: torch.Tensor, backgrounds: Optional[torch.Tensor],
                              composite) -> torch.Tensor:
    """:func:`composite_candidates` through a backend's ``composite_layers``: each of the M·K·B candidates
    is a one-layer composite over its background (shared by the fused backends)."""
    M = check_candidate_inputs(layers, masks, backgrounds)
    K, B, C, H, W = layers.shape
    n = M * K * B
    flat_layers = layers[None].expand(M, -1, -1, -1, -1, -1).reshape(1, n, C, H, W)
    flat_masks = masks[None].expand(M, -1, -1, -1, -1, -1).reshape(1, n, 1, H, W)
    bg = None if backgrounds is None else backgrounds[:, None].expand(-1, K, -1, -1, -1, -1).reshape(n, C, H, W)
    out = composite(flat_layers, flat_masks, layers.new_zeros(1, 1, n), bg)
    return out.view(M * K, B, C, H, W).transpose(0, 1)


@torch.no_grad()
def greedy_select(x: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                  background: Optional[torch.Tensor] = None, n_iter: int = 1,
                  empty_penalty: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Greedy choice of one sprite per layer that minimises the reconstruction error (no gradient).

    Layers start empty (mask 0). For ``n_iter`` sweeps and each layer l in order, every candidate k is
    composited with the other layers' current choices over the background; the one with the smallest
    mean squared error (plus ``empty_penalty[k]``) is kept. Ties go to the lowest k.

    Args:
        x: target images ``(B, C, H, W)``.
        layers: candidates ``(L, K, B, C, H, W)``; masks: ``(L, K, B, 1, H, W)``.
        occlusion: ``(L, L, B)`` (see :func:`composite_layers`).
        background: ``(B, C, H, W)`` or None (black, still with mask 1).
        n_iter: number of sweeps over the layers (upstream: 1–3).
        empty_penalty: ``(K,)`` added to each candidate's error (upstream: λ for non-empty sprites, 0 for
            the empty one), or None.

    Returns:
        ``(L, K, B)`` one-hot selection.
    """
    check_image_candidates(x, layers, masks, occlusion, background, n_iter, empty_penalty)
    B, C, H, W = x.shape
    L, K = layers.shape[:2]
    if background is None:
        background = x.new_zeros(B, C, H, W)

    cur_layers = x.new_zeros(L, B, C, H, W)
    cur_masks = x.new_zeros(L, B, 1, H, W)
    selection = x.new_zeros(L, K, B)
    bkg_k = background.unsqueeze(0).expand(K, -1, -1, -1, -1).reshape(K * B, C, H, W)
    occ_k = occlusion.unsqueeze(2).expand(-1, -1, K, -1).reshape(L, L, K * B)
    for _ in range(n_iter):
        for l in range(L):
            # Candidate k in layer l, the other layers fixed: flatten (K, B) into one batch.
            tmp_layers = cur_layers.unsqueeze(1).repeat(1, K, 1, 1, 1, 1)
            tmp_masks = cur_masks.unsqueeze(1).repeat(1, K, 1, 1, 1, 1)
            tmp_layers[l], tmp_masks[l] = layers[l], masks[l]
            recon = _composite(*with_background(tmp_layers.flatten(1, 2), tmp_masks.flatten(1, 2), occ_k, bkg_k))
            dist = ((recon.view(K, B, C, H, W) - x) ** 2).flatten(2).mean(2)          # (K, B)
            if empty_penalty is not None:
                dist = dist + empty_penalty[:, None]
            choice = dist.argmin(0)
            selection[l] = F.one_hot(choice, K).T.to(x.dtype)
            idx = torch.arange(B, device=x.device)
            cur_layers[l], cur_masks[l] = layers[l][choice, idx], masks[l][choice, idx]
    return selection


# ----------------------------------------------------------------------------------------------------
# Sprite-space ops: what the fused greedy-scoring and render-loss kernels compute
# ----------------------------------------------------------------------------------------------------

def place_sprites(sprites: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                  noise: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Place sprites in the image by their layer's position transform, with optional mask noise.

    The sprite is warped with :func:`warp_position` (zeros padding). With ``noise``, the sprite carries a
    footprint channel ("canvas", 1 inside the sprite, 0 for the empty sprite); the mask becomes
    ``softclip(mask + canvas · noise)`` after the warp, which is upstream's train-time mask noise.

    Args:
        sprites: ``(N, C + 1, h, w)`` colours then mask, or ``(N, C + 2, h, w)`` colours, mask, canvas
            when ``noise`` is given.
        params: ``(N, 3)`` raw position parameters ``(s, tx, ty)``.
        out_size: ``(H, W)``.
        noise: ``(N, 1, H, W)`` already scaled noise (upstream: ``0.4 · (2u - 1)``), or None.

    Returns:
        colours ``(N, C, H, W)`` and masks ``(N, 1, H, W)``.
    """
    return place_sprites_with(sprites, params, out_size, noise, warp_position, softclip)


def place_sprites_with(sprites: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                       noise: Optional[torch.Tensor], warp, clip) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`place_sprites` built on a given position warp and softclip (shared by the backends)."""
    n_extra = 1 if noise is None else 2
    check_tensor(sprites, "sprites", ndim=4)
    if sprites.shape[1] <= n_extra:
        raise ValueError(f"sprites must have C colour channels + {n_extra} (mask{', canvas' if noise is not None else ''}), "
                         f"got {sprites.shape[1]} channels")
    warped = warp(sprites, params, out_size, "zeros")
    n_color = sprites.shape[1] - n_extra
    colors, mask = warped[:, :n_color], warped[:, n_color:n_color + 1]
    if noise is not None:
        check_tensor(noise, "noise", ndim=4)
        check_shape(noise, "noise", (sprites.shape[0], 1, *warped.shape[2:]))
        mask = clip(mask + warped[:, n_color + 1:] * noise)
    return colors, mask


def _place_layers(sprites: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                  noise: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lead = sprites.shape[:-3]
    flat_noise = None if noise is None else noise.reshape(-1, *noise.shape[-3:])
    colors, masks = place_sprites(sprites.reshape(-1, *sprites.shape[-3:]), params.reshape(-1, 3), out_size,
                                  flat_noise)
    return colors.view(*lead, *colors.shape[1:]), masks.view(*lead, *masks.shape[1:])


def greedy_select_sprites(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                          background: Optional[torch.Tensor] = None, n_iter: int = 1,
                          empty_penalty: Optional[torch.Tensor] = None,
                          noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`greedy_select` with the candidates given in sprite space (what the fused kernel takes).

    Args:
        x: ``(B, C, H, W)``.
        sprites: ``(L, K, B, C + E, h, w)`` candidates after the sprite-level and colour transforms
            (E = 1: mask; E = 2: mask and canvas, with ``noise``).
        params: ``(L, B, 3)`` position parameters of each layer (shared by its K candidates).
        occlusion, background, n_iter, empty_penalty: as in :func:`greedy_select`.
        noise: ``(K, 1, H, W)`` scaled mask noise of each sprite (shared over layers and images), or None.

    Returns:
        ``(L, K, B)`` one-hot selection.
    """
    check_tensor(sprites, "sprites", ndim=6)
    L, K, B = sprites.shape[:3]
    check_tensor(params, "params", ndim=3)
    check_shape(params, "params", (L, B, 3))
    with torch.no_grad():
        full_params = params[:, None].expand(L, K, B, 3)
        full_noise = None if noise is None else noise[None, :, None].expand(L, K, B, *noise.shape[1:])
        colors, masks = _place_layers(sprites, full_params, x.shape[-2:], full_noise)
        return greedy_select(x, colors, masks, occlusion, background, n_iter, empty_penalty)


def render_loss(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                background: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Reconstruction loss of the selected sprites: place, composite over the background, MSE.

    .. math:: \\mathcal{L} = \\mathrm{mean}\\big((\\mathrm{composite}(\\mathrm{place}(s_l, p_l)) - x)^2\\big)

    Args:
        x: target images ``(B, C, H, W)``.
        sprites: selected sprites ``(L, B, C + E, h, w)`` (see :func:`place_sprites`).
        params: ``(L, B, 3)`` position parameters.
        occlusion: ``(L, L, B)``.
        background: ``(B, C, H, W)`` or None.
        noise: ``(L, B, 1, H, W)`` scaled mask noise of each selected sprite, or None.

    Returns:
        Scalar mean squared error over ``B, C, H, W``.
    """
    check_tensor(x, "x", ndim=4)
    check_tensor(sprites, "sprites", ndim=5)
    check_tensor(params, "params", ndim=3)
    check_shape(params, "params", (sprites.shape[0], x.shape[0], 3))
    colors, masks = _place_layers(sprites, params, x.shape[-2:], noise)
    return ((composite_layers(colors, masks, occlusion, background) - x) ** 2).mean()
