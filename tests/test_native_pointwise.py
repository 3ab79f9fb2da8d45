"""The C++ colour transform against its eager twin: values and gradients (extra channels, grayscale
expansion), float64 gradcheck, thread-count determinism, non-contiguous inputs and bad input. (The native
softclip's tests are in test_backend.py.)"""
import pytest
import torch

from dtifast import ops
from dtifast.ops import _native as native
from dtifast.ops import reference
from thread_runs import assert_bitwise_equal, run_per_thread_count


def _color_inputs(N=3, CE=5, n_color=3, h=6, w=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 1.4 * torch.rand(N, CE, h, w, generator=g, dtype=dtype) - 0.2   # straddles [0, 1]: both softclip slopes
    params = 0.5 * torch.randn(N, 2 * n_color, generator=g, dtype=dtype)
    return x, params


@pytest.mark.parametrize("CE,n_color", [(5, 3), (3, 3), (1, 3), (2, 1)])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float64, 1e-13)])
def test_color_transform_values_and_grads(CE, n_color, dtype, atol):
    x, params = _color_inputs(CE=CE, n_color=n_color, dtype=dtype, seed=CE)
    grad = torch.randn(3, max(CE, n_color), 6, 7, dtype=dtype)
    outs, grads = [], []
    for fn in (native.color_transform, reference.color_transform):
        xl, pl = x.clone().requires_grad_(), params.clone().requires_grad_()
        out = fn(xl, pl, 0.01)
        out.backward(grad)
        outs.append(out)
        grads.append((xl.grad, pl.grad))
    torch.testing.assert_close(outs[0], outs[1], atol=atol, rtol=0)
    for got, want in zip(grads[0], grads[1]):
        torch.testing.assert_close(got, want, atol=atol * 100, rtol=0)


def test_color_transform_gradcheck_float64():
    x, params = _color_inputs(N=2, CE=4, n_color=3, h=3, w=4, seed=7)
    x[0, 0, 0, 0] = 0.5  # keep away from the kinks at exactly 0 and 1, where gradcheck's finite differences break
    assert torch.autograd.gradcheck(lambda a, b: native.color_transform(a, b, 0.05),
                                    (x.requires_grad_(), params.requires_grad_()))


def test_threads_one_and_two_give_identical_results():
    x, params = _color_inputs(N=4, CE=5, h=64, w=64, dtype=torch.float32, seed=3)
    grad = torch.randn_like(x)

    def run():
        xl, pl = x.clone().requires_grad_(), params.clone().requires_grad_()
        out = native.color_transform(xl, pl)
        out.backward(grad)
        return out, xl.grad, pl.grad

    assert_bitwise_equal(*run_per_thread_count(run))


def test_non_contiguous_inputs():
    x, params = _color_inputs(seed=4)
    x_nc = x.transpose(2, 3).contiguous().transpose(2, 3)
    p_nc = params.t().contiguous().t()
    assert not x_nc.is_contiguous() and not p_nc.is_contiguous()
    torch.testing.assert_close(native.color_transform(x_nc, p_nc), reference.color_transform(x, params),
                               atol=1e-13, rtol=0)


def test_public_op_defaults_to_native_on_cpu():
    assert ops.resolve("color_transform", None, torch.device("cpu"))[0] == "cpu"


def test_bad_inputs_raise_clear_errors():
    x, params = _color_inputs()
    with pytest.raises(ValueError, match=r"interleaved \(gain, bias\) pairs"):
        native.color_transform(x, params[:, :5])
    with pytest.raises(ValueError, match=r"params must have shape \(3, 6\)"):
        native.color_transform(x, params[:2])
    with pytest.raises(ValueError, match="at least 3 colour channels"):
        native.color_transform(x[:, :2], params)
    with pytest.raises(TypeError, match="share one dtype"):
        native.color_transform(x, params.float())
    with pytest.raises(TypeError, match="dtype in"):
        native.color_transform(x.half(), params.half())
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        native.color_transform(bad, params)
