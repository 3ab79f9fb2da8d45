"""Backend selection and the compiled softclip op."""
from __future__ import annotations

import pytest
import torch

import dtifast.ops as ops
from dtifast.ops import BackendError, reference


def test_backend_precedence_argument_then_env_then_default(monkeypatch):
    x = torch.rand(4)
    monkeypatch.delenv("DTIFAST_BACKEND", raising=False)
    assert ops.resolve("softclip", None, x.device)[0] == "cpu"         # the C++ kernel is the CPU default
    monkeypatch.setenv("DTIFAST_BACKEND", "torch")
    assert ops.resolve("softclip", None, x.device)[0] == "torch"
    assert ops.resolve("softclip", "cpu", x.device)[0] == "cpu"


def test_bad_backend_names_and_devices(monkeypatch):
    x = torch.rand(4)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.softclip(x, backend="cudnn")
    monkeypatch.setenv("DTIFAST_BACKEND", "fast")
    with pytest.raises(ValueError, match="DTIFAST_BACKEND must be one of"):
        ops.softclip(x)
    monkeypatch.delenv("DTIFAST_BACKEND")
    with pytest.raises(BackendError, match="runs on CUDA tensors"):
        ops.softclip(x, backend="cuda")


def test_explicit_backend_without_the_op_is_an_error(monkeypatch):
    monkeypatch.setattr("dtifast.ops._backend.BACKEND_MODULES", {**ops._backend.BACKEND_MODULES,
                                                                  "cpu": "dtifast.ops.reference_missing"})
    with pytest.raises(BackendError, match="not available"):
        ops.softclip(torch.rand(3), backend="cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_softclip_matches_reference(dtype):
    x = (torch.rand(1000, dtype=dtype) * 3 - 1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ops.softclip(x, backend="cpu"), reference.softclip(x_ref)
    torch.testing.assert_close(y, y_ref)
    y.sin().sum().backward()
    y_ref.sin().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_native_softclip_gradcheck_and_boundaries():
    x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    ops.softclip(x, backend="cpu").sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.01, 1.005, 1.0, 1.005, 0.01], dtype=torch.float64))
    y = (torch.rand(7, dtype=torch.float64) * 2 - 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ops.softclip(t, backend="cpu"), (y,))


def test_native_softclip_rejects_other_dtypes():
    with pytest.raises(TypeError, match="float32, float64"):
        ops.softclip(torch.rand(3).half(), backend="cpu")


def test_native_backend_covers_every_op_on_cpu_and_says_what_it_lacks(monkeypatch):
    from dtifast.ops import _native
    cpu = torch.device("cpu")
    public = [name for name in ops.__all__ if callable(getattr(ops, name)) and name in _native._KERNELS]
    assert sorted(public) == sorted(_native._KERNELS), "an op of dtifast.ops has no entry in _native._KERNELS"
    for name in public:
        assert _native.implements(name, cpu), name
        assert ops.resolve(name, "cpu", cpu)[0] == "cpu"
    assert not _native.implements("softclip", torch.device("meta"))
    # A kernel the build lacks for a device: the default leaves the op to the reference, an explicit
    # choice is an error naming the op and the device.
    monkeypatch.setattr(_native, "implements", lambda op, device: op != "render_loss")
    assert ops.resolve("render_loss", None, cpu)[0] == "torch"
    with pytest.raises(BackendError, match="does not implement 'render_loss' for cpu tensors"):
        ops.resolve("render_loss", "cpu", cpu)
