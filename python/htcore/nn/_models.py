"""Small seeded torch networks used by the tests, the benchmarks and the demo.

Every builder takes ``seed`` (the torch generator seed of its initialisation, so the same call gives
the same weights on any machine) and returns a float32 module in train mode, for 28x28 images with
``in_channels`` channels (Fashion-MNIST: 1) and ``classes`` logits.

- `lenet`: the classic LeNet shape, an ``nn.Sequential`` (runs on the sequential runtime).
- `vgg_small`: three VGG stages (two 3x3 convolutions each), an ``nn.Sequential``.
- `resnet_small`: a ResNet with three stages of basic blocks (BatchNorm, residual additions), an
  ``nn.Module`` that ``torch.fx`` can trace (it converts to a runtime graph model).
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

from .._validation import check_int

_Module = TypeVar("_Module", bound=nn.Module)


def _seeded(build: Callable[[], _Module], seed: int) -> _Module:
    """``build()`` with torch's global RNG seeded by ``seed`` and restored afterwards."""
    seed = check_int(seed, "seed", low=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def lenet(in_channels: int = 1, classes: int = 10, seed: int = 0) -> nn.Sequential:
    """LeNet for 28x28 input: Conv 8 5x5, ReLU, MaxPool 2, Conv 16 5x5, ReLU, MaxPool 2, Flatten,
    Linear 256 -> ``classes``."""
    in_channels = check_int(in_channels, "in_channels", low=1)
    classes = check_int(classes, "classes", low=1)
    return _seeded(lambda: nn.Sequential(
        nn.Conv2d(in_channels, 8, 5), nn.ReLU(), nn.MaxPool2d(2),   # 28 -> 24 -> 12
        nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2),            # 12 -> 8 -> 4
        nn.Flatten(), nn.Linear(16 * 4 * 4, classes),
    ), seed)


def vgg_small(in_channels: int = 1, classes: int = 10, seed: int = 0) -> nn.Sequential:
    """A small VGG for 28x28 input: three stages of two 3x3 convolutions (padding 1) with 32, 64 and
    128 channels, each followed by ReLU; max pooling 2 after each stage (28 -> 14 -> 7 -> 3), then
    Flatten and Linear 128*3*3 -> ``classes``."""
    in_channels = check_int(in_channels, "in_channels", low=1)
    classes = check_int(classes, "classes", low=1)

    def build() -> nn.Sequential:
        modules: list[nn.Module] = []
        channels = in_channels
        for width in (32, 64, 128):
            for _ in range(2):
                modules += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
                channels = width
            modules.append(nn.MaxPool2d(2))
        modules += [nn.Flatten(), nn.Linear(128 * 3 * 3, classes)]
        return nn.Sequential(*modules)

    return _seeded(build, seed)


class BasicBlock(nn.Module):
    """A ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, plus the input (through a 1x1 conv + BN
    when the stride or the width changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """See `resnet_small`."""

    def __init__(self, in_channels: int, classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 16, 1))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.layer3 = nn.Sequential(BasicBlock(32, 64, 2), BasicBlock(64, 64, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet_small(in_channels: int = 1, classes: int = 10, seed: int = 0) -> ResNetSmall:
    """A small ResNet for 28x28 input (about 0.17 M parameters): stem conv 3x3 16 + BN + ReLU; three
    stages of two basic blocks with 16, 32 and 64 channels (the first block of stages 2 and 3 has
    stride 2 and a 1x1 conv + BN shortcut; 28 -> 14 -> 7); AdaptiveAvgPool2d(1), flatten, Linear
    64 -> ``classes``. Traceable by ``torch.fx``."""
    in_channels = check_int(in_channels, "in_channels", low=1)
    classes = check_int(classes, "classes", low=1)
    return _seeded(lambda: ResNetSmall(in_channels, classes), seed)
