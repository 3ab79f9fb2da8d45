"""The CUDA kernels of dtifast._C (``cuda`` backend) against the eager twins, on a GPU.

Run by the GPU script with ``--device cuda``; skipped on CPU-only machines and where the extension was
built without CUDA. The kernels also compile with nvcc alone in tests/test_cuda_sources.py.
"""
import pytest
import torch

from dtifast import ops
from dtifast.ops import reference


@pytest.fixture
def cuda(device):
    if device.type != "cuda":
        pytest.skip("CUDA kernels are tested with --device cuda on a GPU machine")
    import dtifast._C  # noqa: F401
    if not torch._C._dispatch_has_kernel_for_dispatch_key("dtifast::composite", "CUDA"):
        pytest.skip("dtifast._C was built without its CUDA kernels")
    return device


def _leaves(tensors):
    return [t.clone().requires_grad_() if t is not None else None for t in tensors]


def _compare(fn_native, fn_ref, inputs, atol, grad=None):
    a, b = _leaves(inputs), _leaves(inputs)
    out, ref = fn_native(*a), fn_ref(*b)
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    g = torch.randn_like(ref) if grad is None else grad
    out.backward(g)
    ref.backward(g)
    for x, y in zip(a, b):
        if x is not None:
            torch.testing.assert_close(x.grad, y.grad, atol=atol * 100, rtol=atol * 100)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-11)])
@pytest.mark.parametrize("kind,n_params", [("position", 3), ("similarity", 4), ("affine", 6), ("projective", 9),
                                           ("tps", 32)])
def test_warps(cuda, kind, n_params, dtype, atol):
    x = torch.rand(5, 4, 13, 11, device=cuda, dtype=dtype)
    p = 0.2 * torch.randn(5, n_params, device=cuda, dtype=dtype)
    if kind == "tps":
        p = p.view(5, 16, 2) * 0.3
    native = getattr(ops, f"warp_{kind}")
    ref = getattr(reference, f"warp_{kind}")
    for padding in ("zeros", "border"):
        _compare(lambda a, b: native(a, b, (9, 14), padding, backend="cuda"), lambda a, b: ref(a, b, (9, 14), padding),
                 [x, p], atol)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-11)])
def test_composite(cuda, dtype, atol):
    L, B, C, H, W = 4, 3, 3, 37, 41
    inputs = [torch.rand(L, B, C, H, W, device=cuda, dtype=dtype), torch.rand(L, B, 1, H, W, device=cuda, dtype=dtype),
              torch.rand(L, L, B, device=cuda, dtype=dtype), torch.rand(B, C, H, W, device=cuda, dtype=dtype)]
    _compare(lambda *t: ops.composite_layers(*t, backend="cuda"), reference.composite_layers, inputs, atol)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_render_loss(cuda, dtype, atol):
    L, B, C, H, W, h, w = 3, 4, 3, 33, 35, 12, 10
    inputs = [torch.rand(B, C, H, W, device=cuda, dtype=dtype),
              torch.rand(L, B, C + 2, h, w, device=cuda, dtype=dtype),
              0.4 * torch.randn(L, B, 3, device=cuda, dtype=dtype) - 0.5 * torch.eye(3, device=cuda, dtype=dtype)[0],
              torch.rand(L, L, B, device=cuda, dtype=dtype), torch.rand(B, C, H, W, device=cuda, dtype=dtype),
              0.4 * (2 * torch.rand(L, B, 1, H, W, device=cuda, dtype=dtype) - 1)]
    _compare(lambda *t: ops.render_loss(*t, backend="cuda"), reference.render_loss, inputs, atol,
             grad=torch.tensor(1.0, device=cuda, dtype=dtype))


@pytest.mark.parametrize("noise", [False, True])
def test_greedy_selection_is_exact(cuda, noise):
    L, K, B, C, H, W = 3, 5, 4, 3, 35, 35
    sprites = torch.rand(L, K, B, C + 1 + int(noise), 20, 20, device=cuda)
    sprites[:, -1, :, C:] = 0
    sprites[:, 1] = sprites[:, 0]
    params = 0.5 * torch.randn(L, B, 3, device=cuda)
    occ = torch.rand(L, L, B, device=cuda)
    nz = 0.4 * (2 * torch.rand(K, 1, H, W, device=cuda) - 1) if noise else None
    x, bg = torch.rand(B, C, H, W, device=cuda), torch.rand(B, C, H, W, device=cuda)
    penalty = torch.full((K,), 1e-3, device=cuda)
    ref = reference.greedy_select_sprites(x, sprites, params, occ, bg, 2, penalty, nz)
    out = ops.greedy_select_sprites(x, sprites, params, occ, bg, 2, penalty, nz, backend="cuda")
    assert torch.equal(out, ref)
