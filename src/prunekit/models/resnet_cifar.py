"""CIFAR-style ResNet-20/56/110 (He et al. 2016, section 4.2), the usual pruning benchmark.

Shortcuts that change shape use a 1x1 conv + BN projection (option B) rather than zero-padding, so
every layer is an ordinary conv that Torch-Pruning can slice.
"""
from __future__ import annotations

from torch import Tensor, nn

from . import register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        widths, strides, in_planes = (16, 32, 64), (1, 2, 2), 16
        for i, (width, stride) in enumerate(zip(widths, strides), start=1):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, width, stride if j == 0 else 1))
                in_planes = width
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_model("resnet20")
def resnet20(in_channels: int = 3, num_classes: int = 10, **kw) -> nn.Module:
    return CifarResNet(20, in_channels, num_classes, **kw)


@register_model("resnet56")
def resnet56(in_channels: int = 3, num_classes: int = 10, **kw) -> nn.Module:
    return CifarResNet(56, in_channels, num_classes, **kw)


@register_model("resnet110")
def resnet110(in_channels: int = 3, num_classes: int = 10, **kw) -> nn.Module:
    return CifarResNet(110, in_channels, num_classes, **kw)
