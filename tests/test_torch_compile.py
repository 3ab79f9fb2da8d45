"""``torch.compile(fullgraph=True)`` traces the model and every fused op without a graph break.

A graph break means dynamo met something it cannot put in a graph (a host read, an untraceable Python
call, an op without a fake kernel): the compiled training step would then fall back to eager code at
that point. ``aot_eager`` traces forward and backward (AOTAutograd) without generating code, which is
what these tests need: that every op is traceable, through its fake kernel and its autograd formula.
"""
from __future__ import annotations

import pytest
import torch

from dtifast import ops

from small_models import ALL_CONFIGS, small_model


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_model_forward_and_backward_compile_in_one_graph_on_the_cpp_backend(name):
    model, x = small_model(name, "cpu")
    noise = torch.rand(model.n_sprites, 1, *model.img_size)
    step = torch.compile(lambda images: model(images, noise).loss, fullgraph=True, backend="aot_eager")
    loss = step(x)
    loss.backward()
    eager_model, _ = small_model(name, "cpu")
    eager_model.load_state_dict(model.state_dict())
    torch.testing.assert_close(loss, eager_model(x, noise).loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def _op_calls(dtype: torch.dtype) -> dict:
    """One small call of every public op (inputs, function of them), the differentiable ones requiring grad."""
    g = torch.Generator().manual_seed(0)

    def r(*shape, lo=0.0, hi=1.0):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * (hi - lo) + lo).to(dtype)

    L, K, B, C, H, W, h, w = 2, 3, 2, 3, 7, 6, 5, 4
    x, occ, bg = r(B, C, H, W), r(L, L, B), r(B, C, H, W)
    return {
        "softclip": ((r(5, lo=-1, hi=2),), lambda a: ops.softclip(a, backend="triton")),
        "color_transform": ((r(B, C + 1, h, w), r(B, 2 * C, lo=-0.3, hi=0.3)),
                            lambda a, p: ops.color_transform(a, p, backend="triton")),
        "warp_position": ((r(B, C, h, w), r(B, 3, lo=-0.3, hi=0.3)),
                          lambda a, p: ops.warp_position(a, p, (H, W), backend="triton")),
        "warp_projective": ((r(B, C, h, w), r(B, 9, lo=-0.1, hi=0.1)),
                            lambda a, p: ops.warp_projective(a, p, (h, w), "border", backend="triton")),
        "warp_tps": ((r(B, C, h, w), r(B, 16, 2, lo=-0.1, hi=0.1)),
                     lambda a, p: ops.warp_tps(a, p, (H, W), backend="triton")),
        "composite_layers": ((r(L, B, C, H, W), r(L, B, 1, H, W), occ, bg),
                             lambda *a: ops.composite_layers(*a, backend="triton")),
        "composite_candidates": ((r(K, B, C, H, W), r(K, B, 1, H, W), r(2, B, C, H, W)),
                                 lambda *a: ops.composite_candidates(*a, backend="triton")),
        "render_loss": ((x, r(L, B, C + 2, h, w), r(L, B, 3, lo=-0.5, hi=0.5), occ, bg, r(L, B, 1, H, W, lo=-0.4,
                                                                                           hi=0.4)),
                        lambda *a: ops.render_loss(*a, backend="triton")),
        "place_sprites": ((r(B, C + 2, h, w), r(B, 3, lo=-0.5, hi=0.5), r(B, 1, H, W, lo=-0.4, hi=0.4)),
                          lambda s, p, n: ops.place_sprites(s, p, (H, W), n, backend="triton")),
        "greedy_select_sprites": ((x, r(L, K, B, C + 1, h, w), r(L, B, 3, lo=-0.5, hi=0.5), occ),
                                  lambda *a: ops.greedy_select_sprites(*a, n_iter=2, backend="triton")),
        "greedy_select": ((x, r(L, K, B, C, H, W), r(L, K, B, 1, H, W), occ),
                          lambda *a: ops.greedy_select(*a, backend="triton")),
    }


@pytest.mark.parametrize("op", sorted(_op_calls(torch.float32)))
def test_every_triton_op_compiles_in_one_graph_through_its_fake_kernel(op):
    inputs, fn = _op_calls(torch.float32)[op]
    leaves = [t.clone().requires_grad_(op not in ("greedy_select", "greedy_select_sprites")) for t in inputs]
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    out = compiled(*leaves)
    outs = out if isinstance(out, tuple) else (out,)
    expected = fn(*[t.detach() for t in inputs])
    for a, b in zip(outs, expected if isinstance(expected, tuple) else (expected,)):
        torch.testing.assert_close(a, b)
    if outs[0].requires_grad:
        sum(o.sum() for o in outs).backward()
        assert all(t.grad is not None for t in leaves)
