"""The CPU kernels' vector paths (csrc/warp_simd.h, csrc/composite_simd.h, built per instruction set)
against the scalar one.

``torch.ops.dtifast.set_cpu_capability`` forces a path (``DTIFAST_CPU_CAPABILITY`` at start-up); every
vector path must give the scalar path's values and gradients (the warps' bit for bit, the others' within
float rounding), and bit-identical results on 1 and 2 threads:

* warps: every kind, padding, with and without ``index=``, at output widths that leave a partial vector
  (1, 7, 13, 17) or span several row chunks (70); input and transform gradients; channel counts that
  fill each width of the input gradient's channel packs (4, 8, 16) partly or wholly, and several packs;
  transforms that send whole vectors of output pixels outside the input (which the vector kernels skip);
* compositing (``composite_layers``, ``composite_candidates``, ``candidate_distances``): with and without
  backgrounds, at pixel counts that leave a partial vector or span several work chunks of 2048 pixels;
  every input's gradient;
* the render loss: with and without mask noise and background, sprites partly outside the image, at the
  warps' output widths; the loss and every input's gradient;
* the colour transform (bit for bit): planes of 1 to 333 pixels (less than a vector, partial vectors at the
  end), values in every region of the softclip and exactly at its kinks; the output and the gradients of
  the input and the parameters.

A path this CPU cannot run is skipped with the missing instruction sets named.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import dtifast._C  # noqa: F401  (registers torch.ops.dtifast.*)
from checklist import DTYPES, assert_close
from dtifast import ops
from thread_runs import assert_bitwise_equal, run_per_thread_count

OPS = torch.ops.dtifast
# Each kind's op, raw-parameter shape and keywords; TPS on 3 x 3 control points too (9: a partial vector).
KINDS = {
    "position": ("warp_position", (3,), {}),
    "similarity": ("warp_similarity", (4,), {}),
    "affine": ("warp_affine", (6,), {}),
    "projective": ("warp_projective", (9,), {}),
    "tps": ("warp_tps", (16, 2), {}),
    "tps3": ("warp_tps", (9, 2), {"grid_size": 3}),
}
PADDINGS = ("zeros", "border")
# Output (8, width) from 9 x 11 inputs: width 1 reads the input through gathers (99 input pixels, more than
# warp_simd.h kPackedInputRatio = 4 times the 8 output pixels), the others from channel packs.
WIDTHS = (1, 7, 13, 17, 70)
# The instruction sets each vector path needs (csrc/cpu_capability.cpp), as /proc/cpuinfo names them.
NEEDS = {"avx2": {"avx2", "fma"}, "avx512": {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}}


def _cpu_flags() -> set[str]:
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def _vector_path(name: str):
    missing = sorted(NEEDS[name] - _cpu_flags())
    return pytest.param(name, marks=pytest.mark.skipif(
        bool(missing), reason=f"this CPU lacks {', '.join(missing)}: the {name} path cannot run here"))


VECTOR_PATHS = [_vector_path(name) for name in NEEDS]


@contextlib.contextmanager
def cpu_capability(name: str):
    before = OPS.cpu_capability()
    OPS.set_cpu_capability(name)
    try:
        yield
    finally:
        OPS.set_cpu_capability(before)


def _inputs(kind: str, width: int, dtype: torch.dtype, indexed: bool, channels: int = 5):
    """Sprites, raw parameters (output 0 at the identity, where output pixels land exactly on input
    pixels) and an optional index, seeded. The index leaves input 3 without outputs: its gradient is zero."""
    g = torch.Generator().manual_seed(width)
    n, k = 6, 4 if indexed else 6
    x = torch.rand(k, channels, 9, 11, generator=g, dtype=torch.float64)
    params = 0.3 * torch.randn(n, *KINDS[kind][1], generator=g, dtype=torch.float64)
    params[0] = 0
    index = torch.tensor([2, 0, 2, 1, 0, 2]) if indexed else None
    return x.to(dtype), params.to(dtype), index


def _warp_with_grads(kind: str, padding: str, width: int, dtype: torch.dtype, indexed: bool, channels: int = 5):
    """Output and the gradients of the input and the raw parameters under a seeded output gradient."""
    x, params, index = _inputs(kind, width, dtype, indexed, channels)
    x.requires_grad_()
    params.requires_grad_()
    op, _, keywords = KINDS[kind]
    out = getattr(ops, op)(x, params, (8, width), padding, index=index, backend="cpu", **keywords)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    dx, dparams = torch.autograd.grad(out, (x, params), cotangent.to(dtype))
    return out.detach(), dx, dparams


def _assert_scalar_bits(actual, expected, name: str) -> None:
    """A warp's vector results are the scalar path's bit for bit: the same coordinates (so the same taps, even
    where a sample lands exactly on a pixel and one ulp moves the floor) and the same summation orders."""
    for what, a, e in zip(("output", "input gradient", "parameter gradient"), actual, expected):
        assert torch.equal(a, e), f"{name} {what} differs from the scalar path by up to {(a - e).abs().max():.3g}"


def test_capability_is_reported_and_forced():
    with cpu_capability("scalar"):
        assert OPS.cpu_capability() == "scalar"
    for name, needs in NEEDS.items():
        if needs <= _cpu_flags():
            with cpu_capability(name):
                assert OPS.cpu_capability() == name


def test_unknown_capability_raises():
    with pytest.raises(RuntimeError, match="unknown CPU capability 'sse9'"):
        OPS.set_cpu_capability("sse9")


@pytest.mark.parametrize("name", ["scalar"] + VECTOR_PATHS)
def test_environment_variable_forces_the_path(name):
    code = "import torch, dtifast._C; print(torch.ops.dtifast.cpu_capability())"
    env = {**os.environ, "DTIFAST_CPU_CAPABILITY": name}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == name


def test_bad_environment_variable_raises_at_first_use():
    code = "import torch, dtifast._C; torch.ops.dtifast.cpu_capability()"
    env = {**os.environ, "DTIFAST_CPU_CAPABILITY": "sse9"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "unknown CPU capability 'sse9'" in result.stderr


@pytest.mark.parametrize("name", VECTOR_PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("indexed", [False, True])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_vector_path_matches_scalar(kind, padding, indexed, width, dtype, name):
    with cpu_capability("scalar"):
        expected = _warp_with_grads(kind, padding, width, dtype, indexed)
    with cpu_capability(name):
        actual = _warp_with_grads(kind, padding, width, dtype, indexed)
    _assert_scalar_bits(actual, expected, name)


# The input gradient is summed in packs of 4, 8 or 16 channels (warp_simd.h): counts below, at and above each
# width, and 21 = 16 + 5, a full pack and a partial one.
@pytest.mark.parametrize("name", VECTOR_PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", (1, 4, 6, 8, 9, 16, 21))
@pytest.mark.parametrize("kind", ["affine", "tps"])
def test_vector_path_matches_scalar_for_channel_counts(kind, channels, dtype, name):
    with cpu_capability("scalar"):
        expected = _warp_with_grads(kind, "zeros", 13, dtype, True, channels)
    with cpu_capability(name):
        actual = _warp_with_grads(kind, "zeros", 13, dtype, True, channels)
    _assert_scalar_bits(actual, expected, name)


@pytest.mark.parametrize("name", VECTOR_PATHS)
def test_tps_basis_changed_in_place_is_transposed_again(name):
    # The vector path keeps the transposed bases of recent calls (warp.cpp TransposedBases): a basis changed
    # in place, or another basis, must not be served the old transpose.
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 6, 7, generator=g)
    control = ops.geometry.tps_control_points(4, torch.float32)
    theta = control.expand(2, 16, 2) + 0.1 * torch.randn(2, 16, 2, generator=g)
    basis = ops.geometry.tps_weights(4, (5, 6), torch.float32, torch.device("cpu")).clone()
    other = basis.flip(0).contiguous()

    def run(b):
        out = OPS.warp_theta(x, theta, b, None, 2, 5, 6, False)
        dx, dtheta = OPS.warp_theta_backward(torch.ones_like(out), x, theta, b, None, 2, 5, 6, False, True, True)
        return out, dx, dtheta

    with cpu_capability(name):
        first = run(basis)
        basis.mul_(0.5)
        changed, swapped = run(basis), run(other)
    with cpu_capability("scalar"):
        expected_changed, expected_swapped = run(basis), run(other)
    assert not torch.equal(first[0], changed[0])
    _assert_scalar_bits(changed, expected_changed, name)
    _assert_scalar_bits(swapped, expected_swapped, name)


@pytest.mark.parametrize("name", VECTOR_PATHS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_vector_path_is_thread_count_independent(kind, name):
    def run():
        with cpu_capability(name):
            return _warp_with_grads(kind, "zeros", 70, torch.float32, indexed=True)

    one, two = run_per_thread_count(run, (1, 2))
    assert_bitwise_equal(one, two)


# Image sizes (H, W) of the compositing tests: partial vectors (1, 7, 13, 17 pixels) and several 2048-pixel
# work chunks with a partial one at the end (47 x 90 = 4230).
PIXELS = ((1, 1), (1, 7), (1, 13), (1, 17), (47, 90))


def _composite_inputs(H: int, W: int, dtype: torch.dtype, background: bool, M: int = 0):
    """Layers, masks (some exactly 1), occlusion and a background (or M backgrounds), seeded."""
    g = torch.Generator().manual_seed(H * W)
    L, B, C = 3, 2, 3
    layers = torch.rand(L, B, C, H, W, generator=g, dtype=torch.float64)
    masks = torch.rand(L, B, 1, H, W, generator=g, dtype=torch.float64)
    masks[masks > 0.8] = 1.0
    occ = torch.rand(L, L, B, generator=g, dtype=torch.float64)
    shape = (M, B, C, H, W) if M else (B, C, H, W)
    bg = torch.rand(*shape, generator=g, dtype=torch.float64) if background else None
    return [None if t is None else t.to(dtype).requires_grad_() for t in (layers, masks, occ, bg)]


def _with_grads(fn, inputs):
    """Output and the gradient of every input (None for an absent one) under a seeded output gradient."""
    out = fn(*inputs)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    present = [t for t in inputs if t is not None]
    grads = iter(torch.autograd.grad(out, present, cotangent.to(out.dtype)))
    return [out.detach()] + [None if t is None else next(grads) for t in inputs]


def _composite_layers(H, W, dtype, background):
    inputs = _composite_inputs(H, W, dtype, background)
    return _with_grads(lambda *a: ops.composite_layers(*a, backend="cpu"), inputs)


def _composite_candidates(H, W, dtype, M):
    layers, masks, _, bgs = _composite_inputs(H, W, dtype, M > 0, M)
    return _with_grads(lambda *a: ops.composite_candidates(*a, backend="cpu"), [layers, masks, bgs])


def _candidate_distances(H, W, dtype, M):
    layers, masks, _, bgs = _composite_inputs(H, W, dtype, M > 0, M)
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = x.to(dtype).requires_grad_()
    return _with_grads(lambda *a: ops.candidate_distances(*a, backend="cpu"), [x, layers, masks, bgs])


COMPOSITES = {
    "distances": lambda H, W, dtype: _candidate_distances(H, W, dtype, 2),
    "distances-black": lambda H, W, dtype: _candidate_distances(H, W, dtype, 0),
    "layers": lambda H, W, dtype: _composite_layers(H, W, dtype, True),
    "layers-no-background": lambda H, W, dtype: _composite_layers(H, W, dtype, False),
    "candidates": lambda H, W, dtype: _composite_candidates(H, W, dtype, 2),
    "candidates-black": lambda H, W, dtype: _composite_candidates(H, W, dtype, 0),
}


@pytest.mark.parametrize("name", VECTOR_PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", PIXELS, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("op", list(COMPOSITES))
def test_composite_vector_path_matches_scalar(op, size, dtype, name):
    with cpu_capability("scalar"):
        expected = COMPOSITES[op](*size, dtype)
    with cpu_capability(name):
        actual = COMPOSITES[op](*size, dtype)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert (a is None) == (e is None)
        if e is not None:
            assert_close(a, e, dtype, f"{name} {op} {'output' if i == 0 else f'gradient of input {i - 1}'}",
                         scale=0.1)


@pytest.mark.parametrize("name", VECTOR_PATHS)
@pytest.mark.parametrize("op", list(COMPOSITES))
def test_composite_vector_path_is_thread_count_independent(op, name):
    def run():
        with cpu_capability(name):
            return COMPOSITES[op](47, 90, torch.float32)

    one, two = run_per_thread_count(run, (1, 2))
    assert_bitwise_equal(one, two)


def _render_loss(width: int, dtype: torch.dtype, noise: bool, background: bool):
    """Render loss and the gradient of every input; layer 0 of image 0 is a small sprite, the others are
    shifted partly out of the (9, width) image."""
    g = torch.Generator().manual_seed(width)
    L, B, C, H, h, w = 3, 2, 3, 9, 6, 5
    sprites = torch.rand(L, B, C + 1 + noise, h, w, generator=g, dtype=torch.float64)
    sprites[:, :, C][sprites[:, :, C] > 0.6] = 1.0
    params = 0.6 * torch.randn(L, B, 3, generator=g, dtype=torch.float64)
    params[0, 0] = torch.tensor([2.0, 0.3, -0.2])
    occ = torch.rand(L, L, B, generator=g, dtype=torch.float64)
    bg = torch.rand(B, C, H, width, generator=g, dtype=torch.float64) if background else None
    nz = 0.4 * (2 * torch.rand(L, B, 1, H, width, generator=g, dtype=torch.float64) - 1) if noise else None
    x = torch.rand(B, C, H, width, generator=g, dtype=torch.float64)
    inputs = [None if t is None else t.to(dtype).requires_grad_() for t in (x, sprites, params, occ, bg, nz)]
    loss = ops.render_loss(*inputs, backend="cpu")
    present = [t for t in inputs if t is not None]
    grads = iter(torch.autograd.grad(loss, present))
    return [loss.detach()] + [None if t is None else next(grads) for t in inputs]


@pytest.mark.parametrize("name", VECTOR_PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("noise,background", [(True, True), (False, True), (True, False), (False, False)])
def test_render_loss_vector_path_matches_scalar(noise, background, width, dtype, name):
    with cpu_capability("scalar"):
        expected = _render_loss(width, dtype, noise, background)
    with cpu_capability(name):
        actual = _render_loss(width, dtype, noise, background)
    names = ("loss", "x", "sprites", "params", "occlusion", "background", "noise")
    for what, a, e in zip(names, actual, expected):
        assert (a is None) == (e is None)
        if e is not None:
            assert_close(a, e, dtype, f"{name} render loss: {what}", scale=0.1)


@pytest.mark.parametrize("name", VECTOR_PATHS)
def test_render_loss_vector_path_is_thread_count_independent(name):
    def run():
        with cpu_capability(name):
            return _render_loss(70, torch.float32, True, True)

    one, two = run_per_thread_count(run, (1, 2))
    assert_bitwise_equal(one, two)


# Plane sizes (h, w) of the colour transform: 1 and 15 pixels (less than a vector), 17 (a partial vector after
# a whole one), 256 (whole vectors) and 333 (a partial vector at the end).
COLOR_PLANES = ((1, 1), (3, 5), (1, 17), (16, 16), (9, 37))


def _color_transform(h: int, w: int, dtype: torch.dtype, n_images: int = 4):
    """Output and the gradients of x and the parameters of a colour transform with 3 colour channels and 2
    extra ones; x in [-0.5, 1.5] (every softclip region) with some values exactly 0 and 1 (its kinks)."""
    g = torch.Generator().manual_seed(h * 100 + w)
    x = 2 * torch.rand(n_images, 5, h, w, generator=g, dtype=torch.float64) - 0.5
    x.view(-1)[::7] = 0.0
    x.view(-1)[3::11] = 1.0
    params = 0.2 * torch.randn(n_images, 6, generator=g, dtype=torch.float64)
    params[0] = 0  # gain 1, bias 0: the kinks stay exactly at 0 and 1
    x, params = x.to(dtype).requires_grad_(), params.to(dtype).requires_grad_()
    out = ops.color_transform(x, params, backend="cpu")
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    dx, dparams = torch.autograd.grad(out, (x, params), cotangent.to(dtype))
    return out.detach(), dx, dparams


@pytest.mark.parametrize("name", VECTOR_PATHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("plane", COLOR_PLANES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_color_transform_vector_path_matches_scalar(plane, dtype, name):
    with cpu_capability("scalar"):
        expected = _color_transform(*plane, dtype)
    with cpu_capability(name):
        actual = _color_transform(*plane, dtype)
    for what, a, e in zip(("output", "input gradient", "parameter gradient"), actual, expected):
        assert torch.equal(a, e), f"{name} colour transform {what} differs from the scalar path by up to " \
                                  f"{(a - e).abs().max():.3g}"


@pytest.mark.parametrize("name", ["scalar"] + VECTOR_PATHS)
def test_color_transform_is_thread_count_independent(name):
    # 120 planes of 333 pixels: color.cpp hands out 49 planes per work item, so both threads get planes.
    def run():
        with cpu_capability(name):
            return _color_transform(9, 37, torch.float32, n_images=24)

    one, two = run_per_thread_count(run, (1, 2))
    assert_bitwise_equal(one, two)

