"""Fused compositing and render loss against their eager twins: values, gradients, gradcheck, opcheck, bad input."""
from __future__ import annotations

import pytest
import torch

from dtifast import ops
from dtifast.ops import composite as tc
from dtifast.ops import reference
from dtifast.ops import render as tr


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _close(a, b, dtype, what):
    atol = (1e-5 if dtype == torch.float32 else 1e-12) * max(1.0, float(b.detach().abs().max()) if b.numel() else 1.0)
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4 if dtype == torch.float32 else 1e-10,
                               msg=lambda m: f"{what}: {m}")


def _grads_match(ref, out, inputs, dtype):
    _close(out, ref, dtype, "value")
    grad = torch.randn_like(ref)
    for a, b, i in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad), range(9)):
        _close(a, b, dtype, f"grad of input {i}")


def _layers(L, B, C, H, W, device, dtype=torch.float32):
    layers = torch.rand(L, B, C, H, W, device=device, dtype=dtype)
    masks = torch.rand(L, B, 1, H, W, device=device, dtype=dtype)
    masks[masks > 0.7] = 1.0   # opaque pixels: o·m = 1 factors, which a division-based backward would break
    occ = torch.rand(L, L, B, device=device, dtype=dtype)
    occ[..., 0] = torch.tril(torch.ones(L, L), -1)  # image 0: upstream's fixed order, exact 0/1
    return [t.requires_grad_() for t in (layers, masks, occ)]


@pytest.mark.parametrize("L,B,with_bg", [(1, 1, True), (3, 2, True), (4, 2, False), (6, 1, True)])
def test_composite_matches_reference(L, B, with_bg, device):
    inputs = _layers(L, B, 3, 7, 9, device)
    if with_bg:
        inputs.append(torch.rand(B, 3, 7, 9, device=device, requires_grad=True))
    bg = inputs[3] if with_bg else None
    ref = reference.composite_layers(*inputs[:3], bg)
    out = ops.composite_layers(*inputs[:3], bg, backend="triton")
    _grads_match(ref, out, inputs, torch.float32)


def test_composite_gradcheck_and_opcheck(device):
    inputs = _layers(3, 2, 2, 3, 4, device, torch.float64)
    bg = torch.rand(2, 2, 3, 4, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tc.composite_layers, (*inputs, bg), fast_mode=True)
    torch.library.opcheck(torch.ops.dtifast.composite_layers_triton, (*[t.float() for t in inputs], bg.float()))
    torch.library.opcheck(torch.ops.dtifast.composite_layers_triton, (*[t.float() for t in inputs], None))


def test_composite_bad_input(device):
    layers, masks, occ = _layers(2, 2, 3, 4, 4, device)
    with pytest.raises(ValueError, match=r"masks must have shape \(2, 2, 1, 4, 4\)"):
        tc.composite_layers(layers, masks[:, :, :, :3], occ)
    with pytest.raises(ValueError, match=r"occlusion must have shape \(2, 2, 2\)"):
        tc.composite_layers(layers, masks, occ[:1])
    with pytest.raises(ValueError, match=r"background must have shape"):
        tc.composite_layers(layers, masks, occ, torch.rand(1, 3, 4, 4, device=device))
    with pytest.raises(TypeError, match="must share one dtype"):
        tc.composite_layers(layers, masks.double(), occ)


def _sprite_inputs(L, B, C, H, W, h, w, with_noise, device, dtype=torch.float32):
    sprites = torch.rand(L, B, C + 1 + with_noise, h, w, device=device, dtype=dtype)
    sprites[:, :, C][sprites[:, :, C] > 0.6] = 1.0
    params = 0.5 * torch.randn(L, B, 3, device=device, dtype=dtype)
    if L > 1:
        params[0, 0] = torch.tensor([2.0, 0.3, -0.2])   # a small sprite
    occ = torch.rand(L, L, B, device=device, dtype=dtype)
    bg = torch.rand(B, C, H, W, device=device, dtype=dtype)
    noise = 0.4 * (2 * torch.rand(L, B, 1, H, W, device=device, dtype=dtype) - 1) if with_noise else None
    x = torch.rand(B, C, H, W, device=device, dtype=dtype)
    return x, sprites, params, occ, bg, noise


@pytest.mark.parametrize("L,B,noise,bg", [(1, 1, False, True), (3, 2, True, True), (3, 1, True, False),
                                          (2, 2, False, False)])
def test_render_loss_matches_reference(L, B, noise, bg, device):
    # 24×24 sprites into 35×35 images (tetrominoes' sizes).
    x, sprites, params, occ, background, nz = _sprite_inputs(L, B, 3, 35, 35, 24, 24, noise, device)
    background = background if bg else None
    inputs = [t.requires_grad_() for t in (x, sprites, params, occ)] + ([background.requires_grad_()] if bg else [])
    ref = reference.render_loss(x, sprites, params, occ, background, nz)
    out = ops.render_loss(x, sprites, params, occ, background, nz, backend="triton")
    _grads_match(ref, out, inputs, torch.float32)


def test_render_loss_reads_expanded_sprites_in_place(device):
    x, sprites, params, occ, bg, nz = _sprite_inputs(2, 3, 3, 9, 8, 5, 6, True, device)
    shared = sprites[:, :1].expand(-1, 3, -1, -1, -1)   # one sprite per layer for every image (stride 0)
    ref = reference.render_loss(x, shared.contiguous(), params, occ, bg, nz)
    _close(tr.render_loss(x, shared, params, occ, bg, nz), ref, torch.float32, "value")


def test_render_loss_gradcheck_and_opcheck(device):
    x, sprites, params, occ, bg, nz = _sprite_inputs(2, 1, 2, 5, 6, 4, 3, True, device, torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, sprites, params, occ, bg))
    assert torch.autograd.gradcheck(lambda *a: tr.render_loss(*a, nz), inputs, fast_mode=True)
    f32 = [t.detach().float().requires_grad_() for t in inputs]
    torch.library.opcheck(torch.ops.dtifast.render_loss_triton, (*f32, nz.float()))
    torch.library.opcheck(torch.ops.dtifast.render_loss_triton, (f32[0], f32[1][:, :, :3], *f32[2:4], None, None))


def test_render_loss_bad_input(device):
    x, sprites, params, occ, bg, nz = _sprite_inputs(2, 2, 3, 6, 6, 4, 4, True, device)
    with pytest.raises(ValueError, match=r"sprites must have shape \(L, 2, 5, \*, \*\)"):
        tr.render_loss(x, sprites[:, :, :4], params, occ, bg, nz)
    with pytest.raises(ValueError, match=r"params must have shape \(2, 2, 3\)"):
        tr.render_loss(x, sprites, params[:, :, :2], occ, bg, nz)
    with pytest.raises(ValueError, match=r"noise must have shape \(2, 2, 1, 6, 6\)"):
        tr.render_loss(x, sprites, params, occ, bg, nz[:1])
    with pytest.raises(ValueError, match="NaN or inf"):
        tr.render_loss(x, sprites, params.clone().fill_(float("inf")), occ, bg, nz)
    with pytest.raises(ValueError, match="treats the mask noise as a constant"):
        tr.render_loss(x, sprites, params, occ, bg, nz.clone().requires_grad_())
