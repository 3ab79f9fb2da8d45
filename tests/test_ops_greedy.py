"""The greedy family (dtifast/ops/greedy.py: greedy_select, greedy_select_sprites) on every backend: the
selection equals the reference's exactly (ties to the lowest k, the empty sprite, several sweeps),
expanded and non-contiguous candidates, an empty batch, bad input, and property-based tests."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from checklist import DTYPES, backend_for
from dtifast import ops
from dtifast.ops import reference
from thread_runs import assert_bitwise_equal, run_per_thread_count


def _sprite_candidates(L, K, B, dtype, device, C=3, H=12, W=11, h=7, w=6, noise=True, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    sprites = torch.rand(L, K, B, C + 1 + int(noise), h, w, generator=g, dtype=torch.float64)
    sprites[:, -1, :, C:] = 0                       # the empty sprite: no mask, no canvas
    if K > 2:
        sprites[:, 1] = sprites[:, 0]                # an exact tie: must go to the lowest k
    params = scale * torch.randn(L, B, 3, generator=g, dtype=torch.float64)
    occ = torch.rand(L, L, B, generator=g, dtype=torch.float64)
    nz = 0.4 * (2 * torch.rand(K, 1, H, W, generator=g, dtype=torch.float64) - 1) if noise else None
    x = torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
    return [None if t is None else t.to(device=device, dtype=dtype) for t in (x, sprites, params, occ, nz)]


def _image_candidates(L, K, B, dtype, device, C=3, H=9, W=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    layers = torch.rand(L, K, B, C, H, W, generator=g, dtype=torch.float64)
    masks = torch.rand(L, K, B, 1, H, W, generator=g, dtype=torch.float64)
    masks[:, -1] = 0                                   # an empty candidate
    if K > 2:
        layers[:, 1], masks[:, 1] = layers[:, 0], masks[:, 0]   # an exact tie: the lowest k wins
    occ = torch.rand(L, L, B, generator=g, dtype=torch.float64)
    x = torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (x, layers, masks, occ)]


def _penalty(K, dtype, device):
    penalty = torch.full((K,), 1e-3, dtype=dtype, device=device)
    penalty[-1] = 0
    return penalty


def _assert_same_selection(out, ref):
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert torch.equal(out, ref), f"selection {out.argmax(1).tolist()} != reference {ref.argmax(1).tolist()}"


@pytest.mark.parametrize("L,K,B,n_iter,noise,bg", [(1, 1, 1, 1, False, True), (3, 4, 2, 2, True, True),
                                                   (2, 5, 3, 1, True, False), (3, 3, 2, 3, False, False)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sprite_space_selection_equals_reference(L, K, B, n_iter, noise, bg, dtype, backend, device):
    name = backend_for(backend, "greedy_select_sprites", device)
    x, sprites, params, occ, nz = _sprite_candidates(L, K, B, dtype, device, noise=noise, seed=L + K)
    background = torch.rand_like(x) if bg else None
    args = (x, sprites, params, occ, background, n_iter, _penalty(K, dtype, device), nz)
    _assert_same_selection(ops.greedy_select_sprites(*args, backend=name), reference.greedy_select_sprites(*args))


@pytest.mark.parametrize("L,K,B,n_iter,bg", [(1, 1, 1, 1, True), (3, 4, 2, 2, True), (2, 5, 3, 3, False)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_image_space_selection_equals_reference(L, K, B, n_iter, bg, dtype, backend, device):
    name = backend_for(backend, "greedy_select", device)
    x, layers, masks, occ = _image_candidates(L, K, B, dtype, device, seed=L * K)
    background = torch.rand_like(x) if bg else None
    args = (x, layers, masks, occ, background, n_iter, _penalty(K, dtype, device))
    _assert_same_selection(ops.greedy_select(*args, backend=name), reference.greedy_select(*args))


def test_penalty_can_make_the_empty_sprite_win(backend, device):
    name = backend_for(backend, "greedy_select_sprites", device)
    x, sprites, params, occ, nz = _sprite_candidates(2, 3, 2, torch.float32, device)
    penalty = torch.tensor([10.0, 10.0, 0.0], device=device)
    out = ops.greedy_select_sprites(x, sprites, params, occ, None, 1, penalty, nz, backend=name)
    assert torch.equal(out[:, 2], torch.ones(2, 2, device=device))


def test_identity_placement_selection_equals_reference(backend, device):
    # Zero position parameters: 6x8 sprites in 12x16 images land exactly on sprite pixels.
    name = backend_for(backend, "greedy_select_sprites", device)
    x, sprites, params, occ, nz = _sprite_candidates(3, 4, 2, torch.float64, device, H=12, W=16, h=6, w=8)
    params = torch.zeros_like(params)
    args = (x, sprites, params, occ, None, 2, None, nz)
    _assert_same_selection(ops.greedy_select_sprites(*args, backend=name), reference.greedy_select_sprites(*args))


def test_expanded_and_non_contiguous_candidates(backend, device):
    name = backend_for(backend, "greedy_select_sprites", device)
    x, sprites, params, occ, nz = _sprite_candidates(2, 3, 2, torch.float32, device, H=9, W=10, h=5, w=6, seed=3)
    bank = sprites[0, :, 0]
    view = bank[None, :, None].expand(2, 3, 2, *bank.shape[1:])     # one bank for every layer and image
    ref = reference.greedy_select_sprites(x, view.contiguous(), params, occ, None, 1, None, nz)
    _assert_same_selection(ops.greedy_select_sprites(x, view, params, occ, None, 1, None, nz, backend=name), ref)
    sprites_nc = sprites.transpose(4, 5).contiguous().transpose(4, 5)
    params_nc = params.transpose(0, 1).contiguous().transpose(0, 1)
    ref = reference.greedy_select_sprites(x, sprites, params, occ, None, 2, None, nz)
    _assert_same_selection(ops.greedy_select_sprites(x, sprites_nc, params_nc, occ, None, 2, None, nz, backend=name),
                           ref)


def test_empty_batch(backend, device):
    name = backend_for(backend, "greedy_select_sprites", device)
    x, sprites, params, occ, nz = _sprite_candidates(2, 3, 0, torch.float32, device)
    assert ops.greedy_select_sprites(x, sprites, params, occ, None, 1, None, nz, backend=name).shape == (2, 3, 0)


def test_bad_input(backend, device):
    name = backend_for(backend, "greedy_select_sprites", device)
    x, sprites, params, occ, nz = _sprite_candidates(2, 3, 2, torch.float32, device)
    with pytest.raises(ValueError, match=r"sprites must have shape \(L, K, 2, 5, \*, \*\)"):
        ops.greedy_select_sprites(x, sprites[:, :, :, :4], params, occ, None, 1, None, nz, backend=name)
    with pytest.raises(ValueError, match="n_iter must be a positive int"):
        ops.greedy_select_sprites(x, sprites, params, occ, None, 0, None, nz, backend=name)
    with pytest.raises(ValueError, match=r"empty_penalty must have shape \(3\)"):
        ops.greedy_select_sprites(x, sprites, params, occ, None, 1, torch.zeros(2, device=device), nz, backend=name)
    with pytest.raises(ValueError, match="noise must have shape"):
        ops.greedy_select_sprites(x, sprites, params, occ, None, 1, None, nz[:, :, :3], backend=name)
    with pytest.raises(TypeError, match="share one dtype"):
        ops.greedy_select_sprites(x, sprites.double(), params, occ, None, 1, None, nz, backend=name)
    with ops.value_checks():
        with pytest.raises(ValueError, match="params contains NaN or inf"):
            ops.greedy_select_sprites(x, sprites, params * float("nan"), occ, None, 1, None, nz, backend=name)
    x, layers, masks, occ = _image_candidates(2, 3, 2, torch.float32, device)
    image_backend = backend_for(backend, "greedy_select", device)
    with pytest.raises(ValueError, match=r"masks must have shape \(2, 3, 2, 1, 9, 8\)"):
        ops.greedy_select(x, layers, masks[..., :4], occ, backend=image_backend)
    with pytest.raises(ValueError, match=r"occlusion must have shape \(2, 2, 2\)"):
        ops.greedy_select(x, layers, masks, occ[:1], backend=image_backend)


def test_native_results_do_not_depend_on_the_thread_count():
    x, sprites, params, occ, nz = _sprite_candidates(3, 4, 4, torch.float32, "cpu", seed=5)
    assert_bitwise_equal(*run_per_thread_count(
        lambda: ops.greedy_select_sprites(x, sprites, params, occ, None, 2, None, nz, backend="cpu")))
    x, layers, masks, occ = _image_candidates(3, 3, 4, torch.float32, "cpu", seed=9)
    assert_bitwise_equal(*run_per_thread_count(
        lambda: ops.greedy_select(x, layers, masks, occ, None, 2, backend="cpu")))


def test_cpp_checks_guard_direct_op_calls():
    x, sprites, params, occ, nz = _sprite_candidates(2, 3, 2, torch.float32, "cpu")
    basis = ops.geometry.affine_basis((12, 11), torch.float32, x.device)
    with pytest.raises(RuntimeError, match="theta must have shape"):
        torch.ops.dtifast.greedy_select_sprites(x, sprites, params, occ, None, 1, None, nz, basis)


@pytest.mark.parametrize("fused", ["native", "triton"])
@settings(max_examples=15)
@given(L=st.integers(1, 3), K=st.integers(1, 4), B=st.integers(0, 2), n_iter=st.integers(1, 2),
       noise=st.booleans(), scale=st.sampled_from([0.0, 0.5, 2.0]), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16))
def test_property_sprite_space_selection_equals_reference(fused, L, K, B, n_iter, noise, scale, dtype, seed, device):
    name = backend_for(fused, "greedy_select_sprites", device)
    x, sprites, params, occ, nz = _sprite_candidates(L, K, B, dtype, device, H=7, W=6, h=4, w=5, noise=noise,
                                                     seed=seed, scale=scale)
    args = (x, sprites, params, occ, None, n_iter, None, nz)
    _assert_same_selection(ops.greedy_select_sprites(*args, backend=name), reference.greedy_select_sprites(*args))
