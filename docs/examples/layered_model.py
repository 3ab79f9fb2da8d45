"""A layered model that is not DTI-Sprites, built from dtifast's fused ops.

"Stickers": every image is explained as L copies of one learned RGBA sticker, each placed by an
affine transform that a small network predicts from the image, composited front to back over a
learned background colour. It uses :class:`dtifast.nn.AffineWarp` (sprite → image, batched over
L·B samples that share the one sticker), :class:`dtifast.nn.LayerCompositor` (fixed depth order) and
trains with Adam for a few steps.

Run: ``python docs/examples/layered_model.py [--backend triton] [--steps 20]`` (on CPU the Triton
backend needs ``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import argparse
from typing import Optional

import torch
from torch import nn

from dtifast.nn import AffineWarp, LayerCompositor


class Stickers(nn.Module):
    def __init__(self, n_layers: int = 2, img_size: int = 16, sticker_size: int = 8, backend: Optional[str] = None):
        super().__init__()
        self.L = n_layers
        self.sticker = nn.Parameter(torch.rand(1, 4, sticker_size, sticker_size))   # RGB + alpha logits
        self.background = nn.Parameter(torch.zeros(3))
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * img_size * img_size, 64), nn.ReLU(),
                                 nn.Linear(64, n_layers * 6))
        nn.init.zeros_(self.net[-1].weight)
        with torch.no_grad():  # start with the stickers at half size, spread horizontally
            bias = torch.zeros(n_layers, 6)
            bias[:, 0] = bias[:, 4] = 1.0
            bias[:, 2] = torch.linspace(-0.5, 0.5, n_layers)
            self.net[-1].bias.copy_(bias.flatten())
        self.warp = AffineWarp((img_size, img_size), backend=backend)
        self.composite = LayerCompositor(backend=backend)
        self.register_buffer("order", torch.tril(torch.ones(n_layers, n_layers), -1))  # layer j hides k < j

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L = x.shape[0], self.L
        params = self.net(x).view(B * L, 6)
        rgba = torch.cat([self.sticker[:, :3].clamp(0, 1), torch.sigmoid(self.sticker[:, 3:])], 1)
        placed = self.warp(rgba.expand(B * L, -1, -1, -1), params)                # (B·L, 4, H, W)
        placed = placed.view(B, L, 4, *placed.shape[-2:]).transpose(0, 1)         # (L, B, 4, H, W)
        background = self.background.view(1, 3, 1, 1).expand(B, 3, *x.shape[-2:])
        occlusion = self.order[..., None].expand(L, L, B)
        return self.composite(placed[:, :, :3].contiguous(), placed[:, :, 3:].contiguous(), occlusion, background)


def toy_images(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Two bright squares at random places on black."""
    x = torch.zeros(n, 3, size, size)
    for i in range(n):
        for _ in range(2):
            r, c = torch.randint(0, size - size // 4, (2,), generator=generator).tolist()
            x[i, :, r:r + size // 4, c:c + size // 4] = 0.9
    return x


def main(steps: int = 20, backend: Optional[str] = None, device: str = "cpu", size: int = 16,
         n_images: int = 8) -> list[float]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = Stickers(img_size=size, backend=backend).to(device)
    data = toy_images(n_images, size, g).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = ((model(data) - data) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--backend", default=None, help="torch | cpu | triton | cuda (default: the device's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    losses = main(args.steps, args.backend, args.device)
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {len(losses)} steps")
