"""The CUDA kernels of dtifast._C (the ``cuda`` backend) on a GPU, beyond the op checklist that
tests/test_ops_*.py run on every backend with ``--device cuda``:

* values and gradients against the eager reference for every layer bound the kernels are compiled for
  (the per-thread arrays are sized by the smallest of 1 or 2, 4, 8, 16 that holds L);
* empty batches (nothing is launched; empty or zero results, a loss of 0);
* batches above 65 535, the limit of grid y and z (candidate compositing, the render loss, greedy scoring);
* determinism: under ``torch.use_deterministic_algorithms(True)`` two backward passes give the same bits and
  still match the reference, including the chunked deterministic scatter (more than 2^20 samples); the
  parameter gradients (theta, occlusion) are deterministic in the default mode too;
* no device-to-host synchronisation in forward or backward (``torch.cuda.set_sync_debug_mode("error")``).

Run by the GPU script with ``--device cuda``; skipped on CPU-only machines and where the extension was
built without CUDA. The kernels also compile with nvcc alone in tests/test_cuda_sources.py.
"""
import pytest
import torch

from dtifast import ops
from dtifast.bench.compile import deterministic_algorithms
from dtifast.ops import reference
from dtifast.ops._checks import value_checks

pytestmark = pytest.mark.gpu  # run by benchmarks/gpu_check.sh (-m "not slow"); left out of the CPU suite

TOL = {torch.float32: 2e-5, torch.float64: 1e-10}
LAYER_COUNTS = (1, 2, 3, 5, 9, 16)  # every layer bound: 1 (2 for the render loss), 2, 4, 8, 16


@pytest.fixture
def cuda(device):
    if device.type != "cuda":
        pytest.skip("CUDA kernels are tested with --device cuda on a GPU machine")
    import dtifast._C  # noqa: F401
    if not torch._C._dispatch_has_kernel_for_dispatch_key("dtifast::composite_layers", "CUDA"):
        pytest.skip("dtifast._C was built without its CUDA kernels")
    return device


def _rand(*shape, device, dtype, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device, dtype)


def _run(fn, inputs, seed=0):
    """fn's output and the gradients of its tensor inputs for a seeded random output gradient."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t
              for t in inputs]
    out = fn(*leaves)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    wanted = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(out, wanted, cotangent.to(out), allow_unused=True)
    return out.detach(), [None if g is None else g.detach() for g in grads]


def _close(actual, expected, dtype, what, scale=1.0):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    magnitude = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, atol=TOL[dtype] * scale * magnitude, rtol=0,
                               msg=lambda m: f"{what}: {m}")


def _compare(fn, ref, inputs, dtype, grad_scale=10.0):
    """fn matches ref: the output, and every input gradient (relative to its largest value: sums over many
    pixels carry more rounding)."""
    out, grads = _run(fn, inputs)
    ref_out, ref_grads = _run(ref, inputs)
    _close(out, ref_out, dtype, "output")
    for k, (a, b) in enumerate(zip(grads, ref_grads)):
        if b is None:
            assert a is None or not a.abs().any(), f"grad {k}: expected none"
        else:
            _close(torch.zeros_like(b) if a is None else a, b, dtype, f"grad {k}", grad_scale)
    return out, grads


def _assert_same_bits(first, second):
    for k, (a, b) in enumerate(zip(first, second)):
        assert (a is None) == (b is None) and (a is None or torch.equal(a, b)), f"tensor {k} differs between runs"


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------

def _warp_inputs(kind, n_params, N, device, dtype, K=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(K or N, 4, 13, 11, generator=g, dtype=torch.float64)
    p = 0.2 * torch.randn(N, n_params, generator=g, dtype=torch.float64)
    if kind == "tps":
        p = p.view(N, 16, 2) * 0.3
    index = None if K is None else torch.randint(0, K, (N,), generator=g)
    return x.to(device, dtype), p.to(device, dtype), None if index is None else index.to(device)


def _composite_inputs(L, B, C, H, W, device, dtype, seed=0):
    return [_rand(L, B, C, H, W, device=device, dtype=dtype, seed=seed),
            _rand(L, B, 1, H, W, device=device, dtype=dtype, seed=seed + 1),
            _rand(L, L, B, device=device, dtype=dtype, seed=seed + 2),
            _rand(B, C, H, W, device=device, dtype=dtype, seed=seed + 3)]


def _render_inputs(L, B, C, H, W, h, w, device, dtype, noise=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
    sprites = torch.rand(L, B, C + 1 + noise, h, w, generator=g, dtype=torch.float64)
    params = 0.4 * torch.randn(L, B, 3, generator=g, dtype=torch.float64) - 0.5 * torch.eye(3, dtype=torch.float64)[0]
    occ = torch.rand(L, L, B, generator=g, dtype=torch.float64)
    bg = torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
    nz = 0.4 * (2 * torch.rand(L, B, 1, H, W, generator=g, dtype=torch.float64) - 1) if noise else None
    return [None if t is None else t.to(device, dtype) for t in (x, sprites, params, occ, bg, nz)]


def _render(*t):
    return ops.render_loss(*t, backend="cuda")


def _greedy_inputs(L, K, B, C, H, W, h, w, device, noise, dtype=torch.float32, seed=0):
    """x, sprites, params, occlusion, background, n_iter, empty_penalty, noise of greedy_select_sprites."""
    g = torch.Generator().manual_seed(seed)
    sprites = torch.rand(L, K, B, C + 1 + int(noise), h, w, generator=g, dtype=torch.float64)
    sprites[:, -1, :, C:] = 0                      # the empty sprite
    sprites[:, 1] = sprites[:, 0]                  # a tie: goes to the lowest k
    params = 0.5 * torch.randn(L, B, 3, generator=g, dtype=torch.float64)
    occ = torch.rand(L, L, B, generator=g, dtype=torch.float64)
    nz = 0.4 * (2 * torch.rand(K, 1, H, W, generator=g, dtype=torch.float64) - 1) if noise else None
    x = torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
    bg = torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
    penalty = torch.full((K,), 1e-3, dtype=torch.float64)
    x, sprites, params, occ, bg, penalty = (t.to(device, dtype) for t in (x, sprites, params, occ, bg, penalty))
    return [x, sprites, params, occ, bg, 2, penalty, None if nz is None else nz.to(device, dtype)]


# ---------------------------------------------------------------------------------------------------------
# Values and gradients against the reference
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind,n_params", [("position", 3), ("similarity", 4), ("affine", 6), ("projective", 9),
                                           ("tps", 32)])
@pytest.mark.parametrize("shared", [False, True], ids=["own", "index"])
def test_warps(cuda, kind, n_params, shared, dtype):
    x, p, index = _warp_inputs(kind, n_params, 7, cuda, dtype, K=3 if shared else None)
    native, ref = getattr(ops, f"warp_{kind}"), getattr(reference, f"warp_{kind}")
    for padding in ("zeros", "border"):
        _compare(lambda a, b: native(a, b, (9, 14), padding, index=index, backend="cuda"),
                 lambda a, b: ref(a, b, (9, 14), padding, index=index), [x, p], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L", LAYER_COUNTS)
def test_composite(cuda, L, dtype):
    inputs = _composite_inputs(L, 3, 3, 37, 41, cuda, dtype)  # 1517 pixels: five full tiles and a partial one
    _compare(lambda *t: ops.composite_layers(*t, backend="cuda"), reference.composite_layers, inputs, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("L", LAYER_COUNTS)
def test_render_loss(cuda, L, dtype):
    inputs = _render_inputs(L, 4, 3, 33, 35, 12, 10, cuda, dtype)
    _compare(_render, reference.render_loss, inputs, dtype)
    without_noise = _render_inputs(L, 2, 3, 17, 19, 8, 9, cuda, dtype, noise=False)
    _compare(_render, reference.render_loss, without_noise, dtype)


@pytest.mark.parametrize("L", [1, 3, 9])
@pytest.mark.parametrize("noise", [False, True])
def test_greedy_selection_is_exact(cuda, L, noise):
    inputs = _greedy_inputs(L, 5, 4, 3, 35, 35, 20, 20, cuda, noise)
    out = ops.greedy_select_sprites(*inputs, backend="cuda")
    assert torch.equal(out, reference.greedy_select_sprites(*inputs))


# ---------------------------------------------------------------------------------------------------------
# Empty batches and batches above the grid y/z limit
# ---------------------------------------------------------------------------------------------------------

def test_empty_batches(cuda):
    x, p = torch.rand(0, 3, 5, 5, device=cuda, requires_grad=True), torch.zeros(0, 3, device=cuda, requires_grad=True)
    out = ops.warp_position(x, p, (4, 6), backend="cuda")
    assert out.shape == (0, 3, 4, 6)
    dx, dp = torch.autograd.grad(out.sum(), [x, p], allow_unused=True)
    assert (dx is None or dx.shape == x.shape) and (dp is None or dp.shape == p.shape)

    shared = torch.rand(2, 3, 5, 5, device=cuda, requires_grad=True)
    out = ops.warp_position(shared, p, (4, 6), index=torch.zeros(0, dtype=torch.long, device=cuda), backend="cuda")
    assert out.shape == (0, 3, 4, 6)

    layers, masks, occ, bg = [t.requires_grad_() for t in _composite_inputs(2, 0, 3, 4, 4, cuda, torch.float32)]
    out = ops.composite_layers(layers, masks, occ, bg, backend="cuda")
    assert out.shape == (0, 3, 4, 4)
    grads = torch.autograd.grad(out.sum(), [layers, masks, occ, bg], allow_unused=True)
    assert all(g is None or g.shape == t.shape for g, t in zip(grads, [layers, masks, occ, bg]))
    sprites, sprite_masks = layers[:1].detach().expand(3, -1, -1, -1, -1), masks[:1].detach().expand(3, -1, -1, -1, -1)
    out = ops.composite_candidates(sprites, sprite_masks, bg[None].detach().expand(2, -1, -1, -1, -1), backend="cuda")
    assert out.shape == (0, 6, 3, 4, 4)

    inputs = [t.requires_grad_() for t in _render_inputs(2, 0, 3, 6, 6, 4, 4, cuda, torch.float32)]
    loss = _render(*inputs)
    assert loss.shape == () and loss.item() == 0  # the mean of nothing is 0, as in the reference
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    assert all(g is None or g.shape == t.shape for g, t in zip(grads, inputs))

    greedy = _greedy_inputs(2, 3, 0, 3, 6, 6, 4, 4, cuda, noise=True)
    assert ops.greedy_select_sprites(*greedy, backend="cuda").shape == (2, 3, 0)


def test_candidates_batch_above_the_grid_limit(cuda):
    K, M, B = 8, 2, 4100  # M * K * B = 65 600 one-layer composites in one launch
    dtype = torch.float64
    inputs = [_rand(K, B, 3, 2, 3, device=cuda, dtype=dtype, seed=0),
              _rand(K, B, 1, 2, 3, device=cuda, dtype=dtype, seed=1),
              _rand(M, B, 3, 2, 3, device=cuda, dtype=dtype, seed=2)]
    _compare(lambda *t: ops.composite_candidates(*t, backend="cuda"), reference.composite_candidates, inputs, dtype)


def test_render_loss_batch_above_the_grid_limit(cuda):
    inputs = _render_inputs(2, 70_000, 3, 3, 4, 2, 3, cuda, torch.float64)
    _compare(_render, reference.render_loss, inputs, torch.float64)


def test_greedy_batch_above_the_grid_limit(cuda):
    # float64: 264 000 choices, none of them a near-tie that rounding could flip
    inputs = _greedy_inputs(2, 3, 66_000, 3, 3, 3, 2, 2, cuda, noise=False, dtype=torch.float64)
    out = ops.greedy_select_sprites(*inputs, backend="cuda")
    assert torch.equal(out, reference.greedy_select_sprites(*inputs))


# ---------------------------------------------------------------------------------------------------------
# Determinism and host synchronisation
# ---------------------------------------------------------------------------------------------------------

def _warp_case(device):
    # 80 outputs of 128 x 128 sharing 4 inputs: 1.3 M samples, two chunks of the deterministic scatter, and
    # thousands of taps per input pixel.
    x, p, index = _warp_inputs("position", 3, 80, device, torch.float32, K=4)
    x = torch.nn.functional.interpolate(x, size=(40, 40))
    return ([x, 0.3 * p], lambda a, b: ops.warp_position(a, b, (128, 128), index=index, backend="cuda"),
            lambda a, b: reference.warp_position(a, b, (128, 128), index=index))


def _render_case(device):
    # 160 images of 64 x 64 with 2 layers: 1.3 M samples, two chunks of the deterministic scatter.
    return _render_inputs(2, 160, 3, 64, 64, 20, 20, device, torch.float32), _render, reference.render_loss


@pytest.mark.parametrize("case", [_warp_case, _render_case], ids=["warp", "render_loss"])
def test_deterministic_mode_gives_the_same_bits_and_the_reference(cuda, case):
    inputs, fn, ref = case(cuda)
    with deterministic_algorithms(True):
        first = _run(fn, inputs)
        second = _run(fn, inputs)
    _assert_same_bits([first[0], *first[1]], [second[0], *second[1]])
    ref_out, ref_grads = _run(ref, inputs)  # outside: F.grid_sample's backward has no deterministic CUDA kernel
    _close(first[0], ref_out, torch.float32, "output")
    for k, (a, b) in enumerate(zip(first[1], ref_grads)):
        _close(a, b, torch.float32, f"grad {k}", 10.0)


def test_parameter_gradients_are_deterministic_in_the_default_mode(cuda):
    composite = _composite_inputs(5, 6, 3, 40, 40, cuda, torch.float32)
    render = _render_inputs(3, 8, 3, 48, 48, 16, 16, cuda, torch.float32)
    warp_inputs, warp, _ = _warp_case(cuda)
    fn = lambda *t: ops.composite_layers(*t, backend="cuda")  # noqa: E731
    with deterministic_algorithms(False):
        _assert_same_bits(_run(fn, composite)[1], _run(fn, composite)[1])  # every composite gradient
        first, second = _run(_render, render)[1], _run(_render, render)[1]
        _assert_same_bits([first[0], first[2], first[3], first[4], first[5]],  # all but the scattered sprites
                          [second[0], second[2], second[3], second[4], second[5]])
        assert torch.equal(_run(warp, warp_inputs)[1][1], _run(warp, warp_inputs)[1][1])  # theta


def test_forward_and_backward_do_not_synchronise(cuda):
    render = [t.requires_grad_() for t in _render_inputs(3, 4, 3, 20, 20, 8, 8, cuda, torch.float32)]
    composite = [t.requires_grad_() for t in _composite_inputs(3, 4, 3, 20, 20, cuda, torch.float32)]
    x, p, index = _warp_inputs("position", 3, 6, cuda, torch.float32, K=2)
    x.requires_grad_(), p.requires_grad_()
    greedy = _greedy_inputs(3, 4, 4, 3, 20, 20, 8, 8, cuda, noise=True)

    def step():
        loss = _render(*render) + ops.composite_layers(*composite, backend="cuda").sum()
        loss = loss + ops.warp_position(x, p, (9, 9), index=index, backend="cuda").sum()
        loss.backward()
        ops.greedy_select_sprites(*greedy, backend="cuda")

    with value_checks(False):
        step()  # builds and caches the coordinate bases (a host-to-device copy)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
