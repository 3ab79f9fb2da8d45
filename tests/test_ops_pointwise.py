"""The pointwise family (dtifast/ops/pointwise.py: softclip, colour transform) on every backend: the op
checklist (tests/checklist.py) and property-based tests."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from checklist import DTYPES, assert_close, assert_matches_reference, backend_for
from dtifast import ops
from dtifast.ops import reference
from thread_runs import assert_bitwise_equal, run_per_thread_count


def _softclip_input(n: int, dtype, device, seed: int = 0) -> torch.Tensor:
    """Values across [-1, 2], with the exact breakpoints 0 and 1 (where the subgradient is 1 + slope/2)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g, dtype=torch.float64) * 3 - 1
    x[:4] = torch.tensor([0.0, 1.0, -0.5, 1.5], dtype=torch.float64)[: min(4, n)]
    return x.to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softclip_matches_reference(dtype, backend, device):
    name = backend_for(backend, "softclip", device)
    x = _softclip_input(300, dtype, device).view(3, 10, 10)
    assert_matches_reference(lambda a: ops.softclip(a, 0.05, backend=name), lambda a: reference.softclip(a, 0.05),
                             [x], (0,), dtype, names=("x",))


def test_softclip_known_answer_and_subgradient(backend, device):
    name = backend_for(backend, "softclip", device)
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64, device=device, requires_grad=True)
    y = ops.softclip(x, 0.01, backend=name)
    assert_close(y, torch.tensor([-0.01, 0.0, 0.5, 1.0, 1.01], dtype=torch.float64, device=device),
                 torch.float64, "softclip")
    (g,) = torch.autograd.grad(y.sum(), x)
    assert_close(g, torch.tensor([0.01, 1.005, 1.0, 1.005, 0.01], dtype=torch.float64, device=device),
                 torch.float64, "subgradient")


@pytest.mark.parametrize("n_extra", [0, 1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_color_transform_matches_reference(n_extra, dtype, backend, device):
    name = backend_for(backend, "color_transform", device)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3 + n_extra, 5, 6, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    p = (0.4 * torch.randn(4, 6, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)
    assert_matches_reference(lambda a, b: ops.color_transform(a, b, backend=name), reference.color_transform, [x, p],
                             (0, 1), dtype, names=("x", "params"))


def test_color_transform_expands_grayscale(backend, device):
    name = backend_for(backend, "color_transform", device)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64, device=device)
    p = 0.3 * torch.randn(2, 6, dtype=torch.float64, device=device)
    assert_matches_reference(lambda a, b: ops.color_transform(a, b, backend=name), reference.color_transform, [x, p],
                             (0, 1), torch.float64, names=("x", "params"))


def test_gradcheck_float64(backend, device):
    name = backend_for(backend, "color_transform", device)
    x = torch.rand(2, 4, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    p = (0.2 * torch.randn(2, 6, dtype=torch.float64, device=device)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.color_transform(a, b, backend=name), (x, p))
    s = (torch.rand(7, dtype=torch.float64, device=device) * 1.4 - 0.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: ops.softclip(a, backend=name), (s,))


def test_non_contiguous_and_expanded_inputs(backend, device):
    name = backend_for(backend, "color_transform", device)
    x = torch.rand(3, 6, 7, 5, dtype=torch.float64, device=device).permute(0, 3, 1, 2)[:, ::1]  # (3, 5, 6, 7)
    p = (0.3 * torch.randn(3, 12, dtype=torch.float64, device=device))[:, ::2]
    assert not x.is_contiguous() and not p.is_contiguous()
    assert_matches_reference(lambda a, b: ops.color_transform(a, b, backend=name), reference.color_transform, [x, p],
                             (0, 1), torch.float64, names=("x", "params"))
    shared = torch.rand(1, 4, 3, 3, dtype=torch.float64, device=device).expand(5, -1, -1, -1)
    assert_matches_reference(lambda a: ops.softclip(a * 2 - 0.5, backend=name),
                             lambda a: reference.softclip(a * 2 - 0.5), [shared], (0,), torch.float64)


def test_empty_batch(backend, device):
    name = backend_for(backend, "color_transform", device)
    x = torch.rand(0, 4, 3, 3, device=device, requires_grad=True)
    p = torch.zeros(0, 6, device=device, requires_grad=True)
    out = ops.color_transform(x, p, backend=name)
    assert out.shape == x.shape
    dx, dp = torch.autograd.grad(out.sum(), (x, p), allow_unused=True)
    assert (dx is None or dx.shape == x.shape) and (dp is None or dp.shape == p.shape)
    assert ops.softclip(torch.zeros(0, device=device), backend=name).shape == (0,)


def test_bad_input(backend, device):
    name = backend_for(backend, "color_transform", device)
    x = torch.rand(2, 4, 3, 3, device=device)
    with pytest.raises(ValueError, match="interleaved"):
        ops.color_transform(x, torch.zeros(2, 5, device=device), backend=name)
    with pytest.raises(ValueError, match=r"params must have shape \(2, 6\)"):
        ops.color_transform(x, torch.zeros(3, 6, device=device), backend=name)
    with pytest.raises(ValueError, match="at least 3 colour channels"):
        ops.color_transform(x[:, :2], torch.zeros(2, 6, device=device), backend=name)
    with pytest.raises(TypeError, match="share one dtype"):
        ops.color_transform(x, torch.zeros(2, 6, dtype=torch.float64, device=device), backend=name)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.softclip([0.5], backend=name)
    with pytest.raises(TypeError, match="dtype"):
        ops.softclip(torch.zeros(3, dtype=torch.long, device=device), backend=name)
    with ops.value_checks():
        with pytest.raises(ValueError, match="params contains NaN or inf"):
            ops.color_transform(x, torch.full((2, 6), float("inf"), device=device), backend=name)


def test_native_rejects_half_precision_and_says_what_to_use():
    with pytest.raises(TypeError, match="backend 'cpu' runs softclip on .*use backend='torch'"):
        ops.softclip(torch.zeros(3, dtype=torch.bfloat16), backend="cpu")


def test_native_results_do_not_depend_on_the_thread_count():
    x = torch.rand(6, 5, 33, 31, requires_grad=True)
    p = (0.3 * torch.randn(6, 6)).requires_grad_()
    grad = torch.randn(6, 5, 33, 31)
    assert_bitwise_equal(*run_per_thread_count(lambda: torch.autograd.grad(
        ops.color_transform(x, p, backend="cpu"), (x, p), grad)))


@pytest.mark.parametrize("fused", ["native", "triton"])
@settings(max_examples=25)
@given(n=st.integers(0, 4), extra=st.integers(0, 2), hw=st.tuples(st.integers(1, 6), st.integers(1, 6)),
       scale=st.sampled_from([0.0, 0.3, 5.0]), slope=st.sampled_from([0.0, 0.01, 0.5]),
       dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_property_color_transform_matches_the_reference(fused, n, extra, hw, scale, slope, dtype, seed, device):
    name = backend_for(fused, "color_transform", device)
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 3 + extra, *hw, generator=g, dtype=torch.float64) * 1.6 - 0.3).to(device=device, dtype=dtype)
    p = (scale * torch.randn(n, 6, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)
    assert_matches_reference(lambda a, b: ops.color_transform(a, b, slope, backend=name),
                             lambda a, b: reference.color_transform(a, b, slope), [x, p], (0, 1), dtype,
                             names=("x", "params"))
