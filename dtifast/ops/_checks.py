"""Input validation shared by every op family.

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape, device,
value) with a message that says what was expected and what came. The public ops call them once, before
any backend runs, so that a kernel never sees bad input; backends assume valid input.

Checks of tensor *metadata* (type, dtype, shape, device) cost nothing and always run. Checks of tensor
*values* (NaN/inf, index range) read the data, which on a GPU stalls the host until the device has caught
up. They are off by default: a training step validates its batch once at the model's entry instead
(:meth:`dtifast.model.DTISprites.check_input`). Turn them on per block with :func:`value_checks`, for the
process with :func:`set_value_checks`, or with ``DTIFAST_VALUE_CHECKS=1`` in the environment.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator, Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PADDING_MODES = ("zeros", "border")
VALUE_CHECKS = os.environ.get("DTIFAST_VALUE_CHECKS", "0") == "1"


def set_value_checks(enabled: bool) -> None:
    """Turn the ops' value checks (NaN/inf inputs, index range) on or off for the whole process."""
    global VALUE_CHECKS
    VALUE_CHECKS = bool(enabled)


def value_checks_enabled() -> bool:
    """Whether the ops check input values (see :func:`set_value_checks`)."""
    return VALUE_CHECKS


@contextlib.contextmanager
def value_checks(enabled: bool = True) -> Iterator[None]:
    """Turn the ops' value checks on (or off) inside a ``with`` block; the old setting comes back after.

    Example:
        >>> with value_checks():
        ...     softclip(torch.tensor([float("nan")]))  # raises ValueError: x contains NaN or inf values
    """
    old = VALUE_CHECKS
    set_value_checks(enabled)
    try:
        yield
    finally:
        set_value_checks(old)


def check_tensor(t: object, name: str, ndim: int | None = None, dtypes: Iterable[torch.dtype] = FLOAT_DTYPES,
                 finite: bool = True) -> torch.Tensor:
    """Check that ``t`` is a tensor with ``ndim`` dims and one of ``dtypes``; with ``finite``, and value checks
    on (:func:`set_value_checks`), also that its values are finite."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    dtypes = tuple(dtypes)
    if t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor, got shape {tuple(t.shape)}")
    if finite and VALUE_CHECKS and t.is_floating_point() and not _is_meta(t) and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return t


def check_shape(t: torch.Tensor, name: str, expected: Sequence[int | str | None]) -> None:
    """Check ``t.shape`` against ``expected``; an int must match, a str/None matches anything.

    Strings name symbolic dims (``"B"``) and appear in the message.
    """
    shape = tuple(t.shape)
    ok = len(shape) == len(expected) and all(
        not isinstance(e, int) or s == e for s, e in zip(shape, expected))
    if not ok:
        want = "(" + ", ".join(str(e) if e is not None else "*" for e in expected) + ")"
        raise ValueError(f"{name} must have shape {want}, got {shape}")


def check_same_device_dtype(*named: tuple[str, torch.Tensor]) -> None:
    """Check that all tensors share the first one's device and dtype."""
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; "
                             "all inputs must be on the same device")
        if t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}; "
                            "all inputs must share one dtype")


def check_out_size(out_size: object) -> tuple[int, int]:
    """Check an output size ``(H, W)`` of two positive ints and return it as a tuple."""
    if isinstance(out_size, torch.Size):
        out_size = tuple(out_size)
    if (not isinstance(out_size, (tuple, list)) or len(out_size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in out_size)):
        raise ValueError(f"out_size must be a pair of positive ints (H, W), got {out_size!r}")
    return int(out_size[0]), int(out_size[1])


def check_padding(padding: object) -> str:
    if padding not in PADDING_MODES:
        raise ValueError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    return padding  # type: ignore[return-value]


def check_warp_inputs(x: torch.Tensor, params: torch.Tensor, n_params: int | tuple[int, ...],
                      out_size: object, padding: object, name: str = "params") -> tuple[int, int]:
    """Validate the common warp signature: ``x`` (N, C, h, w), ``params`` (N, *n_params) (called ``name``)."""
    check_tensor(x, "x", ndim=4)
    shape = (n_params,) if isinstance(n_params, int) else tuple(n_params)
    check_tensor(params, name, ndim=1 + len(shape))
    check_shape(params, name, (x.shape[0], *shape))
    check_same_device_dtype(("x", x), (name, params))
    check_padding(padding)
    return check_out_size(out_size)


def check_index(index: Optional[torch.Tensor], n_inputs: int, n_outputs: int, device: torch.device) -> None:
    """Validate an optional input index: int64 ``(n_outputs,)`` on ``device``; with value checks on
    (:func:`set_value_checks`), also that its values are in ``[0, n_inputs)``."""
    if index is None:
        if n_inputs != n_outputs:
            raise ValueError(f"without an index, x and params must have the same length, got {n_inputs} images "
                             f"and {n_outputs} parameter rows")
        return
    check_tensor(index, "index", ndim=1, dtypes=(torch.int64,))
    check_shape(index, "index", (n_outputs,))
    if index.device != device:
        raise ValueError(f"index is on {index.device} but x is on {device}")
    if VALUE_CHECKS and n_outputs and not _is_meta(index) and (int(index.min()) < 0 or int(index.max()) >= n_inputs):
        raise ValueError(f"index values must be in [0, {n_inputs}), got range "
                         f"[{int(index.min())}, {int(index.max())}]")


def check_indexed_warp_inputs(x: torch.Tensor, params: torch.Tensor, n_params: int | tuple[int, ...],
                              out_size: object, padding: object, index: Optional[torch.Tensor],
                              name: str = "params") -> tuple[int, int]:
    """:func:`check_warp_inputs` where, with ``index`` ``(N,)``, ``x`` ``(K, C, h, w)`` holds K shared
    inputs and output n warps ``x[index[n]]``; returns ``out_size``."""
    check_tensor(x, "x", ndim=4)
    check_tensor(params, name)
    rows = params.shape[0] if params.dim() else 0
    # check_warp_inputs ties params to x's batch; with an index, x holds the shared inputs instead.
    x_view = x if index is None else x[:1].expand(rows, *x.shape[1:])
    out_size = check_warp_inputs(x_view, params, n_params, out_size, padding, name)
    check_index(index, x.shape[0], rows, x.device)
    return out_size


def check_color_inputs(x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Validate the colour transform's ``x`` ``(N, C + E, h, w)`` and ``params`` ``(N, 2·C)``.

    Returns ``x`` (a one-channel image expanded to the C colour channels) and C.
    """
    check_tensor(x, "x", ndim=4)
    check_tensor(params, "params", ndim=2)
    if params.shape[1] % 2 or params.shape[1] == 0:
        raise ValueError(f"params must be (N, 2*C) with interleaved (gain, bias) pairs, got {tuple(params.shape)}")
    check_shape(params, "params", (x.shape[0], params.shape[1]))
    check_same_device_dtype(("x", x), ("params", params))
    n_color = params.shape[1] // 2
    if x.shape[1] == 1:
        x = x.expand(-1, n_color, -1, -1)
    if x.shape[1] < n_color:
        raise ValueError(f"x must have at least {n_color} colour channels for params {tuple(params.shape)}, "
                         f"got {x.shape[1]} channels")
    return x, n_color


def check_composite_inputs(layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                           background: Optional[torch.Tensor]) -> None:
    """Validate ``layers`` (L, B, C, H, W), ``masks`` (L, B, 1, H, W), ``occlusion`` (L, L, B), ``background``."""
    check_tensor(layers, "layers", ndim=5)
    L, B, C, H, W = layers.shape
    check_tensor(masks, "masks", ndim=5)
    check_shape(masks, "masks", (L, B, 1, H, W))
    check_tensor(occlusion, "occlusion", ndim=3)
    check_shape(occlusion, "occlusion", (L, L, B))
    check_same_device_dtype(("layers", layers), ("masks", masks), ("occlusion", occlusion))
    if background is not None:
        check_tensor(background, "background", ndim=4)
        check_shape(background, "background", (B, C, H, W))
        check_same_device_dtype(("layers", layers), ("background", background))


def check_candidate_inputs(layers: torch.Tensor, masks: torch.Tensor, backgrounds: Optional[torch.Tensor]) -> int:
    """Validate :func:`composite_candidates`' ``layers`` ``(K, B, C, H, W)``, ``masks`` ``(K, B, 1, H, W)``
    and ``backgrounds`` ``(M, B, C, H, W)`` or None; returns M (1 without backgrounds)."""
    check_tensor(layers, "layers", ndim=5)
    K, B, C, H, W = layers.shape
    check_tensor(masks, "masks", ndim=5)
    check_shape(masks, "masks", (K, B, 1, H, W))
    check_same_device_dtype(("layers", layers), ("masks", masks))
    if backgrounds is None:
        return 1
    check_tensor(backgrounds, "backgrounds", ndim=5)
    check_shape(backgrounds, "backgrounds", (None, B, C, H, W))
    check_same_device_dtype(("layers", layers), ("backgrounds", backgrounds))
    return backgrounds.shape[0]


def check_greedy_options(x: torch.Tensor, K: int, n_iter: object, empty_penalty: Optional[torch.Tensor]) -> None:
    """Validate the greedy search's ``n_iter`` (a positive int) and ``empty_penalty`` ``(K,)`` or None."""
    if not isinstance(n_iter, int) or isinstance(n_iter, bool) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive int, got {n_iter!r}")
    if empty_penalty is not None:
        check_tensor(empty_penalty, "empty_penalty", ndim=1)
        check_shape(empty_penalty, "empty_penalty", (K,))
        check_same_device_dtype(("x", x), ("empty_penalty", empty_penalty))


def _check_scene(x: torch.Tensor, L: int, occlusion: torch.Tensor, background: Optional[torch.Tensor],
                 named: list) -> None:
    B, C, H, W = x.shape
    check_tensor(occlusion, "occlusion", ndim=3)
    check_shape(occlusion, "occlusion", (L, L, B))
    named.append(("occlusion", occlusion))
    if background is not None:
        check_tensor(background, "background", ndim=4)
        check_shape(background, "background", (B, C, H, W))
        named.append(("background", background))
    check_same_device_dtype(*named)


def check_image_candidates(x: torch.Tensor, layers: torch.Tensor, masks: torch.Tensor, occlusion: torch.Tensor,
                           background: Optional[torch.Tensor], n_iter: object,
                           empty_penalty: Optional[torch.Tensor]) -> None:
    """Validate the image-space greedy signature: ``x`` ``(B, C, H, W)``, ``layers`` ``(L, K, B, C, H, W)``,
    ``masks`` ``(L, K, B, 1, H, W)``, ``occlusion`` ``(L, L, B)``, ``background`` ``(B, C, H, W)`` or None."""
    check_tensor(x, "x", ndim=4)
    B, C, H, W = x.shape
    check_tensor(layers, "layers", ndim=6)
    L, K = layers.shape[:2]
    check_shape(layers, "layers", (L, K, B, C, H, W))
    check_tensor(masks, "masks", ndim=6)
    check_shape(masks, "masks", (L, K, B, 1, H, W))
    _check_scene(x, L, occlusion, background, [("x", x), ("layers", layers), ("masks", masks)])
    check_greedy_options(x, K, n_iter, empty_penalty)


def check_sprite_space_inputs(x: torch.Tensor, sprites: torch.Tensor, params: torch.Tensor, occlusion: torch.Tensor,
                              background: Optional[torch.Tensor], noise: Optional[torch.Tensor],
                              lead: tuple[str, ...], noise_lead: tuple) -> None:
    """Validate the sprite-space signature shared by the render loss and greedy scoring.

    ``x`` is ``(B, C, H, W)``; ``sprites`` ``(*lead, B, C + E, h, w)`` with E = 1 (mask) or 2 (mask, canvas:
    with ``noise``); ``params`` ``(L, B, 3)``; ``occlusion`` ``(L, L, B)``; ``background`` ``(B, C, H, W)``
    or None; ``noise`` ``(*noise_lead, 1, H, W)`` or None.
    """
    check_tensor(x, "x", ndim=4)
    B, C, H, W = x.shape
    check_tensor(sprites, "sprites", ndim=len(lead) + 4)
    n_extra = 1 if noise is None else 2
    check_shape(sprites, "sprites", (*lead, B, C + n_extra, None, None))
    L = sprites.shape[0]
    check_tensor(params, "params", ndim=3)
    check_shape(params, "params", (L, B, 3))
    named = [("x", x), ("sprites", sprites), ("params", params)]
    if noise is not None:
        check_tensor(noise, "noise", ndim=len(noise_lead) + 3)
        check_shape(noise, "noise", (*noise_lead, 1, H, W))
        named.append(("noise", noise))
    _check_scene(x, L, occlusion, background, named)


def _is_meta(t: torch.Tensor) -> bool:
    # Fake/meta tensors (torch.compile tracing, register_fake) carry no data to inspect.
    return t.device.type == "meta" or type(t).__name__ == "FakeTensor"


MAX_FUSED_LAYERS = 16  # csrc/composite.h kMaxLayers; the Triton layer tiles are sized for the same bound


def check_max_layers(L: int, backend: str) -> None:
    """The fused backends keep a pixel's per-layer state in registers: at most 16 layers."""
    if L > MAX_FUSED_LAYERS:
        raise ValueError(f"backend {backend!r} takes at most {MAX_FUSED_LAYERS} layers, got {L}; "
                         "use backend='torch' for more")


def check_place_inputs(sprites: torch.Tensor, params: torch.Tensor, out_size: object,
                       noise: Optional[torch.Tensor]) -> tuple[int, int]:
    """Validate :func:`dtifast.ops.place_sprites`' ``sprites`` ``(N, C + E, h, w)`` (E = 1: mask; E = 2:
    mask and canvas, with ``noise``), ``params`` ``(N, 3)`` and ``noise`` ``(N, 1, H, W)``; returns out_size."""
    out_size = check_warp_inputs(sprites, params, 3, out_size, "zeros")
    n_extra = 1 if noise is None else 2
    if sprites.shape[1] <= n_extra:
        extras = "mask, canvas" if noise is not None else "mask"
        raise ValueError(f"sprites must have C colour channels + {n_extra} ({extras}), got {sprites.shape[1]} channels")
    if noise is not None:
        check_tensor(noise, "noise", ndim=4)
        check_shape(noise, "noise", (sprites.shape[0], 1, *out_size))
        check_same_device_dtype(("sprites", sprites), ("noise", noise))
    return out_size


def assert_finite(t: torch.Tensor, name: str) -> None:
    """Stop on NaN/inf in ``t`` without reading it back to the host.

    On the CPU the check runs at once and raises ``ValueError``; on a GPU it is a device-side assertion
    queued with the other kernels (no sync), which fails the process at its next synchronisation if a
    value is not finite. (The trainer also checks each batch on the host before moving it to the GPU,
    so that a bad batch gets a clear message there.)
    """
    if _is_meta(t) or t.numel() == 0:
        return
    message = f"{name} contains NaN or inf values"
    if torch.compiler.is_compiling():
        torch._assert_async(torch.isfinite(t).all(), message)
        return
    try:
        torch._assert_async(torch.isfinite(t).all(), message)
    except RuntimeError as err:
        raise ValueError(message) from err
