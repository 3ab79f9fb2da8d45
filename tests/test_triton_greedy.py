"""Fused greedy selection returns exactly the reference's one-hot selection; softclip and colour kernels."""
from __future__ import annotations

import pytest
import torch

from dtifast import ops
from dtifast.ops import greedy as tg
from dtifast.ops import pointwise as tp
from dtifast.ops import reference


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _candidates(L, K, B, C, H, W, h, w, with_noise, device):
    sprites = torch.rand(L, K, B, C + 1 + with_noise, h, w, device=device)
    sprites[:, -1, :, C:] = 0                         # the empty sprite: no mask, no canvas
    if K > 2:
        sprites[:, 1] = sprites[:, 0]                  # a duplicate: an exact tie that must go to the lowest k
    params = 0.5 * torch.randn(L, B, 3, device=device)
    occ = torch.rand(L, L, B, device=device)
    noise = 0.4 * (2 * torch.rand(K, 1, H, W, device=device) - 1) if with_noise else None
    x = torch.rand(B, C, H, W, device=device)
    return x, sprites, params, occ, noise


@pytest.mark.parametrize("L,K,B,n_iter,noise,bg", [(1, 1, 1, 1, False, True), (3, 4, 2, 2, True, True),
                                                   (2, 5, 1, 1, True, False), (3, 3, 2, 3, False, False)])
def test_sprite_space_selection_equals_reference(L, K, B, n_iter, noise, bg, device):
    x, sprites, params, occ, nz = _candidates(L, K, B, 3, 35, 35, 24, 24, noise, device)
    background = torch.rand_like(x) if bg else None
    penalty = torch.full((K,), 1e-3, device=device)
    penalty[-1] = 0
    ref = reference.greedy_select_sprites(x, sprites, params, occ, background, n_iter, penalty, nz)
    out = ops.greedy_select_sprites(x, sprites, params, occ, background, n_iter, penalty, nz, backend="triton")
    assert out.dtype == ref.dtype and torch.equal(out, ref)


def test_expanded_candidates_are_not_copied(device):
    # The model without sprite-level transforms passes one bank expanded over L and B (stride 0).
    x, sprites, params, occ, nz = _candidates(2, 3, 2, 3, 9, 10, 5, 6, True, device)
    bank = sprites[0, :, 0]
    view = bank[None, :, None].expand(2, 3, 2, *bank.shape[1:])
    ref = reference.greedy_select_sprites(x, view.contiguous(), params, occ, None, 1, None, nz)
    assert torch.equal(tg.greedy_select_sprites(x, view, params, occ, None, 1, None, nz), ref)


def test_image_space_selection_equals_reference(device):
    L, K, B, C, H, W = 3, 4, 2, 3, 8, 7
    layers = torch.rand(L, K, B, C, H, W, device=device)
    masks = torch.rand(L, K, B, 1, H, W, device=device)
    occ = torch.rand(L, L, B, device=device)
    x, bg = torch.rand(B, C, H, W, device=device), torch.rand(B, C, H, W, device=device)
    ref = reference.greedy_select(x, layers, masks, occ, bg, 2)
    assert torch.equal(ops.greedy_select(x, layers, masks, occ, bg, 2, backend="triton"), ref)


def test_greedy_opcheck_and_bad_input(device):
    x, sprites, params, occ, nz = _candidates(2, 3, 1, 3, 6, 6, 4, 4, True, device)
    torch.library.opcheck(torch.ops.dtifast.greedy_select_sprites_triton, (x, sprites, params, occ, None, 1, None, nz))
    with pytest.raises(ValueError, match="n_iter must be a positive int"):
        tg.greedy_select_sprites(x, sprites, params, occ, None, 0, None, nz)
    with pytest.raises(ValueError, match=r"empty_penalty must have shape \(3\)"):
        tg.greedy_select_sprites(x, sprites, params, occ, None, 1, torch.zeros(2, device=device), nz)
    with pytest.raises(ValueError, match=r"noise must have shape \(3, 1, 6, 6\)"):
        tg.greedy_select_sprites(x, sprites, params, occ, None, 1, None, nz[:, :, :5])
    with pytest.raises(ValueError, match=r"params must have shape \(2, 1, 3\)"):
        tg.greedy_select_sprites(x, sprites, params[:1], occ, None, 1, None, nz)


def test_softclip_and_color_transform_match_reference(device):
    x = (3 * torch.rand(2, 4, 5, 6, device=device, dtype=torch.float64) - 1)
    x[0, 0, 0, :2] = torch.tensor([0.0, 1.0])           # the subgradient points
    x.requires_grad_()
    params = (0.5 * torch.randn(2, 6, device=device, dtype=torch.float64)).requires_grad_()
    for ref, out, inputs in ((reference.softclip(x), ops.softclip(x, backend="triton"), (x,)),
                             (reference.color_transform(x, params), ops.color_transform(x, params, backend="triton"),
                              (x, params))):
        torch.testing.assert_close(out, ref)
        g = torch.randn_like(ref)
        for a, b in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
            torch.testing.assert_close(a, b)
    gray = torch.rand(2, 1, 3, 3, device=device, dtype=torch.float64)
    torch.testing.assert_close(tp.color_transform(gray, params), reference.color_transform(gray, params))
    torch.library.opcheck(torch.ops.dtifast.softclip_triton, (x.detach().float().requires_grad_(), 0.01))
    torch.library.opcheck(torch.ops.dtifast.color_transform_triton,
                          (x.detach().float().requires_grad_(), params.detach().float().requires_grad_(), 0.01))
    with pytest.raises(ValueError, match="interleaved"):
        tp.color_transform(x, params[:, :5])


def test_place_sprites_and_candidates_match_reference(device):
    sprites = torch.rand(3, 5, 6, 6, device=device, requires_grad=True)
    params = torch.randn(3, 3, device=device, requires_grad=True)
    noise = 0.4 * (2 * torch.rand(3, 1, 7, 8, device=device) - 1)
    for a, b in zip(ops.place_sprites(sprites, params, (7, 8), noise, backend="triton"),
                    reference.place_sprites(sprites, params, (7, 8), noise)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    layers, masks = torch.rand(3, 2, 3, 4, 5, device=device), torch.rand(3, 2, 1, 4, 5, device=device)
    bgs = torch.rand(2, 2, 3, 4, 5, device=device)
    for bg in (None, bgs):
        torch.testing.assert_close(ops.composite_candidates(layers, masks, bg, backend="triton"),
                                   reference.composite_candidates(layers, masks, bg))
