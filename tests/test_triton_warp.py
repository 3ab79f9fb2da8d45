"""Fused Triton warps against their eager twins (values, gradients), gradcheck, opcheck, shared inputs, bad input.

On CPU these run under TRITON_INTERPRET=1 (set by conftest); ``--device cuda`` runs them on a GPU.
"""
from __future__ import annotations

import math

import pytest
import torch

from dtifast import ops
from dtifast.ops import reference
from dtifast.ops import warp as tw

KINDS = {"position": (3,), "similarity": (4,), "affine": (6,), "projective": (9,), "tps": (16, 2)}
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
GRAD_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-9, rtol=1e-9)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _params(kind: str, n: int, dtype, device, scale: float = 0.3) -> torch.Tensor:
    """Random raw parameters: scales, rotations/shears and translations of a few tenths, plus extremes."""
    g = torch.Generator().manual_seed(1)
    p = scale * torch.randn(n, *KINDS[kind], generator=g, dtype=torch.float64)
    if kind == "position" and n > 1:
        p[0, 0] = 2.5     # e^s + 1 ≈ 13: a sprite shrunk far below one pixel per output pixel
        p[-1, 0] = -4.0   # scale ≈ 1.02
    if kind == "similarity" and n > 1:
        p[0, :2] = torch.tensor([math.cos(2.0) - 1, math.sin(2.0)], dtype=torch.float64)  # 115° rotation
    return p.to(device=device, dtype=dtype)


def _compare(kind, x, p, out_size, padding, index=None, dtype=torch.float32):
    x = x.detach().requires_grad_()
    p = p.detach().requires_grad_()
    src = x if index is None else x[index]
    ref = getattr(reference, f"warp_{kind}")(src, p, out_size, padding)
    out = getattr(ops, f"warp_{kind}")(x, p, out_size, padding, index=index, backend="triton")
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])
    grad = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, (x, p), grad)
    g_out = torch.autograd.grad(out, (x, p), grad)
    for a, b, name in zip(g_out, g_ref, ("x", "params")):
        assert_grad_close(a, b, dtype, name)


def assert_grad_close(a, b, dtype, name):
    # Parameter gradients sum thousands of per-pixel terms: the tolerance scales with their magnitude.
    tol = GRAD_TOL[dtype]
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, atol=tol["atol"] * scale, rtol=tol["rtol"], msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_matches_reference_sprite_to_image(kind, padding, device):
    # Upstream's odd sizes: 24×24 sprites placed into 35×35 images; three images, one with extremes.
    x = torch.rand(3, 2, 24, 24, device=device)
    _compare(kind, x, _params(kind, 3, torch.float32, device), (35, 35), padding)


@pytest.mark.parametrize("kind", ["position", "projective", "tps"])
def test_matches_reference_b1_and_output_smaller_than_input(kind, device):
    x = torch.rand(1, 3, 9, 13, device=device)
    _compare(kind, x, _params(kind, 1, torch.float32, device, scale=0.6), (5, 7), "zeros")


def test_large_scales_and_translations(device):
    p = torch.tensor([[6.0, 3.0, -2.0], [-9.0, 0.1, 0.2], [0.0, 40.0, 0.0]], device=device)
    _compare("position", torch.rand(3, 2, 6, 6, device=device), p, (11, 11), "zeros")
    _compare("position", torch.rand(3, 2, 6, 6, device=device), p, (11, 11), "border")


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_near_degenerate_homographies(padding, device):
    # w = x + ε crosses zero inside the image: at the central column |w| <= 1e-8 (no divide) and next to
    # it the locations explode; float64 so that the reference's own rounding is not the limit.
    dtype = torch.float64
    p = torch.zeros(3, 9, dtype=dtype)
    p[:, 6], p[:, 8] = 1.0, -1.0              # third row (x, 0, 0)
    p[0, 8] -= 3e-9                           # |w| = 3e-9 at the centre: below the threshold
    p[1, 8] += 1e-9
    p[2, 8] += 1e-3                           # a tiny but divided w
    p[2, 0] = 0.5
    x = torch.rand(3, 2, 9, 9, dtype=dtype, device=device)
    _compare("projective", x, p.to(device), (9, 9), padding, dtype=dtype)
    # At exactly w = 0 the reference's torch.where(…, 1/w, 1) back-propagates 0·inf = NaN; the fused
    # kernel gives the not-divided branch its (finite) gradient.
    exact = torch.zeros(1, 9, dtype=dtype, device=device)
    exact[:, 6], exact[:, 8] = 1.0, -1.0
    exact.requires_grad_()
    out = tw.warp_projective(x[:1], exact, (9, 9), padding)
    torch.testing.assert_close(out, reference.warp_projective(x[:1], exact, (9, 9), padding), **TOL[dtype])
    assert torch.isfinite(torch.autograd.grad(out.sum(), exact)[0]).all()


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradcheck_float64(kind, device):
    x = torch.rand(2, 1, 4, 5, dtype=torch.float64, device=device, requires_grad=True)
    p = _params(kind, 2, torch.float64, device, scale=0.2).requires_grad_()
    fn = getattr(tw, f"warp_{kind}")
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, (3, 4), "zeros"), (x, p), eps=1e-6, atol=1e-5,
                                     fast_mode=True)


@pytest.mark.parametrize("kind", ["position", "tps"])
def test_shared_prototypes_with_index(kind, device):
    # K = 2 shared inputs warped by N = 5 transforms; the input gradient sums over the samples of each.
    x = torch.rand(2, 3, 8, 8, device=device)
    index = torch.tensor([1, 0, 1, 1, 0], device=device)
    _compare(kind, x, _params(kind, 5, torch.float32, device), (10, 12), "zeros", index=index)


def test_k1_single_prototype_many_samples(device):
    x = torch.rand(1, 2, 6, 6, device=device)
    index = torch.zeros(7, dtype=torch.long, device=device)
    _compare("position", x, _params("position", 7, torch.float32, device), (9, 9), "zeros", index=index)


def test_expanded_input_is_read_in_place(device):
    # A stride-0 view over the batch (one sprite per layer for every image) is sampled without a copy.
    base = torch.rand(1, 2, 7, 7, device=device)
    x = base.expand(4, -1, -1, -1)
    p = _params("affine", 4, torch.float32, device)
    out = ops.warp_affine(x, p, (8, 8), backend="triton")
    torch.testing.assert_close(out, reference.warp_affine(x.contiguous(), p, (8, 8)), **TOL[torch.float32])


def test_known_answer_identity_position_covers_half_the_image(device):
    # Zero params: scale 2, so the sprite (ones) covers the central half of the output in each direction.
    out = ops.warp_position(torch.ones(1, 1, 4, 4, device=device), torch.zeros(1, 3, device=device), (8, 8),
                            backend="triton")
    assert out[0, 0, 2:6, 2:6].eq(1).all() and out[0, 0, 0].eq(0).all()


@pytest.mark.parametrize("kind", list(KINDS))
def test_opcheck(kind, device):
    x = torch.rand(2, 2, 5, 6, device=device, requires_grad=True)
    p = _params(kind, 2, torch.float32, device).requires_grad_()
    op = getattr(torch.ops.dtifast, f"warp_{kind}_triton")
    torch.library.opcheck(op, (x, p, None, 4, 7, False))
    index = torch.tensor([1, 1, 0], device=device)
    p3 = _params(kind, 3, torch.float32, device).requires_grad_()
    torch.library.opcheck(op, (x, p3, index, 3, 3, True))


def test_bad_input(device):
    x = torch.rand(2, 2, 5, 5, device=device)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        tw.warp_position([1.0], torch.zeros(2, 3), (4, 4))
    with pytest.raises(ValueError, match=r"params must have shape \(2, 3\)"):
        tw.warp_position(x, torch.zeros(2, 4, device=device), (4, 4))
    with pytest.raises(ValueError, match="padding must be one of"):
        tw.warp_position(x, torch.zeros(2, 3, device=device), (4, 4), "reflection")
    with pytest.raises(ValueError, match="out_size must be a pair of positive ints"):
        tw.warp_affine(x, torch.zeros(2, 6, device=device), (0, 4))
    with pytest.raises(TypeError, match="all inputs must share one dtype"):
        tw.warp_projective(x, torch.zeros(2, 9, dtype=torch.float64, device=device), (4, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        tw.warp_similarity(x, torch.full((2, 4), float("nan"), device=device), (4, 4))
    with pytest.raises(ValueError, match=r"index values must be in \[0, 2\)"):
        tw.warp_position(x, torch.zeros(3, 3, device=device), (4, 4), index=torch.tensor([0, 2, 1], device=device))
    with pytest.raises(TypeError, match="index must have dtype"):
        tw.warp_position(x, torch.zeros(3, 3, device=device), (4, 4), index=torch.tensor([0.0, 1.0, 1.0], device=device))
    with pytest.raises(ValueError, match="grid_size must be an int >= 2"):
        tw.warp_tps(x, torch.zeros(2, 1, 2, device=device), (4, 4), grid_size=1)
