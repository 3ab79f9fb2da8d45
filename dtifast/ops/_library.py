"""The custom-op contract shared by every fused op and backend, and the one copy of its registration code.

Every fused op has one contract, the same on the C++/CUDA backends (``dtifast::<op>``, defined in
``csrc/<family>.cpp``) and on Triton (``dtifast::<op>_triton``, defined in the family's module):

* forward: ``<op>(*inputs) -> output``;
* backward: ``<op>_backward(grad, *inputs, *needs) -> one gradient per differentiable input``, where the
  differentiable inputs are the first ``n_diff`` ones, ``needs`` their ``ctx.needs_input_grad`` flags,
  and a gradient that was not asked for (or of an absent optional input) is an empty tensor, because a
  custom op returns tensors only.

:func:`register_autograd` attaches the fake (meta) kernels and the autograd formula to such a pair, so
``torch.compile`` traces through every op and autograd sees one node per kernel, on every backend. Eager
calls take the same formula through a lighter ``autograd.Function`` (:func:`fused_op`).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

NativeOp = Any  # a torch.ops.dtifast.<op> OpOverloadPacket


def gradient_like(t: Optional[torch.Tensor], needed: bool, like: torch.Tensor) -> torch.Tensor:
    """The (fake) gradient buffer of input ``t``: contiguous like ``t``, or empty when not needed or absent."""
    if needed and t is not None:
        return torch.empty_like(t, memory_format=torch.contiguous_format)
    return like.new_empty(0)


def _backward_fake(n_diff: int, with_needs: bool, as_list: bool) -> Callable:
    def fake(grad: torch.Tensor, *args: Any) -> Any:
        inputs = args[:-n_diff] if with_needs else args
        needs = args[-n_diff:] if with_needs else (True,) * n_diff
        grads = [gradient_like(t, need, grad) for t, need in zip(inputs[:n_diff], needs)]
        if as_list:
            return grads
        return tuple(grads) if n_diff > 1 else grads[0]
    return fake


def register_autograd(name: str, *, forward_fake: Callable, n_diff: int, with_needs: bool = True,
                      backward_fake: Optional[Callable] = None) -> None:
    """Register the fakes of ``dtifast::<name>`` and ``dtifast::<name>_backward`` and the autograd formula
    that calls the backward op (see the module docstring for the contract).

    Args:
        name: the op's name in the ``dtifast`` namespace (e.g. ``"warp_theta"`` or ``"warp_theta_triton"``;
            its backward is the name with ``_backward`` inserted before a ``_triton`` suffix).
        forward_fake: the forward's fake kernel (output metadata from input metadata, no data read).
        n_diff: how many leading inputs are differentiable.
        with_needs: whether the backward op takes the ``needs`` flags (an op with one differentiable
            input computes its gradient whenever it is called).
        backward_fake: the backward's fake kernel; default: empty gradients shaped like the inputs. (The
            Triton ops pass their own implementations: the launchers allocate their outputs and workspace
            and launch nothing on fake tensors, see ``kernels/sampling.py`` ``launch``.)
    """
    backward_name = backward_op_name(name)
    backward = getattr(torch.ops.dtifast, backward_name)
    as_list = str(backward.default._schema.returns[0].type) == "List[Tensor]"  # `-> Tensor[]` (vs a tuple)
    torch.library.register_fake(f"dtifast::{name}")(forward_fake)
    fake = backward_fake or _backward_fake(n_diff, with_needs, as_list)
    torch.library.register_fake(f"dtifast::{backward_name}")(fake)

    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        # save_for_backward takes tensors (or None); ints, floats and bools ride on ctx.
        ctx.is_tensor = [isinstance(v, torch.Tensor) or v is None for v in inputs]
        ctx.save_for_backward(*(v for v, t in zip(inputs, ctx.is_tensor) if t))
        ctx.constants = [v for v, t in zip(inputs, ctx.is_tensor) if not t]

    def grad_fn(ctx: Any, grad: torch.Tensor) -> tuple:
        saved, constants = iter(ctx.saved_tensors), iter(ctx.constants)
        inputs = [next(saved) if t else next(constants) for t in ctx.is_tensor]
        needs = list(ctx.needs_input_grad[:n_diff])
        grads = backward(grad, *inputs, *needs) if with_needs else backward(grad, *inputs)
        grads = grads if isinstance(grads, (tuple, list)) else (grads,)
        return (*(g if need else None for g, need in zip(grads, needs)), *([None] * (len(inputs) - n_diff)))

    torch.library.register_autograd(f"dtifast::{name}", grad_fn, setup_context=setup_context)
    _EAGER[name] = _eager_autograd(name, getattr(torch.ops.dtifast, name), setup_context, grad_fn)


# name -> the eager entry of dtifast::<name> (_eager_autograd), filled by register_autograd.
_EAGER: dict[str, Callable] = {}


def _eager_autograd(name: str, op: NativeOp, setup_context: Callable, grad_fn: Callable) -> Callable:
    """The same autograd formula as an ``autograd.Function`` around the op's kernel, for eager calls.

    ``torch.library``'s autograd wrapper costs tens of microseconds per call in Python (it re-fills the
    schema's defaults, looks for a fake mode, builds an ``autograd.Function`` call): as much as the whole
    kernel of a small warp. This ``Function`` calls the kernel below the autograd key directly and keeps
    the same ``setup_context`` and ``grad_fn``, so gradients are identical; ``torch.compile`` still traces
    the registered op (:func:`fused_op`).
    """
    def forward(ctx: Any, *inputs: Any) -> Any:
        with torch._C._AutoDispatchBelowAutograd():
            output = op(*inputs)
        setup_context(ctx, inputs, output)
        return output

    function = type(f"{name}_eager", (torch.autograd.Function,),
                    {"forward": staticmethod(forward), "backward": staticmethod(grad_fn)})
    return function.apply


def define_triton_op(name: str, forward: Callable, backward: Callable, n_diff: int, with_needs: bool = True) -> None:
    """Define ``dtifast::<name>_triton`` and its backward from the Triton launchers, with autograd.

    The launchers are their own fake kernels: they allocate their outputs and workspace and launch nothing
    on fake tensors (``kernels/sampling.py`` ``launch``), so the fake trace counts the same buffers.
    """
    triton_name = f"{name}_triton"
    torch.library.custom_op(f"dtifast::{triton_name}", mutates_args=())(forward)
    torch.library.custom_op(f"dtifast::{backward_op_name(triton_name)}", mutates_args=())(backward)
    register_autograd(triton_name, forward_fake=forward, n_diff=n_diff, with_needs=with_needs, backward_fake=backward)


def backward_op_name(name: str) -> str:
    """``warp_theta`` → ``warp_theta_backward``; ``warp_theta_triton`` → ``warp_theta_backward_triton``."""
    stem, triton = (name[: -len("_triton")], "_triton") if name.endswith("_triton") else (name, "")
    return f"{stem}_backward{triton}"


def fused_op(name: str, backend: str) -> Callable:
    """The custom op that runs ``name`` on a fused backend: ``dtifast::<name>`` on ``cpu`` / ``cuda`` (the
    dispatcher picks the kernel by device), ``dtifast::<name>_triton`` on ``triton``. Called eagerly, the
    op's lighter eager entry with the same autograd formula (:func:`_eager_autograd`), where it has one."""
    op_name = f"{name}_triton" if backend == "triton" else name
    if not torch.compiler.is_compiling() and op_name in _EAGER:
        return _EAGER[op_name]
    return getattr(torch.ops.dtifast, op_name)
