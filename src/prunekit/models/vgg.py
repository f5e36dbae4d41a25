"""VGG-16-BN in the CIFAR form used by HRank and CHIP: four max-pools, then a global average pool and
a Linear-BN-ReLU-Linear classifier.

The global pool (HRank uses a fixed 2x2 average pool) lets 28x28 Fashion-MNIST and any side >= 16 work.
"""
from __future__ import annotations

from torch import Tensor, nn

from . import register_model
from .resnet_cifar import _init

CFG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class VGG(nn.Module):
    def __init__(self, cfg: list[int | str], in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(in_channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(in_channels, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                        nn.Linear(512, num_classes))
        _init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


@register_model("vgg16_bn")
def vgg16_bn(in_channels: int = 3, num_classes: int = 10, **kw) -> nn.Module:
    return VGG(CFG16, in_channels, num_classes, **kw)
