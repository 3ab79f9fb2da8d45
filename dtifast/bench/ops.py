"""Op benchmark cases at the shapes of upstream's configs, and the providers that run them.

A *shape set* is what one training step of a config feeds the ops at batch B (see
:class:`Shapes`): L layers, K sprites (the empty one included), M backgrounds, sprites of ``(h, w)``
placed in ``(H, W)`` images, C = 3 colours plus a mask and, in training, a noise footprint (canvas).
Each :class:`OpCase` builds the op's inputs for one shape set from a seeded generator.

Providers: every backend of :data:`dtifast.ops.BACKENDS` that :func:`dtifast.ops.resolve` accepts for
the op on the device, and ``torch.compile`` of the eager reference (the baseline with ``torch``).
A provider that cannot run says why (:class:`Skip`); nothing falls back silently.

Achieved bandwidth counts the least traffic an implementation must make: every input tensor read once
and every output written once (forward); forward plus backward adds the output gradients read, the
inputs read again and the input gradients written. Ops that launch fewer bytes than that (none do) or
re-read inputs (most eager ones) do not change the count: it is a throughput figure, not a profile.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from dtifast import ops
from dtifast.compat import UPSTREAM_IMG_SIZES
from dtifast.config import load_config

C = 3
MODES = ("fwd", "fwd+bwd")
ALL_CONFIGS = ("tetro", "dsprites", "clevr6", "gtsrb8", "svhn", "horse", "instagram")  # the bundled configs
COMPILE = "torch.compile"


class Skip(Exception):
    """A provider that cannot run a case here; the message says why and lands in the report."""


@dataclass(frozen=True)
class Shapes:
    """The op shapes of one config at batch B."""
    config: str
    B: int
    L: int
    K: int
    M: int
    h: int
    w: int
    H: int
    W: int
    n_iter: int

    @property
    def multi_object(self) -> bool:
        return self.L > 1

    def describe(self) -> str:
        return (f"B={self.B} L={self.L} K={self.K} M={self.M} sprite {self.h}x{self.w} "
                f"image {self.H}x{self.W}")


def image_size(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """``(H, W)`` of a loaded config's images: its ``dataset.img_size``, else upstream's size for the dataset."""
    H, W = cfg["dataset"].get("img_size") or UPSTREAM_IMG_SIZES[cfg["dataset"]["name"]]
    return int(H), int(W)


def shapes_for(config: str, batch: int) -> Shapes:
    """Shapes of a bundled config (``tetro``, ``clevr6``, …) at batch ``batch``."""
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    cfg = load_config(config)
    model = cfg["model"]
    H, W = image_size(cfg)
    h, w = model.get("sprite_size") or (H, W)
    K = int(model["n_sprites"]) + int(bool(model.get("add_empty_sprite", False)))
    return Shapes(config, batch, int(model.get("n_objects", 1)), K, int(model.get("n_backgrounds", 0) or 0),
                  int(h), int(w), int(H), int(W), int(model.get("greedy_algo_iter", 1)))


# ----------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------

def _uniform(g: torch.Generator, shape: Sequence[int], lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return torch.rand(*shape, generator=g) * (hi - lo) + lo


def _sprites(g: torch.Generator, lead: Sequence[int], h: int, w: int) -> torch.Tensor:
    """Colours in [0, 1], a raw mask in [-0.2, 1.2] (softclipped later) and a canvas of ones."""
    colors = _uniform(g, (*lead, C, h, w))
    mask = _uniform(g, (*lead, 1, h, w), -0.2, 1.2)
    return torch.cat([colors, mask, torch.ones(*lead, 1, h, w)], dim=-3)


def _position(g: torch.Generator, n: int) -> torch.Tensor:
    # log-scale in [-1, 0.5] (a sprite covering 1/2.6 to 1/2 of the image per axis) and a translation
    # that keeps most of it inside: the placements a trained model makes.
    return torch.cat([_uniform(g, (n, 1), -1.0, 0.5), _uniform(g, (n, 2), -0.8, 0.8)], dim=1)


def _occlusion(g: torch.Generator, L: int, B: int) -> torch.Tensor:
    lower = torch.tril(_uniform(g, (B, L, L)), diagonal=-1)
    grid = lower + torch.triu(1 - lower.transpose(1, 2), diagonal=1)
    return grid.permute(1, 2, 0).contiguous()


def _noise(g: torch.Generator, lead: Sequence[int], H: int, W: int) -> torch.Tensor:
    return 0.4 * (2 * _uniform(g, (*lead, 1, H, W)) - 1)


def _background(g: torch.Generator, s: Shapes) -> Optional[torch.Tensor]:
    return _uniform(g, (s.B, C, s.H, s.W)) if s.M > 0 else None


def _penalty(s: Shapes) -> torch.Tensor:
    penalty = torch.full((s.K,), 1e-4)
    penalty[-1] = 0
    return penalty


def _images(g: torch.Generator, s: Shapes) -> torch.Tensor:
    return _uniform(g, (s.B, C, s.H, s.W))


def _layer_params(g: torch.Generator, s: Shapes) -> torch.Tensor:
    return _position(g, s.L * s.B).view(s.L, s.B, 3)


def _sprite_warp_inputs(n_params: Any) -> Callable[[torch.Generator, Shapes], tuple]:
    """Sprite-level warps: every (layer, sprite, image) candidate at sprite resolution."""
    def make(g: torch.Generator, s: Shapes) -> tuple:
        n = s.L * s.K * s.B
        shape = (n, *n_params) if isinstance(n_params, tuple) else (n, n_params)
        return _sprites(g, (n,), s.h, s.w), 0.05 * torch.randn(*shape, generator=g), (s.h, s.w), "zeros"
    return make


def _theta_inputs(g: torch.Generator, s: Shapes) -> tuple:
    """The sprite-level affine warp given its matrices directly (near the identity)."""
    n = s.L * s.K * s.B
    theta = torch.eye(2, 3).expand(n, 2, 3) + 0.05 * torch.randn(n, 2, 3, generator=g)
    return _sprites(g, (n,), s.h, s.w), theta, (s.h, s.w), "zeros"


def _softclip_inputs(g: torch.Generator, s: Shapes) -> tuple:
    return _uniform(g, (s.L * s.K * s.B, C + 2, s.h, s.w), -0.5, 1.5), 0.01


def _position_inputs(g: torch.Generator, s: Shapes) -> tuple:
    """The selected sprites placed in the image (the render path's warp)."""
    return _sprites(g, (s.L * s.B,), s.h, s.w), _position(g, s.L * s.B), (s.H, s.W), "zeros"


def _color_inputs(g: torch.Generator, s: Shapes) -> tuple:
    n = s.L * s.K * s.B
    return _sprites(g, (n,), s.h, s.w), 0.1 * torch.randn(n, 2 * C, generator=g), 0.01


def _composite_layers_inputs(g: torch.Generator, s: Shapes) -> tuple:
    return (_uniform(g, (s.L, s.B, C, s.H, s.W)), _uniform(g, (s.L, s.B, 1, s.H, s.W)), _occlusion(g, s.L, s.B),
            _background(g, s))


def _composite_candidates_inputs(g: torch.Generator, s: Shapes) -> tuple:
    return (_uniform(g, (s.K, s.B, C, s.H, s.W)), _uniform(g, (s.K, s.B, 1, s.H, s.W)),
            _uniform(g, (max(s.M, 1), s.B, C, s.H, s.W)))


def _candidate_distances_inputs(g: torch.Generator, s: Shapes) -> tuple:
    return (_images(g, s), *_composite_candidates_inputs(g, s))


def _greedy_inputs(g: torch.Generator, s: Shapes) -> tuple:
    """Image-space candidates ``(L, K, B, ·, H, W)``: what upstream builds before selecting."""
    layers, masks = _uniform(g, (s.L, s.K, s.B, C, s.H, s.W)), _uniform(g, (s.L, s.K, s.B, 1, s.H, s.W))
    return _images(g, s), layers, masks, _occlusion(g, s.L, s.B), _background(g, s), s.n_iter, _penalty(s)


def _place_inputs(g: torch.Generator, s: Shapes) -> tuple:
    n = s.L * s.B
    return _sprites(g, (n,), s.h, s.w), _position(g, n), (s.H, s.W), _noise(g, (n,), s.H, s.W)


def _greedy_sprites_inputs(g: torch.Generator, s: Shapes) -> tuple:
    return (_images(g, s), _sprites(g, (s.L, s.K, s.B), s.h, s.w), _layer_params(g, s), _occlusion(g, s.L, s.B),
            _background(g, s), s.n_iter, _penalty(s), _noise(g, (s.K,), s.H, s.W))


def _render_inputs(g: torch.Generator, s: Shapes) -> tuple:
    return (_images(g, s), _sprites(g, (s.L, s.B), s.h, s.w), _layer_params(g, s), _occlusion(g, s.L, s.B),
            _background(g, s), _noise(g, (s.L, s.B), s.H, s.W))


@dataclass(frozen=True)
class OpCase:
    """One op at one shape set.

    Attributes:
        op: name in :mod:`dtifast.ops`.
        make: ``(generator, shapes) -> args`` positional arguments of the op (without ``backend``).
        grad_args: indices of the arguments that get gradients in the ``fwd+bwd`` mode (empty: the op
            has no backward, e.g. the greedy selection).
        applies: whether the op is part of this config's training step.
    """
    op: str
    make: Callable[[torch.Generator, Shapes], tuple]
    grad_args: tuple[int, ...]
    applies: Callable[[Shapes], bool]

    @property
    def modes(self) -> tuple[str, ...]:
        return MODES if self.grad_args else MODES[:1]


def _always(s: Shapes) -> bool:
    return True


def _multi(s: Shapes) -> bool:
    return s.multi_object


def _single(s: Shapes) -> bool:
    return not s.multi_object


OP_CASES: dict[str, OpCase] = {c.op: c for c in [
    OpCase("softclip", _softclip_inputs, (0,), _always),
    OpCase("warp_theta", _theta_inputs, (0, 1), _always),
    OpCase("warp_position", _position_inputs, (0, 1), _multi),
    OpCase("warp_similarity", _sprite_warp_inputs(4), (0, 1), _always),
    OpCase("warp_affine", _sprite_warp_inputs(6), (0, 1), _always),
    OpCase("warp_projective", _sprite_warp_inputs(9), (0, 1), _always),
    OpCase("warp_tps", _sprite_warp_inputs((16, 2)), (0, 1), _always),
    OpCase("color_transform", _color_inputs, (0, 1), _always),
    OpCase("composite_layers", _composite_layers_inputs, (0, 1, 2, 3), _multi),
    OpCase("composite_candidates", _composite_candidates_inputs, (0, 1, 2), _single),
    OpCase("candidate_distances", _candidate_distances_inputs, (1, 2, 3), _single),
    OpCase("greedy_select", _greedy_inputs, (), _multi),
    OpCase("place_sprites", _place_inputs, (0, 1), _multi),
    OpCase("greedy_select_sprites", _greedy_sprites_inputs, (), _multi),
    OpCase("render_loss", _render_inputs, (1, 2, 3, 4), _multi),
]}


def make_inputs(case: OpCase, shapes: Shapes, device: torch.device, mode: str, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> list[Any]:
    """The case's arguments on ``device`` (floating ones in ``dtype``), with ``requires_grad`` set for ``fwd+bwd``."""
    g = torch.Generator().manual_seed(seed)
    args = list(case.make(g, shapes))
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            a = a.to(device=device, dtype=dtype if a.is_floating_point() else a.dtype)
            if mode == "fwd+bwd" and i in case.grad_args:
                a.requires_grad_(True)
            args[i] = a
    return args


# ----------------------------------------------------------------------------------------------------
# Providers
# ----------------------------------------------------------------------------------------------------

def providers(device: torch.device, with_compile: bool = True) -> list[str]:
    """The baselines (``torch``, then ``torch.compile`` of it when asked), then every other backend."""
    return ["torch"] + ([COMPILE] if with_compile else []) + [b for b in ops.BACKENDS if b != "torch"]


def check_timeable(provider: str, device: torch.device) -> None:
    """Raise :class:`Skip` for a provider whose timings would mean nothing here."""
    if provider == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise Skip("Triton runs in its interpreter on the CPU (TRITON_INTERPRET=1): its timings say nothing "
                   "about the kernels")


def op_function(op: str, provider: str, device: torch.device) -> Callable:
    """The callable that ``provider`` runs ``op`` with, or :class:`Skip` saying why not."""
    if provider == COMPILE:
        # dynamic=False: one graph per benchmarked shape, as a training run at a fixed batch gets.
        return torch.compile(getattr(ops.reference, op), dynamic=False)
    check_timeable(provider, device)
    try:
        return ops.resolve(op, provider, device)[1]
    except ops.BackendError as err:
        raise Skip(str(err)) from None


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in out if isinstance(t, torch.Tensor)]


def _nbytes(items: Sequence[Any]) -> int:
    return sum(t.numel() * t.element_size() for t in items if isinstance(t, torch.Tensor))


def make_runner(case: OpCase, fn: Callable, args: list[Any], mode: str) -> tuple[Callable[[], Any], int]:
    """A zero-argument callable doing one unit of work, and the bytes that unit must move (see above)."""
    if mode == "fwd":
        def run_fwd() -> Any:
            with torch.no_grad():
                return fn(*args)
        outs = _tensors(run_fwd())
        return run_fwd, _nbytes(args) + _nbytes(outs)
    inputs = [args[i] for i in case.grad_args if isinstance(args[i], torch.Tensor)]
    outs = _tensors(fn(*args))
    # Fixed output gradients, made once: the timed unit is the op's forward and backward only.
    grads = [torch.rand_like(o) for o in outs if o.requires_grad]

    def run_fwd_bwd() -> Any:
        out = [o for o in _tensors(fn(*args)) if o.requires_grad]
        # autograd.grad, not .backward(): no accumulation into .grad between repeats.
        return torch.autograd.grad(out, inputs, grads)
    moved = _nbytes(args) + _nbytes(outs) + _nbytes(grads) + _nbytes(args) + _nbytes(inputs)
    return run_fwd_bwd, moved


def prepare(case: OpCase, shapes: Shapes, provider: str, device: torch.device,
            mode: str) -> tuple[Callable[[], Any], int]:
    """Inputs, callable and byte count of one case for one provider (see :func:`make_runner`).

    Raises:
        Skip: the provider cannot run the case here, or ``torch.compile`` cannot compile it.
    """
    fn = op_function(case.op, provider, device)
    args = make_inputs(case, shapes, device, mode)
    try:
        runner, moved = make_runner(case, fn, args, mode)
        if provider == COMPILE:
            runner()  # fwd+bwd compiles the backward graph on this second call
    except Exception as err:  # noqa: BLE001 - compile failures come as many exception types
        if provider != COMPILE:
            raise
        raise Skip(f"torch.compile failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}") from None
    return runner, moved

