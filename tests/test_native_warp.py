"""The C++ warps (``cpu`` backend) against their eager twins: values, gradients, float64 gradcheck,
thread-count determinism, non-contiguous inputs and bad input."""
import pytest
import torch

from dtifast import ops
from dtifast.ops import _native as native
from dtifast.ops import reference
from thread_runs import assert_bitwise_equal, run_per_thread_count

N_PARAMS = {"position": 3, "similarity": 4, "affine": 6, "projective": 9, "tps": (16, 2)}
KINDS = tuple(N_PARAMS)


def _params(kind: str, n: int, dtype: torch.dtype, scale: float = 0.3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, *N_PARAMS[kind]) if kind == "tps" else (n, N_PARAMS[kind])
    p = torch.randn(*shape, generator=g, dtype=dtype) * scale
    if kind == "tps":
        p = p * 0.3
    if kind == "projective":
        p[:, 6:8] *= 0.3  # mild perspective: keep w away from 0 except where a test asks for it
    return p


def _call(module, kind: str, x, p, out_size, padding):
    return getattr(module, f"warp_{kind}")(x, p, out_size, padding)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
def test_values_and_grads_match_reference(kind, padding, dtype, atol):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 4, 7, 9, generator=g, dtype=dtype)
    p = _params(kind, 3, dtype)
    out_size = (5, 11)
    grad = torch.randn(3, 4, *out_size, generator=g, dtype=dtype)
    results = []
    for module in (native, reference):
        xi, pi = x.clone().requires_grad_(), p.clone().requires_grad_()
        out = _call(module, kind, xi, pi, out_size, padding)
        out.backward(grad)
        results.append((out, xi.grad, pi.grad))
    (out, dx, dp), (ref, rdx, rdp) = results
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    torch.testing.assert_close(dx, rdx, atol=atol * 10, rtol=0)
    torch.testing.assert_close(dp, rdp, atol=atol * 1e3, rtol=atol * 10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_gradcheck_float64(kind, padding):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    p = _params(kind, 2, torch.float64, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: _call(native, kind, a, b, (4, 6), padding), (x, p))


def test_projective_degenerate_w_is_not_divided():
    # H = [[1,0,0],[0,1,0],[0,0,0]]: w = 0 everywhere, so the sample sits at (u, v) = (x, y), as the reference.
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    p = torch.zeros(1, 9, dtype=torch.float64)
    p[0, 8] = -1.0
    out = native.warp_projective(x, p, (6, 6))
    torch.testing.assert_close(out, reference.warp_projective(x, p, (6, 6)), atol=1e-12, rtol=0)


def test_identity_known_answer():
    # Affine identity samples pixel centres exactly: the output is the input.
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    torch.testing.assert_close(native.warp_affine(x, torch.zeros(2, 6, dtype=torch.float64), (5, 7)), x)


@pytest.mark.parametrize("kind", ["similarity", "tps"])
def test_threads_one_and_two_give_identical_results(kind):
    g = torch.Generator().manual_seed(4)
    x = torch.rand(6, 3, 9, 9, generator=g)
    p = _params(kind, 6, torch.float32, seed=5)
    grad = torch.randn(6, 3, 8, 8, generator=g)

    def run():
        xi, pi = x.clone().requires_grad_(), p.clone().requires_grad_()
        out = _call(native, kind, xi, pi, (8, 8), "zeros")
        out.backward(grad)
        return out, xi.grad, pi.grad

    assert_bitwise_equal(*run_per_thread_count(run))


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(6)
    x = torch.rand(3, 7, 9, 4, generator=g).permute(0, 3, 1, 2)  # channels-last view
    p = (torch.randn(3, 12, generator=g) * 0.2)[:, ::2]                 # strided columns
    assert not x.is_contiguous() and not p.is_contiguous()
    out = native.warp_affine(x, p, (6, 6))
    ref = reference.warp_affine(x, p, (6, 6))
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)


def test_public_op_dispatches_to_cpu_backend():
    assert ops.resolve("warp_tps", None, torch.device("cpu"))[0] == "cpu"
    x = torch.rand(2, 3, 6, 6)
    p = torch.zeros(2, 3)
    torch.testing.assert_close(ops.warp_position(x, p, (6, 6)), reference.warp_position(x, p, (6, 6)))


def test_bad_inputs_raise_clear_errors():
    x = torch.rand(2, 3, 6, 6)
    with pytest.raises(ValueError, match=r"params must have shape \(2, 3\)"):
        native.warp_position(x, torch.zeros(2, 4), (6, 6))
    with pytest.raises(TypeError, match="dtype"):
        native.warp_position(x.half(), torch.zeros(2, 3).half(), (6, 6))
    with pytest.raises(TypeError, match="share one dtype"):
        native.warp_position(x, torch.zeros(2, 3, dtype=torch.float64), (6, 6))
    with pytest.raises(ValueError, match="NaN"):
        native.warp_affine(x, torch.full((2, 6), float("nan")), (6, 6))
    with pytest.raises(ValueError, match="padding"):
        native.warp_affine(x, torch.zeros(2, 6), (6, 6), "reflect")
    with pytest.raises(ValueError, match="out_size"):
        native.warp_projective(x, torch.zeros(2, 9), (0, 6))
    with pytest.raises(ValueError, match="grid_size"):
        native.warp_tps(x, torch.zeros(2, 16, 2), (6, 6), grid_size=1)
    with pytest.raises(ValueError, match="4-D"):
        native.warp_tps(x[0], torch.zeros(2, 16, 2), (6, 6))


def test_cpp_checks_guard_direct_op_calls():
    x = torch.rand(2, 3, 6, 6)
    with pytest.raises(RuntimeError, match="theta must have shape"):
        torch.ops.dtifast.warp(x, torch.zeros(2, 5), None, None, 0, 4, 4, False)
    with pytest.raises(RuntimeError, match="wts must be given"):
        torch.ops.dtifast.warp(x, torch.zeros(2, 16, 2), None, None, 2, 4, 4, False)


def test_opcheck_warp_op():
    x = torch.rand(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    theta = reference.affine_matrix(torch.randn(2, 6, dtype=torch.float64) * 0.2).reshape(2, 6)
    theta = theta.detach().requires_grad_()
    torch.library.opcheck(torch.ops.dtifast.warp.default, (x, theta, None, None, 0, 4, 4, False))
    index = torch.tensor([1, 1, 0])
    theta3 = torch.cat([theta.detach(), theta.detach()[:1]]).requires_grad_()
    torch.library.opcheck(torch.ops.dtifast.warp.default, (x, theta3, None, index, 0, 4, 4, False))


# ---- shared inputs read through an index ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["position", "similarity", "affine", "projective", "tps"])
def test_index_reads_shared_inputs_like_a_gathered_copy(kind):
    g = torch.Generator().manual_seed(21)
    x = torch.rand(3, 2, 6, 5, generator=g, dtype=torch.float64)
    index = torch.tensor([2, 0, 2, 1, 2, 0])
    n_params = {"position": (3,), "similarity": (4,), "affine": (6,), "projective": (9,), "tps": (16, 2)}[kind]
    params = 0.2 * torch.randn(6, *n_params, generator=g, dtype=torch.float64)
    fn = getattr(native, f"warp_{kind}")
    ref_fn = getattr(reference, f"warp_{kind}")
    grad = torch.randn(6, 2, 7, 4, generator=g, dtype=torch.float64)
    xs, ps = x.clone().requires_grad_(), params.clone().requires_grad_()
    out = fn(xs, ps, (7, 4), index=index)
    out.backward(grad)
    xr, pr = x.clone().requires_grad_(), params.clone().requires_grad_()
    ref = ref_fn(xr[index], pr, (7, 4))          # the gathered copy, by autograd: the gradient sums per input
    ref.backward(grad)
    torch.testing.assert_close(out, ref, atol=1e-13, rtol=0)
    torch.testing.assert_close(xs.grad, xr.grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(ps.grad, pr.grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(ref_fn(x, params, (7, 4), index=index), ref, atol=0, rtol=0)


def test_index_backward_is_the_same_for_one_and_two_threads():
    x = torch.rand(4, 3, 20, 20, requires_grad=True)
    index = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(3))
    params = (0.2 * torch.randn(64, 4)).requires_grad_()
    grad = torch.randn(64, 3, 24, 24)
    assert_bitwise_equal(*run_per_thread_count(
        lambda: torch.autograd.grad(native.warp_similarity(x, params, (24, 24), index=index), (x, params), grad)))


def test_bad_index_is_rejected():
    x, params = torch.rand(3, 2, 5, 5), torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"index values must be in \[0, 3\)"):
        native.warp_position(x, params, (4, 4), index=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="index must have dtype in \\(int64\\)"):
        native.warp_position(x, params, (4, 4), index=torch.tensor([0, 1, 2, 2], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"index must have shape \(4\)"):
        native.warp_position(x, params, (4, 4), index=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"params must have shape \(3, 3\), got \(4, 3\)"):
        native.warp_position(x, params, (4, 4))
    with pytest.raises(RuntimeError, match=r"index values must be in \[0, 3\)"):
        torch.ops.dtifast.warp(x, torch.zeros(4, 6), None, torch.tensor([0, 1, 5, 2]), 0, 4, 4, False)
