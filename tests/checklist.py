"""The checklist every op family's tests run on every backend (tests/test_ops_*.py).

A test takes the ``backend`` fixture (``torch``, ``native`` and ``triton``; see tests/conftest.py), turns
it into the backend name for the device under test with :func:`backend_for` (skipping where that backend
lacks the op) and holds the op to :mod:`dtifast.ops.reference` with :func:`assert_matches_reference`:
values and the gradients of every differentiable input under one random output gradient.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import pytest
import torch

from dtifast.ops._backend import implements

# Tolerances against the reference. Sums over many pixels (parameter and occlusion gradients) are
# compared relative to the largest gradient of the tensor, see assert_close.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
DTYPES = (torch.float32, torch.float64)


def backend_for(backend: str, op: str, device: torch.device) -> str:
    """The backend name for ``device`` (``native`` → ``cpu`` or ``cuda``); skips where it lacks ``op``."""
    name = device.type if backend == "native" else backend
    if not implements(name, op, device):
        pytest.skip(f"backend {name!r} has no {op!r} for {device.type} tensors")
    return name


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str,
                 scale: float = 1.0) -> None:
    """``|actual − expected| <= tol·scale·max(1, max|expected|)``, with the dtype's tolerance."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    magnitude = max(1.0, float(expected.detach().abs().max())) if expected.numel() else 1.0
    tol = TOL[dtype] * scale * magnitude
    torch.testing.assert_close(actual.detach().to(expected.dtype), expected.detach(), atol=tol, rtol=0,
                               msg=lambda m: f"{what}: {m}")


def leaves(tensors: Sequence[Optional[torch.Tensor]], grad: Sequence[bool]) -> list[Optional[torch.Tensor]]:
    """Fresh leaf copies of ``tensors`` (None stays None), requiring grad where ``grad`` says."""
    return [None if t is None else t.detach().clone().requires_grad_(g) for t, g in zip(tensors, grad)]


def outputs_and_grads(fn: Callable, inputs: Sequence, grad_of: Sequence[int], seed: int = 0
                      ) -> tuple[list[torch.Tensor], list[Optional[torch.Tensor]]]:
    """Run ``fn(*inputs)`` (a tensor or a tuple of them) and back-propagate a seeded random gradient of the
    outputs to ``inputs[i]`` for ``i`` in ``grad_of``."""
    outs = fn(*inputs)
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    g = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o) for o in outs]
    wanted = [inputs[i] for i in grad_of]
    if not wanted or not any(o.requires_grad for o in outs):
        return outs, [None] * len(wanted)
    grads = torch.autograd.grad(outs, wanted, cotangents, allow_unused=True)
    return outs, list(grads)


def assert_matches_reference(fn: Callable, reference: Callable, inputs: Sequence, grad_of: Sequence[int],
                             dtype: torch.dtype, grad_scale: float = 10.0,
                             names: Optional[Sequence[str]] = None) -> None:
    """``fn`` and ``reference`` give the same outputs and input gradients (the reference in float64 when
    ``dtype`` is a low precision)."""
    mask = [i in grad_of for i in range(len(inputs))]
    mine = leaves(inputs, mask)
    theirs = leaves(inputs, mask)
    if dtype in (torch.float16, torch.bfloat16):
        theirs = [t if t is None or not t.is_floating_point() else t.detach().double().requires_grad_(t.requires_grad)
                  for t in theirs]
    outs, grads = outputs_and_grads(fn, mine, grad_of)
    ref_outs, ref_grads = outputs_and_grads(reference, theirs, grad_of)
    for k, (a, b) in enumerate(zip(outs, ref_outs)):
        assert_close(a, b, dtype, f"output {k}")
    for i, a, b in zip(grad_of, grads, ref_grads):
        what = f"grad of {names[i] if names else f'input {i}'}"
        if b is None:
            assert a is None or not a.abs().any(), f"{what}: expected no gradient"
            continue
        assert a is not None, f"{what}: missing"
        assert_close(a, b, dtype, what, grad_scale)


def count_recorded_adds(monkeypatch: pytest.MonkeyPatch, kernel_module: str) -> list[int]:
    """Count the deterministic-mode reductions of ``dtifast.kernels.<kernel_module>`` (one entry per call):
    proof that a Triton backward took its recorded, atomics-free path."""
    import importlib
    from dtifast.kernels import sampling
    module = importlib.import_module(f"dtifast.kernels.{kernel_module}")
    calls: list[int] = []

    def counting(*args):
        calls.append(1)
        return sampling.add_recorded(*args)

    monkeypatch.setattr(module, "add_recorded", counting)
    return calls
