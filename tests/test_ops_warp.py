"""The warp family (dtifast/ops/warp.py) on every backend: the op checklist (tests/checklist.py).

Values and gradients against the eager reference, exactly at the identity (where every transformation
head starts training, and where output pixels land exactly on input pixels), float64 gradcheck,
``index=``, non-contiguous and expanded inputs, an empty batch, bad input, the custom ops' contract, and
property-based tests over shapes, parameters (identity and extreme scales included), paddings and dtypes.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from checklist import DTYPES, assert_close, assert_matches_reference, backend_for, count_recorded_adds
from dtifast import ops
from dtifast.ops import reference
from thread_runs import assert_bitwise_equal, run_per_thread_count

KINDS = {"position": (3,), "similarity": (4,), "affine": (6,), "projective": (9,), "tps": (16, 2)}
PADDINGS = ("zeros", "border")


def _params(kind: str, n: int, dtype: torch.dtype, device, scale: float = 0.3, seed: int = 1) -> torch.Tensor:
    """Random raw parameters of a few tenths (mild perspective for homographies)."""
    g = torch.Generator().manual_seed(seed)
    p = scale * torch.randn(n, *KINDS[kind], generator=g, dtype=torch.float64)
    if kind == "projective":
        p[:, 6:8] *= 0.3
    if kind == "tps":
        p *= 0.3
    return p.to(device=device, dtype=dtype)


def _warp(kind: str, backend: str, **kw):
    fn = getattr(ops, f"warp_{kind}")
    return lambda x, p, *rest: fn(x, p, *rest, backend=backend, **kw)


def _reference(kind: str, **kw):
    fn = getattr(reference, f"warp_{kind}")
    return lambda x, p, *rest: fn(x, p, *rest, **kw)


def _check(kind, backend, x, p, out_size, padding, dtype, index=None, grad_scale=10.0):
    fn = _warp(kind, backend, index=index)
    ref = _reference(kind)
    gather = (lambda a: a) if index is None else (lambda a: a[index])  # the reference warps a gathered copy
    assert_matches_reference(lambda a, b: fn(a, b, out_size, padding),
                             lambda a, b: ref(gather(a), b, out_size, padding), [x, p], (0, 1), dtype, grad_scale,
                             ("x", "params"))


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference(kind, padding, dtype, backend, device):
    name = backend_for(backend, f"warp_{kind}", device)
    # Odd sprite-to-image sizes, as upstream's (24x24 sprites in 35x35 images), scaled down.
    x = torch.rand(3, 2, 9, 7, dtype=dtype, device=device)
    _check(kind, name, x, _params(kind, 3, dtype, device), (11, 13), padding, dtype)


# Sizes at which the identity samples land exactly on input pixels (checked below): the same size for
# similarity/affine (pixel centres map to pixel centres), twice an even sprite for position (scale 2),
# odd sizes for position, projective and TPS (the centre row/column lands on the centre pixel).
IDENTITY_SIZES = [((6, 8), (12, 16)), ((7, 9), (7, 9)), ((5, 5), (5, 5)), ((4, 6), (4, 6))]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("sizes", IDENTITY_SIZES, ids=lambda s: f"{s[0][0]}x{s[0][1]}to{s[1][0]}x{s[1][1]}")
def test_exact_at_the_identity(kind, padding, sizes, backend, device):
    # Zero parameters, float64: values and gradients must equal the reference's to rounding, which they do
    # only if the kernel takes every floor/clamp decision exactly as torch does.
    name = backend_for(backend, f"warp_{kind}", device)
    (h, w), out_size = sizes
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64).to(device)
    p = torch.zeros(2, *KINDS[kind], dtype=torch.float64, device=device)
    _check(kind, name, x, p, out_size, padding, torch.float64, grad_scale=1.0)


@pytest.mark.parametrize("kind", list(KINDS))
def test_gradcheck_float64(kind, backend, device):
    name = backend_for(backend, f"warp_{kind}", device)
    x = torch.rand(2, 2, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    p = _params(kind, 2, torch.float64, device, scale=0.2).requires_grad_()
    fn = getattr(ops, f"warp_{kind}")
    for padding in PADDINGS:
        assert torch.autograd.gradcheck(lambda a, b: fn(a, b, (4, 6), padding, backend=name), (x, p), eps=1e-6,
                                         atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("kind", list(KINDS))
def test_index_reads_shared_inputs_like_a_gathered_copy(kind, backend, device):
    name = backend_for(backend, f"warp_{kind}", device)
    x = torch.rand(3, 2, 6, 5, dtype=torch.float64, device=device)
    index = torch.tensor([2, 0, 2, 1, 2, 0], device=device)
    _check(kind, name, x, _params(kind, 6, torch.float64, device), (7, 4), "zeros", torch.float64, index=index)


def test_non_contiguous_and_expanded_inputs(backend, device):
    name = backend_for(backend, "warp_affine", device)
    x = torch.rand(3, 7, 9, 4, dtype=torch.float64, device=device).permute(0, 3, 1, 2)  # channels-last view
    p = (0.2 * torch.randn(3, 12, dtype=torch.float64, device=device))[:, ::2]           # strided columns
    assert not x.is_contiguous() and not p.is_contiguous()
    _check("affine", name, x, p, (6, 6), "zeros", torch.float64)
    shared = torch.rand(1, 2, 7, 7, dtype=torch.float64, device=device).expand(4, -1, -1, -1)  # stride 0
    _check("position", name, shared, _params("position", 4, torch.float64, device), (8, 8), "border", torch.float64)


@pytest.mark.parametrize("kind", list(KINDS))
def test_empty_batch(kind, backend, device):
    name = backend_for(backend, f"warp_{kind}", device)
    x = torch.rand(0, 3, 5, 5, device=device, requires_grad=True)
    p = torch.zeros(0, *KINDS[kind], device=device, requires_grad=True)
    out = getattr(ops, f"warp_{kind}")(x, p, (4, 6), backend=name)
    assert out.shape == (0, 3, 4, 6)
    dx, dp = torch.autograd.grad(out.sum(), (x, p), allow_unused=True)
    assert dx is None or dx.shape == x.shape
    assert dp is None or dp.shape == p.shape


def test_warp_theta_is_the_transform_the_param_warps_build(backend, device):
    name = backend_for(backend, "warp_theta", device)
    x = torch.rand(2, 3, 6, 7, dtype=torch.float64, device=device)
    p = _params("similarity", 2, torch.float64, device)
    theta = ops.similarity_matrix(p)
    out = ops.warp_theta(x, theta, (5, 8), "border", backend=name)
    assert_close(out, reference.warp_similarity(x, p, (5, 8), "border"), torch.float64, "affine")
    h = ops.projective_matrix(_params("projective", 2, torch.float64, device))
    assert_close(ops.warp_theta(x, h.view(2, 9), (6, 7), kind="projective", backend=name),
                 reference.warp_theta(x, h, (6, 7), "zeros", "projective"), torch.float64, "projective")


def test_position_identity_covers_the_central_half(backend, device):
    # Zero parameters: scale 2, so a sprite of ones covers the central half of the output in each direction.
    name = backend_for(backend, "warp_position", device)
    out = ops.warp_position(torch.ones(1, 1, 4, 4, device=device), torch.zeros(1, 3, device=device), (8, 8),
                            backend=name)
    assert out[0, 0, 2:6, 2:6].eq(1).all() and out[0, 0, :2].eq(0).all() and out[0, 0, :, 6:].eq(0).all()


def test_large_scales_translations_and_rotations(backend, device):
    name = backend_for(backend, "warp_position", device)
    p = torch.tensor([[6.0, 3.0, -2.0], [-9.0, 0.1, 0.2], [0.0, 40.0, 0.0]], dtype=torch.float64, device=device)
    for padding in PADDINGS:
        _check("position", name, torch.rand(3, 2, 6, 6, dtype=torch.float64, device=device), p, (11, 11), padding,
               torch.float64)
    rotation = torch.tensor([[math.cos(2.0) - 1, math.sin(2.0), 0.1, -0.2]], dtype=torch.float64, device=device)
    _check("similarity", name, torch.rand(1, 2, 8, 8, dtype=torch.float64, device=device), rotation, (8, 8),
           "zeros", torch.float64)


@pytest.mark.parametrize("padding", PADDINGS)
def test_near_degenerate_homographies(padding, backend, device):
    # w = x + ε crosses zero inside the image: at the central column |w| <= 1e-8 (not divided), and next
    # to it the locations explode.
    name = backend_for(backend, "warp_projective", device)
    p = torch.zeros(3, 9, dtype=torch.float64)
    p[:, 6], p[:, 8] = 1.0, -1.0
    p[0, 8] -= 3e-9
    p[1, 8] += 1e-9
    p[2, 8] += 1e-3
    p[2, 0] = 0.5
    x = torch.rand(3, 2, 9, 9, dtype=torch.float64, device=device)
    _check("projective", name, x, p.to(device), (9, 9), padding, torch.float64)


def test_homography_with_w_zero_everywhere_is_not_divided(backend, device):
    name = backend_for(backend, "warp_projective", device)
    p = torch.zeros(1, 9, dtype=torch.float64, device=device)
    p[0, 8] = -1.0
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64, device=device)
    out = ops.warp_projective(x, p, (6, 6), backend=name)
    assert_close(out, reference.warp_projective(x, p, (6, 6)), torch.float64, "w = 0")


def test_low_precision_on_triton(device):
    name = backend_for("triton", "warp_similarity", device)
    for dtype in (torch.bfloat16, torch.float16):
        x = torch.rand(2, 3, 8, 8, device=device).to(dtype)
        _check("similarity", name, x, _params("similarity", 2, dtype, device), (9, 7), "border", dtype)


def test_bad_input(backend, device):
    name = backend_for(backend, "warp_position", device)
    x = torch.rand(2, 2, 5, 5, device=device)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        ops.warp_position([1.0], torch.zeros(2, 3), (4, 4), backend=name)
    with pytest.raises(ValueError, match=r"params must have shape \(2, 3\)"):
        ops.warp_position(x, torch.zeros(2, 4, device=device), (4, 4), backend=name)
    with pytest.raises(ValueError, match="padding must be one of"):
        ops.warp_position(x, torch.zeros(2, 3, device=device), (4, 4), "reflection", backend=name)
    with pytest.raises(ValueError, match="out_size must be a pair of positive ints"):
        ops.warp_affine(x, torch.zeros(2, 6, device=device), (0, 4), backend=name)
    with pytest.raises(TypeError, match="all inputs must share one dtype"):
        ops.warp_projective(x, torch.zeros(2, 9, dtype=torch.float64, device=device), (4, 4), backend=name)
    with pytest.raises(ValueError, match="4-D"):
        ops.warp_tps(x[0], torch.zeros(2, 16, 2, device=device), (4, 4), backend=name)
    with pytest.raises(ValueError, match="grid_size must be an int >= 2"):
        ops.warp_tps(x, torch.zeros(2, 1, 2, device=device), (4, 4), grid_size=1, backend=name)
    with pytest.raises(TypeError, match="index must have dtype"):
        ops.warp_position(x, torch.zeros(3, 3, device=device), (4, 4), index=torch.tensor([0.0, 1.0, 1.0]),
                          backend=name)
    with pytest.raises(ValueError, match=r"index must have shape \(3\)"):
        ops.warp_position(x, torch.zeros(3, 3, device=device), (4, 4), index=torch.tensor([0, 1], device=device),
                          backend=name)
    with pytest.raises(ValueError, match="kind must be one of"):
        ops.warp_theta(x, torch.zeros(2, 2, 3, device=device), (4, 4), kind="similarity", backend=name)
    with pytest.raises(ValueError, match=r"theta must have shape \(2, 3, 3\)"):
        ops.warp_theta(x, torch.zeros(2, 2, 3, device=device), (4, 4), kind="projective", backend=name)
    # Value checks read the data (a device sync): only when asked for.
    nan = torch.full((2, 4), float("nan"), device=device)
    ops.warp_similarity(x, nan, (4, 4), backend=name)
    with ops.value_checks():
        with pytest.raises(ValueError, match="params contains NaN or inf"):
            ops.warp_similarity(x, nan, (4, 4), backend=name)
        with pytest.raises(ValueError, match=r"index values must be in \[0, 2\)"):
            ops.warp_position(x, torch.zeros(3, 3, device=device), (4, 4), index=torch.tensor([0, 2, 1], device=device),
                              backend=name)


def test_native_results_do_not_depend_on_the_thread_count():
    x = torch.rand(4, 3, 20, 20, requires_grad=True)
    index = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(3))
    params = (0.2 * torch.randn(64, 4)).requires_grad_()
    grad = torch.randn(64, 3, 24, 24)
    assert_bitwise_equal(*run_per_thread_count(lambda: torch.autograd.grad(
        ops.warp_similarity(x, params, (24, 24), index=index, backend="cpu"), (x, params), grad)))


def test_cpp_checks_guard_direct_op_calls():
    x = torch.rand(2, 3, 6, 6)
    basis = ops.geometry.affine_basis((4, 4), torch.float32, x.device)
    with pytest.raises(RuntimeError, match="theta must have shape"):
        torch.ops.dtifast.warp_theta(x, torch.zeros(2, 5), basis, None, 0, 4, 4, False)
    with pytest.raises(RuntimeError, match="basis must have shape"):
        torch.ops.dtifast.warp_theta(x, torch.zeros(2, 6), basis[:5], None, 0, 4, 4, False)
    with pytest.raises(RuntimeError, match=r"index values must be in \[0, 2\)"):
        torch.ops.dtifast.warp_theta(x, torch.zeros(3, 6), basis, torch.tensor([0, 1, 5]), 0, 4, 4, False)


# ---- property-based: any shape, parameters from the identity to extreme scales, both paddings ------------

@st.composite
def warp_cases(draw):
    kind = draw(st.sampled_from(list(KINDS)))
    n = draw(st.integers(0, 3))
    c = draw(st.integers(1, 3))
    h, w, H, W = (draw(st.integers(1, 7)) for _ in range(4))
    regime = draw(st.sampled_from(["identity", "small", "large"]))
    scale = {"identity": 0.0, "small": 0.3, "large": 3.0}[regime]
    if kind == "projective" and regime == "large":
        scale = 0.8  # large homographies flip w's sign inside the image: still finite, still compared
    seed = draw(st.integers(0, 2**16))
    return kind, n, c, (h, w), (H, W), scale, seed, draw(st.sampled_from(PADDINGS)), draw(st.sampled_from(DTYPES))


@pytest.mark.parametrize("fused", ["native", "triton"])
@settings(max_examples=25)
@given(case=warp_cases())
def test_property_fused_warps_match_the_reference(fused, case, device):
    kind, n, c, (h, w), out_size, scale, seed, padding, dtype = case
    name = backend_for(fused, f"warp_{kind}", device)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    p = _params(kind, n, dtype, device, scale=scale, seed=seed)
    _check(kind, name, x, p, out_size, padding, dtype, grad_scale=50.0 if dtype == torch.float32 else 10.0)


@pytest.mark.parametrize("kind", ["position", "tps"])
def test_deterministic_mode_records_and_matches_the_reference(kind, backend, device, deterministic_algorithms,
                                                             monkeypatch):
    # Under torch.use_deterministic_algorithms(True) the Triton backward records each bilinear corner and
    # adds them with index_add_ (no float atomics); the result is still the reference's.
    name = backend_for(backend, f"warp_{kind}", device)
    calls = count_recorded_adds(monkeypatch, "warp") if name == "triton" else None
    x = torch.rand(3, 2, 6, 5, dtype=torch.float64, device=device)
    index = torch.tensor([2, 0, 2, 1], device=device)
    _check(kind, name, x, _params(kind, 4, torch.float64, device), (7, 9), "border", torch.float64, index=index)
    assert calls is None or calls, "the deterministic path was not taken"
