"""Initial values of sprites, masks and backgrounds (upstream's ``proto_init``/``mask_init``/``bkg_init``)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

PROTO_INITS = ("constant", "gaussian", "soup", "random_color", "sample", "mean")
MASK_INITS = ("constant", "gaussian", "random")


def gaussian_window(size: Sequence[int], std: float) -> torch.Tensor:
    """``(h, w)`` separable Gaussian ``exp(-½ (n / std)²)`` centred on the image (peak 1), as scipy's window."""
    def window(m: int) -> torch.Tensor:
        n = torch.arange(m, dtype=torch.float64) - (m - 1) / 2
        return torch.exp(-0.5 * (n / std) ** 2)
    return torch.outer(window(size[0]), window(size[1])).float()


def _need(images: Optional[torch.Tensor], mode: str) -> torch.Tensor:
    if images is None or images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"init {mode!r} needs init_images (N, C, H, W) from the dataset, got "
                         f"{None if images is None else tuple(images.shape)}")
    return images


def init_images(n: int, mode: str, n_channels: int, size: Sequence[int], value: float,
                std: Optional[float] = None, images: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``(n, C, h, w)`` initial sprites or backgrounds.

    Args:
        n: how many.
        mode: ``constant`` (``value``), ``gaussian`` (window of ``std``), ``soup`` (``value + U[0,1)``),
            ``random_color`` (one random colour each), ``sample`` (random dataset images, resized),
            ``mean`` (the mean of up to 100 dataset images, resized).
        n_channels, size: C and ``(h, w)``.
        value: the constant (upstream: 0.9 for sprites, 0.5 for backgrounds).
        std: Gaussian width for ``gaussian``.
        images: dataset images ``(N, C, H, W)`` for ``sample`` and ``mean``.
    """
    size = tuple(size)
    if mode == "constant":
        return torch.full((n, n_channels, *size), float(value))
    if mode == "gaussian":
        if std is None:
            raise ValueError("init 'gaussian' needs model.gaussian_weights_std")
        return gaussian_window(size, std).expand(n, n_channels, *size).clone()
    if mode == "soup":
        return torch.rand(n, n_channels, *size, generator=generator) + value
    if mode == "random_color":
        return torch.ones(n, n_channels, *size) * torch.rand(n, n_channels, 1, 1, generator=generator)
    if mode in ("sample", "mean"):
        imgs = _need(images, mode).float()
        if mode == "sample":
            idx = torch.randint(len(imgs), (n,), generator=generator)
            picked = imgs[idx]
        else:
            picked = imgs[:100].mean(0, keepdim=True).expand(n, -1, -1, -1)
        if tuple(picked.shape[-2:]) != size:
            picked = torch.nn.functional.interpolate(picked, size, mode="bilinear", align_corners=False)
        return picked.contiguous().clone()
    raise ValueError(f"unknown init {mode!r}; expected one of {PROTO_INITS}")


def init_masks(n: int, mode: str, size: Sequence[int], std: Optional[float] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``(n, 1, h, w)`` initial masks: ``constant`` ones, ``gaussian`` window, or ``random`` U[0,1)."""
    size = tuple(size)
    if mode == "constant":
        return torch.ones(n, 1, *size)
    if mode == "gaussian":
        if std is None:
            raise ValueError("mask_init 'gaussian' needs model.gaussian_weights_std")
        return gaussian_window(size, std).expand(n, 1, *size).clone()
    if mode == "random":
        return torch.rand(n, 1, *size, generator=generator)
    raise ValueError(f"unknown mask_init {mode!r}; expected one of {MASK_INITS}")
