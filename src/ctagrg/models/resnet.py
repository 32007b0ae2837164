"""A 2D ResNet-18 trunk (no avgpool, no fc) whose state-dict keys are torchvision's.

Written here rather than imported because torchvision is not a dependency (it pins torch builds); keeping
torchvision's parameter names (``conv1``, ``bn1``, ``layer1.0.conv1`` ...) means an ImageNet ``resnet18`` state dict
loads without renaming. ``width`` scales every layer (64 = the standard network) so the demo can use a narrow trunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ResNetConfig:
    """ResNet trunk shape. ``width=64, layers=(2, 2, 2, 2)`` is torchvision's resnet18 (11.2M parameters)."""

    in_channels: int = 3
    width: int = 64
    layers: tuple[int, int, int, int] = (2, 2, 2, 2)
    # resnet: torchvision's stem, 7x7 stride-2 conv + 3x3 stride-2 max-pool (/4). light: one 3x3 stride-2 conv, no
    # max-pool (/2): for small inputs (the CPU demo's 128² slices), where /4 leaves a 4 mm nodule under one pixel.
    stem: str = "resnet"

    def __post_init__(self) -> None:
        if self.stem not in ("resnet", "light"):
            raise ValueError(f"ResNetConfig.stem: expected resnet or light, got {self.stem!r}")

    @property
    def out_channels(self) -> int:
        return self.width * 8

    @property
    def is_resnet18(self) -> bool:
        """True when this is torchvision's resnet18 shape, the one its ImageNet weights fit."""
        return (self.in_channels, self.width, tuple(self.layers), self.stem) == (3, 64, (2, 2, 2, 2), "resnet")


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNetTrunk(nn.Module):
    """(N, in_channels, H, W) -> (N, 8 * width, ceil(H / 32), ceil(W / 32)); 480 x 480 -> 15 x 15.

    With ``stem="light"`` the output is (N, 8 * width, ceil(H / 16), ceil(W / 16)); 128 x 128 -> 8 x 8.
    """

    def __init__(self, config: ResNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ResNetConfig()
        w = config.width
        light = config.stem == "light"
        self.conv1 = nn.Conv2d(config.in_channels, w, 3 if light else 7, stride=2, padding=1 if light else 3,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.Identity() if light else nn.MaxPool2d(3, stride=2, padding=1)
        chans = [w, w * 2, w * 4, w * 8]
        in_ch = w
        for i, (ch, n) in enumerate(zip(chans, config.layers, strict=True)):
            blocks = [BasicBlock(in_ch, ch, stride=1 if i == 0 else 2)] + [BasicBlock(ch, ch) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            in_ch = ch
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so an untrained trunk behaves like torchvision's resnet18(weights=None)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
