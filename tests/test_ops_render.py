"""The render family (dtifast/ops/render.py: place_sprites, render_loss) on every backend: the op
checklist (tests/checklist.py) and property-based tests."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from checklist import DTYPES, assert_close, assert_matches_reference, backend_for, count_recorded_adds
from dtifast import ops
from dtifast.ops import reference
from thread_runs import assert_bitwise_equal, run_per_thread_count

NAMES = ("x", "sprites", "params", "occlusion", "background", "noise")


def _inputs(L, B, C, H, W, h, w, dtype, device, noise=True, background=True, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    sprites = torch.rand(L, B, C + 1 + noise, h, w, generator=g, dtype=torch.float64)
    sprites[:, :, C][sprites[:, :, C] > 0.6] = 1.0
    params = scale * torch.randn(L, B, 3, generator=g, dtype=torch.float64)
    if L > 1 and B:
        params[0, 0] = torch.tensor([2.0, 0.3, -0.2])      # a small sprite
    occ = torch.rand(L, L, B, generator=g, dtype=torch.float64)
    bg = torch.rand(B, C, H, W, generator=g, dtype=torch.float64) if background else None
    nz = 0.4 * (2 * torch.rand(L, B, 1, H, W, generator=g, dtype=torch.float64) - 1) if noise else None
    x = torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
    return [None if t is None else t.to(device=device, dtype=dtype) for t in (x, sprites, params, occ, bg, nz)]


def _check(name, inputs, dtype, grad_scale=10.0):
    grad_of = tuple(i for i, t in enumerate(inputs) if t is not None)
    assert_matches_reference(lambda *a: ops.render_loss(*a, backend=name), reference.render_loss, inputs, grad_of,
                             dtype, grad_scale, NAMES)


@pytest.mark.parametrize("L,B,noise,background", [(1, 1, False, True), (3, 2, True, True), (3, 1, True, False),
                                                  (2, 2, False, False)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_render_loss_matches_reference(L, B, noise, background, dtype, backend, device):
    name = backend_for(backend, "render_loss", device)
    # 9x8 sprites into 13x15 images: odd sizes, sprites partly out of frame (zeros padding matters).
    _check(name, _inputs(L, B, 3, 13, 15, 9, 8, dtype, device, noise, background), dtype)


def test_render_loss_exact_at_the_identity(backend, device):
    # Zero position parameters (scale 2), 6x8 sprites in 12x16 images: samples land exactly on sprite pixels.
    name = backend_for(backend, "render_loss", device)
    inputs = _inputs(3, 2, 3, 12, 16, 6, 8, torch.float64, device)
    inputs[2] = torch.zeros_like(inputs[2])
    _check(name, inputs, torch.float64, grad_scale=1.0)


def test_render_loss_gradcheck_float64(backend, device):
    name = backend_for(backend, "render_loss", device)
    inputs = [t.requires_grad_() for t in _inputs(2, 1, 2, 5, 6, 4, 3, torch.float64, device)]
    assert torch.autograd.gradcheck(lambda *a: ops.render_loss(*a, backend=name), tuple(inputs), fast_mode=True)


def test_render_loss_reads_expanded_sprites_in_place(backend, device):
    name = backend_for(backend, "render_loss", device)
    x, sprites, params, occ, bg, nz = _inputs(2, 3, 3, 9, 8, 5, 6, torch.float64, device)
    shared = sprites[:, :1].expand(-1, 3, -1, -1, -1)       # one sprite per layer for every image (stride 0)
    noise = nz[:, :1].expand(-1, 3, -1, -1, -1)
    _check(name, [x, shared, params, occ, bg, noise], torch.float64)


def test_render_loss_empty_batch(backend, device):
    name = backend_for(backend, "render_loss", device)
    inputs = [t.requires_grad_() for t in _inputs(2, 0, 3, 6, 6, 4, 4, torch.float32, device)]
    loss = ops.render_loss(*inputs, backend=name)
    assert loss.shape == () and not torch.isnan(loss)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    assert all(g is None or g.shape == t.shape for g, t in zip(grads, inputs))


def test_render_loss_bad_input(backend, device):
    name = backend_for(backend, "render_loss", device)
    x, sprites, params, occ, bg, nz = _inputs(2, 2, 3, 6, 6, 4, 4, torch.float32, device)
    with pytest.raises(ValueError, match=r"sprites must have shape \(L, 2, 5, \*, \*\)"):
        ops.render_loss(x, sprites[:, :, :4], params, occ, bg, nz, backend=name)
    with pytest.raises(ValueError, match=r"params must have shape \(2, 2, 3\)"):
        ops.render_loss(x, sprites, params[:, :, :2], occ, bg, nz, backend=name)
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 2, 1, 6, 6\)"):
        ops.render_loss(x, sprites, params, occ, bg, nz[:1], backend=name)
    with pytest.raises(ValueError, match=r"occlusion must have shape \(2, 2, 2\)"):
        ops.render_loss(x, sprites, params, occ[:1], bg, nz, backend=name)
    with pytest.raises(TypeError, match="share one dtype"):
        ops.render_loss(x, sprites, params.double(), occ, bg, nz, backend=name)
    with ops.value_checks():
        with pytest.raises(ValueError, match="params contains NaN or inf"):
            ops.render_loss(x, sprites, params.clone().fill_(float("inf")), occ, bg, nz, backend=name)


def test_render_loss_deterministic_mode_records_and_matches_the_reference(backend, device, deterministic_algorithms,
                                                                         monkeypatch):
    # Under torch.use_deterministic_algorithms(True) the Triton backward records each bilinear corner of
    # the sprite gradient and adds them with index_add_ (no float atomics), chunk by chunk of images.
    name = backend_for(backend, "render_loss", device)
    calls = count_recorded_adds(monkeypatch, "render_loss") if name == "triton" else None
    if name == "triton":
        from dtifast.kernels import render_loss as kernels
        monkeypatch.setattr(kernels, "RECORD_CHUNK", 3 * 5 * 13 * 15 * 4)  # one image per chunk: 3 chunks
    _check(name, _inputs(3, 3, 3, 13, 15, 9, 8, torch.float64, device), torch.float64)
    assert calls is None or len(calls) == 3, "the deterministic path was not taken chunk by chunk"


def test_render_loss_native_does_not_depend_on_the_thread_count():
    inputs = [t.requires_grad_() for t in _inputs(3, 4, 3, 20, 20, 9, 9, torch.float32, "cpu")]
    assert_bitwise_equal(*run_per_thread_count(lambda: torch.autograd.grad(
        ops.render_loss(*inputs, backend="cpu"), inputs)))


@pytest.mark.parametrize("noise", [False, True])
def test_place_sprites_matches_reference(noise, backend, device):
    name = backend_for(backend, "place_sprites", device)
    g = torch.Generator().manual_seed(12)
    sprites = torch.rand(4, 3 + 1 + noise, 6, 5, generator=g, dtype=torch.float64).to(device)
    params = (0.4 * torch.randn(4, 3, generator=g, dtype=torch.float64)).to(device)
    nz = (0.4 * (2 * torch.rand(4, 1, 7, 8, generator=g, dtype=torch.float64) - 1)).to(device) if noise else None
    assert_matches_reference(lambda s, p: ops.place_sprites(s, p, (7, 8), nz, backend=name),
                             lambda s, p: reference.place_sprites(s, p, (7, 8), nz), [sprites, params], (0, 1),
                             torch.float64)


def test_place_sprites_bad_input_and_empty_batch(backend, device):
    name = backend_for(backend, "place_sprites", device)
    with pytest.raises(ValueError, match=r"sprites must have C colour channels \+ 2 \(mask, canvas\)"):
        ops.place_sprites(torch.rand(2, 2, 4, 4, device=device), torch.zeros(2, 3, device=device), (5, 5),
                          torch.zeros(2, 1, 5, 5, device=device), backend=name)
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 1, 5, 5\)"):
        ops.place_sprites(torch.rand(2, 5, 4, 4, device=device), torch.zeros(2, 3, device=device), (5, 5),
                          torch.zeros(2, 1, 4, 5, device=device), backend=name)
    colors, masks = ops.place_sprites(torch.rand(0, 4, 4, 4, device=device), torch.zeros(0, 3, device=device), (5, 5),
                                      backend=name)
    assert colors.shape == (0, 3, 5, 5) and masks.shape == (0, 1, 5, 5)


def test_render_loss_known_answer_one_opaque_layer(backend, device):
    # One opaque sprite of colour c covering the whole image over a black background: loss = mean((c − x)²).
    name = backend_for(backend, "render_loss", device)
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64, device=device)
    sprite = torch.ones(1, 1, 4, 4, 4, dtype=torch.float64, device=device)
    sprite[:, :, :3] = 0.25
    params = torch.tensor([[[-30.0, 0.0, 0.0]]], dtype=torch.float64, device=device)  # scale e^-30 + 1 ≈ 1
    loss = ops.render_loss(x, sprite, params, torch.zeros(1, 1, 1, dtype=torch.float64, device=device), backend=name)
    assert_close(loss, ((0.25 - x) ** 2).mean(), torch.float64, "loss")


@pytest.mark.parametrize("fused", ["native", "triton"])
@settings(max_examples=20)
@given(L=st.integers(1, 4), B=st.integers(0, 2), hw=st.tuples(st.integers(1, 6), st.integers(1, 6)),
       HW=st.tuples(st.integers(1, 8), st.integers(1, 8)), noise=st.booleans(), background=st.booleans(),
       scale=st.sampled_from([0.0, 0.5, 3.0]), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_property_render_loss_matches_the_reference(fused, L, B, hw, HW, noise, background, scale, dtype, seed,
                                                    device):
    name = backend_for(fused, "render_loss", device)
    inputs = _inputs(L, B, 3, *HW, *hw, dtype, device, noise, background, seed, scale)
    _check(name, inputs, dtype, grad_scale=100.0 if dtype == torch.float32 else 10.0)
