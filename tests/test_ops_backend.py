"""Backend selection and the custom-op contract shared by every backend (dtifast/ops/_backend.py, _library.py)."""
from __future__ import annotations

import pytest
import torch

import dtifast.ops as ops
from dtifast.ops import BackendError, _backend, geometry

# Written out here, not read from the registry under test: the public ops that dispatch to backends,
# and the fused custom ops (C++/CUDA `dtifast::<op>`, Triton `dtifast::<op>_triton`).
PUBLIC_OPS = {"softclip", "color_transform", "warp_theta", "warp_position", "warp_similarity", "warp_affine",
              "warp_projective", "warp_tps", "composite_layers", "composite_candidates", "candidate_distances",
              "greedy_select", "greedy_select_sprites", "place_sprites", "render_loss"}
FUSED_OPS = {"softclip": 1, "color_transform": 2, "warp_theta": 2, "composite_layers": 4, "render_loss": 6,
             "greedy_select": 0, "greedy_select_sprites": 0}  # op: number of differentiable inputs


def test_every_public_op_is_registered_and_runs_on_the_cpu_kernels():
    assert set(ops.registered_ops()) == PUBLIC_OPS
    cpu = torch.device("cpu")
    for name in PUBLIC_OPS:
        assert ops.resolve(name, None, cpu)[0] == "cpu", name
        assert _backend.implements("triton", name, cpu), name
    assert not _backend.implements("cpu", "softclip", torch.device("meta"))


def test_precedence_argument_then_environment_then_default(monkeypatch):
    x = torch.rand(4)
    monkeypatch.delenv("DTIFAST_BACKEND", raising=False)
    assert ops.resolve("softclip", None, x.device)[0] == "cpu"
    monkeypatch.setenv("DTIFAST_BACKEND", "torch")
    assert ops.resolve("softclip", None, x.device)[0] == "torch"
    assert ops.resolve("softclip", "cpu", x.device)[0] == "cpu"


def test_resolve_returns_the_public_op_bound_to_the_backend():
    name, fn = ops.resolve("softclip", "torch", torch.device("cpu"))
    x = torch.tensor([-1.0, 2.0])
    assert name == "torch" and torch.equal(fn(x), ops.reference.softclip(x))
    with pytest.raises(ValueError, match="unknown op 'soft_clip'"):
        ops.resolve("soft_clip", None, torch.device("cpu"))


def test_bad_backend_names_devices_and_dtypes(monkeypatch):
    x = torch.rand(4)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.softclip(x, backend="cudnn")
    monkeypatch.setenv("DTIFAST_BACKEND", "fast")
    with pytest.raises(ValueError, match="DTIFAST_BACKEND must be one of"):
        ops.softclip(x)
    monkeypatch.delenv("DTIFAST_BACKEND")
    with pytest.raises(BackendError, match="runs on CUDA tensors"):
        ops.softclip(x, backend="cuda")
    with pytest.raises(TypeError, match="backend 'cpu' runs softclip on \\(float32, float64\\) tensors, got float16"):
        ops.softclip(x.half(), backend="cpu")


def test_an_explicit_backend_that_cannot_load_or_lacks_the_op_is_an_error(monkeypatch):
    monkeypatch.setattr(_backend, "native_error", lambda: "no module named dtifast._C")
    with pytest.raises(BackendError, match="backend 'cpu' is not available .*pip install"):
        ops.softclip(torch.rand(3), backend="cpu")
    monkeypatch.undo()
    spec = _backend._OPS["render_loss"]
    monkeypatch.setitem(_backend._OPS, "render_loss", _backend.OpSpec(spec.name, spec.function, native=("no_such_op",),
                                                                       triton=spec.triton))
    assert ops.resolve("render_loss", None, torch.device("cpu"))[0] == "torch"  # the default leaves it to torch
    with pytest.raises(BackendError, match="does not implement 'render_loss' for cpu tensors"):
        ops.resolve("render_loss", "cpu", torch.device("cpu"))


@pytest.mark.parametrize("op", sorted(FUSED_OPS))
def test_triton_and_native_ops_share_one_contract(op):
    for name in (op, f"{op}_backward") if FUSED_OPS[op] else (op,):
        native = getattr(torch.ops.dtifast, name).default._schema
        triton = getattr(torch.ops.dtifast, name.replace("_backward", "_backward_triton") if "_backward" in name
                         else f"{name}_triton").default._schema
        assert [(a.name, str(a.type)) for a in native.arguments] == [(a.name, str(a.type)) for a in triton.arguments]
        assert [str(r.type) for r in native.returns] == [str(r.type) for r in triton.returns]


def test_native_and_triton_warp_modes_agree():
    from dtifast.kernels import warp as kernels
    assert (kernels.AFFINE, kernels.PROJECTIVE, kernels.TPS) == tuple(ops.warp.WARP_KINDS.values()) == (0, 1, 2)


def _opcheck_cases(dtype):
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.rand(*shape, generator=g, dtype=dtype)

    basis = geometry.affine_basis((5, 6), dtype, torch.device("cpu"))
    theta = geometry.position_matrix(0.3 * torch.randn(4, 3, generator=g, dtype=dtype)).view(2, 2, 6)
    return {
        "softclip": (r(3, 4) * 2 - 0.5, 0.01),
        "color_transform": (r(2, 4, 3, 3), 0.2 * r(2, 6), 0.01),
        "warp_theta": (r(2, 2, 4, 5), geometry.similarity_matrix(0.2 * r(3, 4)).view(3, 6),
                       geometry.affine_basis((3, 4), dtype, torch.device("cpu")), torch.tensor([1, 0, 1]), 0, 3, 4,
                       True),
        "composite_layers": (r(3, 2, 2, 3, 4), r(3, 2, 1, 3, 4), r(3, 3, 2), r(2, 2, 3, 4)),
        "render_loss": (r(2, 3, 5, 6), r(2, 2, 5, 4, 3), theta, r(2, 2, 2), r(2, 3, 5, 6), 0.3 * r(2, 2, 1, 5, 6),
                        basis),
        "greedy_select_sprites": (r(2, 3, 5, 6), r(2, 3, 2, 5, 4, 3), theta, r(2, 2, 2), None, 1, None,
                                  0.3 * r(3, 1, 5, 6), basis),
        "greedy_select": (r(2, 3, 5, 6), r(2, 3, 2, 3, 5, 6), r(2, 3, 2, 1, 5, 6), r(2, 2, 2), r(2, 3, 5, 6), 2, None),
    }


@pytest.mark.parametrize("suffix", ["", "_triton"], ids=["native", "triton"])
@pytest.mark.parametrize("op", sorted(FUSED_OPS))
def test_opcheck(op, suffix):
    # Schema, fake (meta) kernel, autograd registration and the op's behaviour under torch.compile's checks.
    args = _opcheck_cases(torch.float64)[op]
    args = tuple(a.requires_grad_() if i < FUSED_OPS[op] and a is not None else a for i, a in enumerate(args))
    torch.library.opcheck(getattr(torch.ops.dtifast, f"{op}{suffix}"), args)


@pytest.mark.parametrize("op", sorted(op for op, n in FUSED_OPS.items() if n))
def test_eager_entry_has_the_registered_autograd_formula(op):
    # Eager calls take a lighter autograd.Function around the kernel (_library._eager_autograd); it must give
    # the registered op's output and gradients bit for bit, also when only some inputs want a gradient.
    from dtifast.ops._library import fused_op
    n_diff = FUSED_OPS[op]
    eager, registered = fused_op(op, "cpu"), getattr(torch.ops.dtifast, op)
    assert eager is not registered
    for wanted in (set(range(n_diff)), {n_diff - 1}):
        results = []
        for fn in (eager, registered):
            args = tuple(a.detach().clone().requires_grad_(i in wanted) if isinstance(a, torch.Tensor) else a
                         for i, a in enumerate(_opcheck_cases(torch.float64)[op]))
            out = fn(*args)
            cotangent = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
            grads = torch.autograd.grad(out, [args[i] for i in sorted(wanted)], cotangent)
            results.append((out.detach(), *grads))
        for a, b in zip(*results):
            assert torch.equal(a, b), op
