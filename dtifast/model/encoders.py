"""Image encoders: CIFAR-style mini ResNets (20/32/44/56/110) and ResNet-18/34, written here.

torchvision does not install beside the CPU torch used on our machines, so the ResNets are defined in
this file. Layer order and names follow upstream's encoders (an ``nn.Sequential`` named ``encoder``),
so that the authors' checkpoints map onto them index by index.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

MINI_RESNET_DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
RESNET_LAYERS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
ENCODER_NAMES = tuple(MINI_RESNET_DEPTHS) + tuple(RESNET_LAYERS)


class _PadShortcut(nn.Module):
    """CIFAR ResNet "option A" shortcut: subsample by 2 and zero-pad the new channels."""

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class MiniBasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus an option-A shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = _PadShortcut(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _mini_resnet_layers(name: str, in_channels: int) -> list[nn.Module]:
    n_blocks = MINI_RESNET_DEPTHS[name]
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False),
                               nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
    in_planes = 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
        blocks = []
        for s in [stride] + [1] * (n_blocks - 1):
            blocks.append(MiniBasicBlock(in_planes, planes, s))
            in_planes = planes
        layers.append(nn.Sequential(*blocks))
    for m in nn.Sequential(*layers).modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    return layers


class BasicBlock(nn.Module):
    """ResNet-18/34 basic block with an optional 1×1 downsampling branch."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _resnet_layers(name: str, in_channels: int) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)]
    in_planes = 64
    for planes, n_blocks, stride in zip((64, 128, 256, 512), RESNET_LAYERS[name], (1, 2, 2, 2)):
        blocks = []
        for s in [stride] + [1] * (n_blocks - 1):
            blocks.append(BasicBlock(in_planes, planes, s))
            in_planes = planes
        layers.append(nn.Sequential(*blocks))
    for m in nn.Sequential(*layers).modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return layers


class Encoder(nn.Module):
    """Feature extractor ``(B, C, H, W) → (B, F)``: a ResNet trunk, optional adaptive average pool, flatten.

    Args:
        in_channels: image channels C.
        img_size: ``(H, W)``, used to compute the feature size ``out_features``.
        name: one of ``resnet20/32/44/56/110`` (CIFAR mini ResNets, for small images) or
            ``resnet18/34``.
        with_pool: ``True`` for a 1×1 adaptive pool, ``[h, w]`` for an h×w pool, ``False`` for none.
    """

    def __init__(self, in_channels: int, img_size: Sequence[int], name: str = "resnet32",
                 with_pool: Union[bool, Sequence[int]] = True):
        super().__init__()
        if name in MINI_RESNET_DEPTHS:
            layers = _mini_resnet_layers(name, in_channels)
        elif name in RESNET_LAYERS:
            layers = _resnet_layers(name, in_channels)
        else:
            raise ValueError(f"unknown encoder {name!r}; expected one of {ENCODER_NAMES}")
        if with_pool:
            size = tuple(with_pool) if isinstance(with_pool, (list, tuple)) else (1, 1)
            layers.append(nn.AdaptiveAvgPool2d(size))
        self.encoder = nn.Sequential(*layers)
        self.in_channels = in_channels
        # The mini ResNets' forward+backward on the CPU (float32, oneDNN) runs 13-28 % faster on NHWC input
        # (Tetrominoes, GTSRB, SVHN shapes, 1 and 2 threads); ResNet-18 on 64-128 px images runs 30-50 %
        # slower (CLEVR6, Horse, Instagram shapes), so ResNet-18 and 34 (the same blocks) keep NCHW.
        self.channels_last_on_cpu = name in MINI_RESNET_DEPTHS
        self.out_features = self._feature_size(in_channels, tuple(img_size))

    @torch.no_grad()
    def _feature_size(self, in_channels: int, img_size: tuple[int, int]) -> int:
        # Eval mode so that the dry run leaves the BatchNorm statistics untouched.
        was_training = self.training
        self.eval()
        n = self.encoder(torch.zeros(1, in_channels, *img_size)).numel()
        self.train(was_training)
        return int(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last_on_cpu and x.device.type == "cpu" and x.dtype == torch.float32:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.encoder(x).flatten(1)


def autocast_encoder(model: torch.nn.Module, device_type: str) -> None:
    """Run ``model.encoder`` under bf16 autocast and hand float32 features to the rest (``--amp bf16``).

    The encoder's convolutions are where bf16 pays; the transformation heads, the warps and the
    compositing stay in float32, where the greedy selection compares small reconstruction errors (and
    where the fused ops expect one dtype for images and parameters). Only this instance's ``forward`` is
    replaced, so the state dict and checkpoints are unchanged.
    """
    encoder = model.encoder
    inner = encoder.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            return inner(x).float()

    encoder.forward = forward
