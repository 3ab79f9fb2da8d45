"""The C++ layer compositing against its eager twin: values, all four gradients, float64 gradcheck,
opaque layers, thread-count determinism, non-contiguous inputs and bad input."""
import pytest
import torch

from dtifast.ops import _native as native
from dtifast.ops import reference
from thread_runs import assert_bitwise_equal, run_per_thread_count


def _inputs(L=3, B=2, C=3, H=5, W=6, dtype=torch.float64, seed=0, background=True):
    g = torch.Generator().manual_seed(seed)
    layers = torch.rand(L, B, C, H, W, generator=g, dtype=dtype)
    masks = torch.rand(L, B, 1, H, W, generator=g, dtype=dtype)
    occ = torch.rand(L, L, B, generator=g, dtype=dtype)
    bg = torch.rand(B, C, H, W, generator=g, dtype=dtype) if background else None
    return [layers, masks, occ, bg]


def _run(fn, inputs, grad):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*leaves)
    out.backward(grad)
    return out, [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
def test_values_and_grads_match_reference(background, dtype, atol):
    inputs = _inputs(L=4, dtype=dtype, background=background)
    grad = torch.randn(2, 3, 5, 6, dtype=dtype)
    out, grads = _run(native.composite_layers, inputs, grad)
    ref, ref_grads = _run(reference.composite_layers, inputs, grad)
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    for got, want in zip(grads, ref_grads):
        if want is not None:
            torch.testing.assert_close(got, want, atol=atol * 10, rtol=0)


@pytest.mark.parametrize("background", [True, False])
def test_gradcheck_float64(background):
    inputs = [t.requires_grad_() for t in _inputs(L=3, H=3, W=4, background=background, seed=1) if t is not None]
    assert torch.autograd.gradcheck(native.composite_layers, tuple(inputs))


def test_opaque_layers_have_exact_gradients():
    # Masks and occlusion of exactly 1 make factors (1 - o m) vanish: products without division stay exact.
    layers, masks, occ, bg = _inputs(L=3, seed=2)
    masks[:, :, :, :2] = 1.0
    occ[:] = torch.tril(torch.ones(3, 3, dtype=torch.float64), -1)[..., None]
    grad = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    out, grads = _run(native.composite_layers, [layers, masks, occ, bg], grad)
    ref, ref_grads = _run(reference.composite_layers, [layers, masks, occ, bg], grad)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_threads_one_and_two_give_identical_results():
    inputs = _inputs(L=3, B=2, H=48, W=48, dtype=torch.float32, seed=3)  # 2304 pixels: two chunks per image
    grad = torch.randn(2, 3, 48, 48)
    assert_bitwise_equal(*run_per_thread_count(lambda: _run(native.composite_layers, inputs, grad)))


def test_non_contiguous_inputs():
    layers, masks, occ, bg = _inputs(L=2, B=3, seed=4)
    layers_nc = layers.transpose(3, 4).contiguous().transpose(3, 4)
    occ_nc = occ.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    bg_nc = bg.expand(2, -1, -1, -1, -1)[1]
    masks_nc = torch.cat([masks, masks], 2)[:, :, ::2]
    assert not (layers_nc.is_contiguous() or occ_nc.is_contiguous() or masks_nc.is_contiguous())
    torch.testing.assert_close(native.composite_layers(layers_nc, masks_nc, occ_nc, bg_nc),
                               reference.composite_layers(layers, masks, occ, bg), atol=1e-12, rtol=0)


def test_bad_inputs_raise_clear_errors():
    layers, masks, occ, bg = _inputs(L=2)
    with pytest.raises(ValueError, match=r"masks must have shape \(2, 2, 1, 5, 6\)"):
        native.composite_layers(layers, masks[:, :, :, :4], occ, bg)
    with pytest.raises(ValueError, match=r"occlusion must have shape"):
        native.composite_layers(layers, masks, occ[:1], bg)
    with pytest.raises(ValueError, match=r"background must have shape"):
        native.composite_layers(layers, masks, occ, bg[:1])
    with pytest.raises(TypeError, match="dtype"):
        native.composite_layers(layers.half(), masks.half(), occ.half())
    with pytest.raises(TypeError, match="share one dtype"):
        native.composite_layers(layers, masks.float(), occ)
    with pytest.raises(ValueError, match="NaN"):
        native.composite_layers(layers, masks, occ * float("nan"))
    big = _inputs(L=17, B=1, H=2, W=2)
    with pytest.raises(ValueError, match="at most 16 layers"):
        native.composite_layers(*big)
    with pytest.raises(RuntimeError, match="occlusion must have shape"):
        torch.ops.dtifast.composite(layers, masks, occ[:1], None)


def test_opcheck_composite_op():
    inputs = [t.requires_grad_() for t in _inputs(L=2, H=3, W=3, seed=5)]
    torch.library.opcheck(torch.ops.dtifast.composite.default, tuple(inputs))


# ---- compositions of the native kernels: candidates and sprite placement ---------------------------------

@pytest.mark.parametrize("n_bkg", [None, 1, 2])
def test_composite_candidates_match_reference(n_bkg):
    g = torch.Generator().manual_seed(11)
    layers = torch.rand(3, 2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    masks = torch.rand(3, 2, 1, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bkgs = None if n_bkg is None else torch.rand(n_bkg, 2, 3, 5, 4, generator=g, dtype=torch.float64,
                                                 requires_grad=True)
    out = native.composite_candidates(layers, masks, bkgs)
    ref = reference.composite_candidates(layers, masks, bkgs)
    torch.testing.assert_close(out, ref, atol=1e-13, rtol=0)
    inputs = (layers, masks) + (() if bkgs is None else (bkgs,))
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(ref, inputs, grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match=r"backgrounds must have shape \(\*, 2, 3, 5, 4\)"):
        native.composite_candidates(layers, masks, torch.rand(1, 2, 3, 5, 5, dtype=torch.float64))


@pytest.mark.parametrize("with_noise", [False, True])
def test_place_sprites_match_reference(with_noise):
    g = torch.Generator().manual_seed(12)
    sprites = torch.rand(4, 3 + 1 + int(with_noise), 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    params = (0.4 * torch.randn(4, 3, generator=g, dtype=torch.float64)).requires_grad_()
    noise = 0.4 * (2 * torch.rand(4, 1, 7, 8, generator=g, dtype=torch.float64) - 1) if with_noise else None
    got = native.place_sprites(sprites, params, (7, 8), noise)
    want = reference.place_sprites(sprites, params, (7, 8), noise)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=0)
    assert torch.autograd.gradcheck(lambda s, p: native.place_sprites(s, p, (7, 8), noise), (sprites, params))
