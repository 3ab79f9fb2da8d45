"""Eager PyTorch twins of every dtifast op: the oracle that the fused backends are tested against.

These follow the math of the authors' DTI-Sprites code (github.com/monniert/dti-sprites) with plain
differentiable PyTorch (``F.affine_grid``, ``F.grid_sample`` and whole-tensor arithmetic), in float32 or
float64. They materialise whatever the math needs, so they are the memory and speed baseline that the
fused kernels beat. They are also the ``torch`` backend of the public ops in :mod:`dtifast.ops`, which
validate the inputs before calling them; called directly, they expect valid inputs.

This module is only the oracle: no fused backend calls it. It builds its own transform matrices (in
upstream's formulation, not :mod:`dtifast.ops.geometry`'s), so a bug there cannot sit on both sides of a
comparison; the one thing shared is the TPS interpolation matrix, which the upstream-fixture tests pin.
Shapes and conventions are documented on the public ops.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .geometry import HOMOGENEOUS_EPS, linspace_grid, tps_control_points, tps_weights

__all__ = [
    "softclip", "warp_theta", "warp_position", "warp_similarity", "warp_affine", "warp_projective", "warp_tps",
    "projective_grid", "tps_grid", "color_transform", "composite_layers", "greedy_select",
    "composite_candidates", "with_background", "place_sprites", "greedy_select_sprites", "render_loss",
]


def softclip(x: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """``clamp(x, 0, 1) + slope·min(x, 0) + slope·max(x − 1, 0)`` (:func:`dtifast.ops.softclip`).

    Example:
        >>> softclip(torch.tensor([-1.0, 0.5, 2.0]))
        tensor([-0.0100,  0.5000,  1.0100])
    """
    # minimum/maximum (not clamp) for the outer parts: at exactly 0 and 1 they split the gradient in
    # half, which is upstream's subgradient.
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return x.clamp(0, 1) + slope * torch.minimum(x, zero) + slope * torch.maximum(x - 1, zero)


# ----------------------------------------------------------------------------------------------------
# Warps
# ----------------------------------------------------------------------------------------------------

def _eye(params: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return torch.eye(rows, cols, dtype=params.dtype, device=params.device)


def _gather(x: torch.Tensor, index: Optional[torch.Tensor]) -> torch.Tensor:
    return x if index is None else x[index]


def _sample(x: torch.Tensor, grid: torch.Tensor, padding: str) -> torch.Tensor:
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _affine_warp(x: torch.Tensor, theta: torch.Tensor, out_size: tuple[int, int], padding: str) -> torch.Tensor:
    if x.shape[0] == 0:  # F.affine_grid refuses an empty batch; keep the (empty) graph to both inputs
        return x.new_zeros(0, x.shape[1], *out_size) + 0 * (x.sum() + theta.sum())
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], *out_size], align_corners=False)
    return _sample(x, grid, padding)


def projective_grid(homography: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """``(N, H, W, 2)`` ``F.grid_sample`` grid of homographies ``(N, 3, 3)`` (identity included), kornia-0.3
    ``homography_warp`` semantics (see :func:`dtifast.ops.warp_projective`)."""
    base = linspace_grid(out_size, homography.dtype, homography.device)
    pts = torch.cat([base, torch.ones_like(base[..., :1])], dim=-1).reshape(1, -1, 3)   # (1, HW, 3)
    uvw = pts @ homography.transpose(1, 2)                                                 # (N, HW, 3)
    w = uvw[..., 2:]
    scale = torch.where(w.abs() > HOMOGENEOUS_EPS, 1.0 / w, torch.ones_like(w))
    return (uvw[..., :2] * scale).reshape(homography.shape[0], *out_size, 2)


def tps_grid(params: torch.Tensor, out_size: tuple[int, int], grid_size: int = 4) -> torch.Tensor:
    """``(N, H, W, 2)`` ``F.grid_sample`` grid of a thin-plate spline with control-point offsets ``params``
    ``(N, grid_size², 2)`` (see :func:`dtifast.ops.warp_tps`)."""
    source = tps_control_points(grid_size, params.dtype, params.device) + params
    return _tps_grid_from_source(source, out_size, grid_size)


def _tps_grid_from_source(source: torch.Tensor, out_size: tuple[int, int], grid_size: int) -> torch.Tensor:
    weights = tps_weights(grid_size, out_size, source.dtype, source.device)
    return torch.matmul(weights, source).view(source.shape[0], *out_size, 2)


def warp_theta(x: torch.Tensor, theta: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros",
               kind: str = "affine", index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`dtifast.ops.warp_theta`: ``theta`` ``(N, 2, 3)``, ``(N, 3, 3)`` or ``(N, G², 2)`` by ``kind``."""
    x = _gather(x, index)
    if kind == "affine":
        return _affine_warp(x, theta, out_size, padding)
    if kind == "projective":
        return _sample(x, projective_grid(theta, out_size), padding)
    return _sample(x, _tps_grid_from_source(theta, out_size, round(theta.shape[1] ** 0.5)), padding)


def warp_position(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros", *,
                  index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`dtifast.ops.warp_position`: ``A = [[e^s + 1, 0, tx], [0, e^s + 1, ty]]``."""
    s, t = params[:, :1], params[:, 1:]
    scale = torch.exp(s)[:, :, None] * _eye(params, 2, 2)
    theta = torch.cat([scale, t[:, :, None]], dim=2) + _eye(params, 2, 3)
    return _affine_warp(_gather(x, index), theta, out_size, padding)


def warp_similarity(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros", *,
                    index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`dtifast.ops.warp_similarity`: ``A = [[a + 1, -b, tx], [b, a + 1, ty]]``."""
    a, b, tx, ty = params.unbind(1)
    one = torch.ones_like(a)
    theta = torch.stack([torch.stack([a + one, -b, tx], 1), torch.stack([b, a + one, ty], 1)], 1)
    return _affine_warp(_gather(x, index), theta, out_size, padding)


def warp_affine(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros", *,
                index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`dtifast.ops.warp_affine`: ``A = params.view(2, 3) + [I | 0]``."""
    return _affine_warp(_gather(x, index), params.view(-1, 2, 3) + _eye(params, 2, 3), out_size, padding)


def warp_projective(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros", *,
                    index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`dtifast.ops.warp_projective`: ``H = params.view(3, 3) + I`` on the linspace grid."""
    homography = params.view(-1, 3, 3) + _eye(params, 3, 3)
    return _sample(_gather(x, index), projective_grid(homography, out_size), padding)


def warp_tps(x: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int], padding: str = "zeros",
             grid_size: int = 4, *, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`dtifast.ops.warp_tps`: ``params`` ``(N, grid_size², 2)`` control-point offsets.

    Example:
        >>> warp_tps(torch.rand(2, 3, 6, 6), torch.zeros(2, 16, 2), (6, 6)).shape
        torch.Size([2, 3, 6, 6])
    """
    params = params.view(params.shape[0], grid_size ** 2, 2)
    return _sample(_gather(x, index), tps_grid(params, out_size, grid_size), padding)


# ----------------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------------

def color_transform(x: torch.Tensor, params: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """:func:`dtifast.ops.color_transform`: ``y_c = softclip((1 + w_c) x_c + b_c)`` on the C colour channels.

    Example:
        >>> color_transform(torch.rand(2, 4, 5, 5), torch.zeros(2, 6)).shape
        torch.Size([2, 4, 5, 5])
    """
    n_color = params.shape[1] // 2
    if x.shape[1] == 1:
        x = x.expand(-1, n_color, -1, -1)
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
    """:func:`dtifast.ops.composite_layers`: ``Σ_k Π_{j≠k} (1 − o_jk m_j) m_k x_k`` (+ the background).

    Example:
        >>> occ = torch.tril(torch.ones(2, 2), -1)[..., None].expand(2, 2, 3)
        >>> composite_layers(torch.rand(2, 3, 3, 4, 4), torch.rand(2, 3, 1, 4, 4), occ).shape
        torch.Size([3, 3, 4, 4])
    """
    if background is not None:
        layers, masks, occlusion = with_background(layers, masks, occlusion, background)
    L = layers.shape[0]
    off_diag = 1 - torch.eye(L, dtype=occlusion.dtype, device=occlusion.device)
    occ = (occlusion * off_diag[..., None])[:, :, :, None, None, None]    # (L_j, L_k, B, 1, 1, 1)
    visible = (1 - occ * masks[:, None]).prod(dim=0)                       # (L_k, B, 1, H, W)
    return (visible * masks * layers).sum(dim=0)


def composite_candidates(layers: torch.Tensor, masks: torch.Tensor,
                         backgrounds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`dtifast.ops.composite_candidates`: every ``(1 − m_k) bg_m + m_k x_k`` → ``(B, M·K, C, H, W)``."""
    fg = masks * layers
    if backgrounds is None:
        return fg.transpose(0, 1)
    out = (1 - masks)[None] * backgrounds[:, None] + fg[None]             # (M, K, B, C, H, W)
    return out.flatten(0, 1).transpose(0, 1)


def candidate_errors(candidates: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error of candidates ``(B, N, C, H, W)`` against images ``x`` ``(B, C, H, W)`` → ``(B, N)``."""
    return ((candidates - x[:, None]) ** 2).flatten(2).mean(2)


def candidate_distances(x: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor,
                        backgrounds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`dtifast.ops.candidate_distances`: each candidate's mean squared error → ``(B, M·K)``."""
    return candidate_errors(composite_candidates(layers, masks, backgrounds), x)


@torch.no_grad()
def greedy_select(x: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                  background: Optional[torch.Tensor] = None, n_iter: int = 1,
                  empty_penalty: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`dtifast.ops.greedy_select`, as upstream: each candidate composited in full with the others."""
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
            recon = composite_layers(tmp_layers.flatten(1, 2), tmp_masks.flatten(1, 2), occ_k, bkg_k)
            dist = ((recon.view(K, B, C, H, W) - x) ** 2).flatten(2).mean(2)          # (K, B)
            if empty_penalty is not None:
                dist = dist + empty_penalty[:, None]
            choice = dist.argmin(0)
            selection[l] = 0  # one-hot by scatter: F.one_hot reads the indices' range back to the host
            selection[l].scatter_(0, choice[None], 1)
            idx = torch.arange(B, device=x.device)
            cur_layers[l], cur_masks[l] = layers[l][choice, idx], masks[l][choice, idx]
    return selection


# ----------------------------------------------------------------------------------------------------
# Sprite-space ops: what the fused greedy-scoring and render-loss kernels compute
# ----------------------------------------------------------------------------------------------------

def place_sprites(sprites: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                  noise: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dtifast.ops.place_sprites`: position warp (zeros padding), then with ``noise`` the mask
    ``softclip(mask + canvas · noise)``."""
    n_color = sprites.shape[1] - (1 if noise is None else 2)
    warped = warp_position(sprites, params, out_size, "zeros")
    mask = warped[:, n_color:n_color + 1]
    if noise is not None:
        mask = softclip(mask + warped[:, n_color + 1:] * noise)
    return warped[:, :n_color], mask


def _place_layers(sprites: torch.Tensor, params: torch.Tensor, out_size: tuple[int, int],
                  noise: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lead = sprites.shape[:-3]
    flat_noise = None if noise is None else noise.reshape(-1, *noise.shape[-3:])
    colors, masks = place_sprites(sprites.reshape(-1, *sprites.shape[-3:]), params.reshape(-1, 3), out_size,
                                  flat_noise)
    return colors.view(*lead, *colors.shape[1:]), masks.view(*lead, *masks.shape[1:])


@torch.no_grad()
def greedy_select_sprites(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                          background: Optional[torch.Tensor] = None, n_iter: int = 1,
                          empty_penalty: Optional[torch.Tensor] = None,
                          noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`dtifast.ops.greedy_select_sprites`: every candidate placed in image space, then
    :func:`greedy_select`."""
    L, K, B = sprites.shape[:3]
    full_params = params[:, None].expand(L, K, B, 3)
    full_noise = None if noise is None else noise[None, :, None].expand(L, K, B, *noise.shape[1:])
    colors, masks = _place_layers(sprites, full_params, x.shape[-2:], full_noise)
    return greedy_select(x, colors, masks, occlusion, background, n_iter, empty_penalty)


def render_loss(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                background: Optional[torch.Tensor] = None, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`dtifast.ops.render_loss`: place, composite over the background, mean squared error (0 for an
    empty batch)."""
    colors, masks = _place_layers(sprites, params, x.shape[-2:], noise)
    # The mean as sum / count, so that an empty batch gives 0 (no error to average) rather than 0/0.
    return ((composite_layers(colors, masks, occlusion, background) - x) ** 2).sum() / max(x.numel(), 1)
