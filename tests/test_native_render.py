"""The fused C++ render loss against its eager twin: value, gradients of every input, float64 gradcheck,
thread-count determinism, non-contiguous inputs and bad input."""
import pytest
import torch

from dtifast.ops import _native as native
from dtifast.ops import reference
from thread_runs import assert_bitwise_equal, run_per_thread_count


def _inputs(L=3, B=2, C=3, H=9, W=10, h=6, w=5, dtype=torch.float64, seed=0, background=True, noise=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g, dtype=dtype)
    sprites = torch.rand(L, B, C + (2 if noise else 1), h, w, generator=g, dtype=dtype)
    params = torch.randn(L, B, 3, generator=g, dtype=dtype) * 0.4
    params[..., 0] -= 0.5  # sprites smaller than the image, partly out of frame: zeros padding matters
    occ = torch.rand(L, L, B, generator=g, dtype=dtype)
    bg = torch.rand(B, C, H, W, generator=g, dtype=dtype) if background else None
    nz = (torch.rand(L, B, 1, H, W, generator=g, dtype=dtype) - 0.5) * 0.8 if noise else None
    return [x, sprites, params, occ, bg, nz]


def _run(fn, inputs):
    leaves = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    loss = fn(*leaves)
    loss.backward()
    return loss, [t.grad if t is not None else None for t in leaves]


@pytest.mark.parametrize("background,noise", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_value_and_grads_match_reference(background, noise, dtype, atol):
    inputs = _inputs(dtype=dtype, background=background, noise=noise)
    loss, grads = _run(native.render_loss, inputs)
    ref, ref_grads = _run(reference.render_loss, inputs)
    torch.testing.assert_close(loss, ref, atol=atol, rtol=0)
    names = ["x", "sprites", "params", "occlusion", "background", "noise"]
    for name, got, want in zip(names, grads, ref_grads):
        if want is not None:
            torch.testing.assert_close(got, want, atol=atol * 10, rtol=atol * 10, msg=lambda m: f"{name}: {m}")


def test_gradcheck_float64():
    inputs = [t.requires_grad_() for t in _inputs(L=2, B=2, C=2, H=4, W=5, h=3, w=3, seed=1)]
    assert torch.autograd.gradcheck(native.render_loss, tuple(inputs))


def test_threads_one_and_two_give_identical_results():
    inputs = _inputs(L=3, B=4, H=16, W=16, h=8, w=8, dtype=torch.float32, seed=2)
    assert_bitwise_equal(*run_per_thread_count(lambda: _run(native.render_loss, inputs)))


def test_non_contiguous_inputs():
    x, sprites, params, occ, bg, nz = _inputs(seed=3)
    sprites_nc = sprites.transpose(3, 4).contiguous().transpose(3, 4)
    params_nc = params.transpose(0, 1).contiguous().transpose(0, 1)
    x_nc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not (sprites_nc.is_contiguous() or params_nc.is_contiguous() or x_nc.is_contiguous())
    torch.testing.assert_close(native.render_loss(x_nc, sprites_nc, params_nc, occ, bg, nz),
                               reference.render_loss(x, sprites, params, occ, bg, nz), atol=1e-12, rtol=0)


def test_bad_inputs_raise_clear_errors():
    x, sprites, params, occ, bg, nz = _inputs()
    with pytest.raises(ValueError, match=r"sprites must have shape \(L, 2, 5, \*, \*\)"):
        native.render_loss(x, sprites[:, :, :4], params, occ, bg, nz)
    with pytest.raises(ValueError, match=r"params must have shape \(3, 2, 3\)"):
        native.render_loss(x, sprites, params[..., :2], occ, bg, nz)
    with pytest.raises(ValueError, match=r"noise must have shape"):
        native.render_loss(x, sprites, params, occ, bg, nz[:, :1])
    with pytest.raises(ValueError, match=r"occlusion must have shape"):
        native.render_loss(x, sprites, params, occ[:2], bg, nz)
    with pytest.raises(TypeError, match="share one dtype"):
        native.render_loss(x, sprites, params.float(), occ, bg, nz)
    with pytest.raises(ValueError, match="NaN"):
        native.render_loss(x, sprites * float("nan"), params, occ, bg, nz)
    with pytest.raises(RuntimeError, match="theta must have shape"):
        torch.ops.dtifast.render_loss(x, sprites, params, occ, bg, nz)


def test_opcheck_render_loss_op():
    x, sprites, params, occ, bg, nz = _inputs(L=2, H=4, W=4, h=3, w=3, seed=4)
    theta = reference.position_matrix(params.reshape(-1, 3)).reshape(2, 2, 6)
    args = (x, sprites.requires_grad_(), theta.requires_grad_(), occ.requires_grad_(), bg, nz)
    torch.library.opcheck(torch.ops.dtifast.render_loss.default, args)
