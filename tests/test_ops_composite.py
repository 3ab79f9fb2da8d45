"""The compositing family (dtifast/ops/composite.py: composite_layers, composite_candidates) on every
backend: the op checklist (tests/checklist.py) and property-based tests."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from checklist import DTYPES, assert_matches_reference, backend_for
from dtifast import ops
from dtifast.ops import reference
from thread_runs import assert_bitwise_equal, run_per_thread_count

NAMES = ("layers", "masks", "occlusion", "background")


def _inputs(L, B, C, H, W, dtype, device, background=True, seed=0, opaque=True):
    g = torch.Generator().manual_seed(seed)
    layers = torch.rand(L, B, C, H, W, generator=g, dtype=torch.float64)
    masks = torch.rand(L, B, 1, H, W, generator=g, dtype=torch.float64)
    occ = torch.rand(L, L, B, generator=g, dtype=torch.float64)
    if opaque and B:
        masks[masks > 0.7] = 1.0                           # o·m = 1 factors: no division in the backward
        occ[..., 0] = torch.tril(torch.ones(L, L), -1)     # image 0: upstream's fixed order, exact 0/1
    bg = torch.rand(B, C, H, W, generator=g, dtype=torch.float64) if background else None
    return [None if t is None else t.to(device=device, dtype=dtype) for t in (layers, masks, occ, bg)]


def _check(name, inputs, dtype, grad_scale=10.0):
    n = 4 if inputs[3] is not None else 3
    assert_matches_reference(lambda *a: ops.composite_layers(*a, backend=name), reference.composite_layers,
                             inputs[:n], tuple(range(n)), dtype, grad_scale, NAMES)


@pytest.mark.parametrize("L,B,background", [(1, 1, True), (3, 2, True), (4, 2, False), (6, 1, True)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(L, B, background, dtype, backend, device):
    name = backend_for(backend, "composite_layers", device)
    _check(name, _inputs(L, B, 3, 7, 9, dtype, device, background), dtype)


def test_gradcheck_float64(backend, device):
    name = backend_for(backend, "composite_layers", device)
    inputs = [t.requires_grad_() for t in _inputs(3, 2, 2, 3, 4, torch.float64, device, opaque=False)]
    assert torch.autograd.gradcheck(lambda *a: ops.composite_layers(*a, backend=name), tuple(inputs), fast_mode=True)


def test_non_contiguous_and_expanded_inputs(backend, device):
    name = backend_for(backend, "composite_layers", device)
    layers, masks, occ, bg = _inputs(2, 3, 3, 5, 6, torch.float64, device)
    layers = layers.transpose(3, 4).contiguous().transpose(3, 4)
    occ = occ.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    masks = torch.cat([masks, masks], 2)[:, :, ::2]
    bg = bg[:1].expand(3, -1, -1, -1)
    assert not (layers.is_contiguous() or occ.is_contiguous() or masks.is_contiguous() or bg.is_contiguous())
    _check(name, [layers, masks, occ, bg], torch.float64)


def test_empty_batch(backend, device):
    name = backend_for(backend, "composite_layers", device)
    inputs = [t.requires_grad_() for t in _inputs(2, 0, 3, 4, 4, torch.float32, device)]
    out = ops.composite_layers(*inputs, backend=name)
    assert out.shape == (0, 3, 4, 4)
    grads = torch.autograd.grad(out.sum(), inputs, allow_unused=True)
    assert all(g is None or g.shape == t.shape for g, t in zip(grads, inputs))


@pytest.mark.parametrize("n_bkg", [None, 1, 2])
def test_candidates_match_reference(n_bkg, backend, device):
    name = backend_for(backend, "composite_candidates", device)
    g = torch.Generator().manual_seed(11)
    layers = torch.rand(3, 2, 3, 5, 4, generator=g, dtype=torch.float64).to(device)
    masks = torch.rand(3, 2, 1, 5, 4, generator=g, dtype=torch.float64).to(device)
    bkgs = None if n_bkg is None else torch.rand(n_bkg, 2, 3, 5, 4, generator=g, dtype=torch.float64).to(device)
    inputs = [layers, masks] + ([] if bkgs is None else [bkgs])
    assert_matches_reference(lambda *a: ops.composite_candidates(*a, backend=name), reference.composite_candidates,
                             inputs, tuple(range(len(inputs))), torch.float64)


@pytest.mark.parametrize("n_bkg", [None, 1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_candidate_distances_match_reference(n_bkg, dtype, backend, device):
    name = backend_for(backend, "candidate_distances", device)
    g = torch.Generator().manual_seed(12)
    x = torch.rand(2, 3, 5, 4, generator=g, dtype=torch.float64)
    layers = torch.rand(3, 2, 3, 5, 4, generator=g, dtype=torch.float64)
    masks = torch.rand(3, 2, 1, 5, 4, generator=g, dtype=torch.float64)
    masks[masks > 0.8] = 1.0
    bkgs = None if n_bkg is None else torch.rand(n_bkg, 2, 3, 5, 4, generator=g, dtype=torch.float64)
    inputs = [t.to(device=device, dtype=dtype) for t in (x, layers, masks) + (() if bkgs is None else (bkgs,))]
    assert_matches_reference(lambda *a: ops.candidate_distances(*a, backend=name), reference.candidate_distances,
                             inputs, tuple(range(len(inputs))), dtype, names=("x", "layers", "masks", "backgrounds"))


def test_candidate_distances_read_sprite_views_in_place(backend, device):
    """Colours and masks split from one sprite tensor (strided views, as the model passes them) give the
    values and gradients of contiguous copies."""
    name = backend_for(backend, "candidate_distances", device)
    g = torch.Generator().manual_seed(13)
    sprites = torch.rand(4, 2, 5, 6, 7, generator=g, dtype=torch.float64).to(device).requires_grad_()
    x = torch.rand(2, 3, 6, 7, generator=g, dtype=torch.float64).to(device)
    bkgs = torch.rand(2, 2, 3, 6, 7, generator=g, dtype=torch.float64).to(device)
    colors, masks, _ = sprites.split([3, 1, 1], dim=2)
    assert not colors.is_contiguous() and not masks.is_contiguous()
    viewed = ops.candidate_distances(x, colors, masks, bkgs, backend=name)
    (grad_viewed,) = torch.autograd.grad(viewed.sum(), sprites)
    copied = ops.candidate_distances(x, colors.contiguous(), masks.contiguous(), bkgs, backend=name)
    (grad_copied,) = torch.autograd.grad(copied.sum(), sprites)
    torch.testing.assert_close(viewed, copied, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_viewed, grad_copied, rtol=0, atol=1e-12)


def test_candidate_distances_bad_input(backend, device):
    name = backend_for(backend, "candidate_distances", device)
    layers, masks = torch.rand(3, 2, 3, 5, 4, device=device), torch.rand(3, 2, 1, 5, 4, device=device)
    with pytest.raises(ValueError, match=r"x must have shape \(2, 3, 5, 4\)"):
        ops.candidate_distances(torch.rand(2, 3, 5, 5, device=device), layers, masks, backend=name)
    with pytest.raises(TypeError, match="share one dtype"):
        ops.candidate_distances(torch.rand(2, 3, 5, 4, device=device, dtype=torch.float64), layers, masks,
                                backend=name)


def test_candidates_empty_batch(backend, device):
    name = backend_for(backend, "composite_candidates", device)
    out = ops.composite_candidates(torch.rand(3, 0, 3, 4, 4, device=device), torch.rand(3, 0, 1, 4, 4, device=device),
                                   torch.rand(2, 0, 3, 4, 4, device=device), backend=name)
    assert out.shape == (0, 6, 3, 4, 4)


def test_bad_input(backend, device):
    name = backend_for(backend, "composite_layers", device)
    layers, masks, occ, bg = _inputs(2, 2, 3, 5, 6, torch.float32, device)
    with pytest.raises(ValueError, match=r"masks must have shape \(2, 2, 1, 5, 6\)"):
        ops.composite_layers(layers, masks[:, :, :, :4], occ, bg, backend=name)
    with pytest.raises(ValueError, match=r"occlusion must have shape \(2, 2, 2\)"):
        ops.composite_layers(layers, masks, occ[:1], bg, backend=name)
    with pytest.raises(ValueError, match="background must have shape"):
        ops.composite_layers(layers, masks, occ, bg[:1], backend=name)
    with pytest.raises(TypeError, match="share one dtype"):
        ops.composite_layers(layers, masks.double(), occ, backend=name)
    with pytest.raises(ValueError, match="layers must be a 5-D tensor"):
        ops.composite_layers(layers[0], masks, occ, backend=name)
    with pytest.raises(ValueError, match=r"backgrounds must have shape \(\*, 2, 3, 5, 6\)"):
        ops.composite_candidates(layers, masks, torch.rand(1, 2, 3, 5, 5, device=device), backend=name)
    with ops.value_checks():
        with pytest.raises(ValueError, match="occlusion contains NaN or inf"):
            ops.composite_layers(layers, masks, occ * float("nan"), backend=name)
    if name != "torch":
        big = _inputs(17, 1, 1, 2, 2, torch.float32, device)
        with pytest.raises(ValueError, match="at most 16 layers"):
            ops.composite_layers(*big, backend=name)


def test_native_results_do_not_depend_on_the_thread_count():
    inputs = [t.requires_grad_() for t in _inputs(3, 2, 3, 48, 48, torch.float32, "cpu")]  # two chunks per image
    grad = torch.randn(2, 3, 48, 48)
    assert_bitwise_equal(*run_per_thread_count(lambda: torch.autograd.grad(
        ops.composite_layers(*inputs, backend="cpu"), inputs, grad)))


def test_cpp_checks_guard_direct_op_calls():
    layers, masks, occ, _ = _inputs(2, 2, 3, 4, 4, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="occlusion must have shape"):
        torch.ops.dtifast.composite_layers(layers, masks, occ[:1], None)


@pytest.mark.parametrize("fused", ["native", "triton"])
@settings(max_examples=20)
@given(L=st.integers(1, 6), B=st.integers(0, 3), C=st.integers(1, 3), H=st.integers(1, 6), W=st.integers(1, 6),
       background=st.booleans(), occlusion=st.sampled_from(["random", "binary"]), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**16))
def test_property_matches_the_reference(fused, L, B, C, H, W, background, occlusion, dtype, seed, device):
    name = backend_for(fused, "composite_layers", device)
    inputs = _inputs(L, B, C, H, W, dtype, device, background, seed, opaque=occlusion == "binary")
    if occlusion == "binary":
        inputs[2] = (inputs[2] > 0.5).to(dtype)
    _check(name, inputs, dtype, grad_scale=50.0)
