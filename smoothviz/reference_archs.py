"""The reference code's architectures and normalisation, rebuilt with the names of its state dicts.

Transcribed from locuslab/smoothing (Cohen et al. 2019): ``code/archs/cifar_resnet.py`` (from
bearpaw/pytorch-classification), ``code/datasets.py`` (NormalizeLayer and its CIFAR-10 and
ImageNet constants; SmoothAdv's InputCenterLayer), and MACER's ``model.py`` (its ResNet_Cifar of
width 1 has the same layers; its LeNet for MNIST). ResNet-50 is torchvision's, as the reference
code uses. ``model_sources`` loads checkpoints into these.
"""

from __future__ import annotations

import torch
from torch import nn

from smoothviz.errors import InvalidArgument

# The reference code's normalisation constants (locuslab/smoothing code/datasets.py).
NORMALISATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...] | None]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # SmoothAdv's InputCenterLayer: subtract the means only (some released models use it).
    "center-cifar10": ((0.4914, 0.4822, 0.4465), None),
    "center-imagenet": ((0.485, 0.456, 0.406), None),
}


class ReferenceNormalize(nn.Module):
    """The reference code's NormalizeLayer: (x - mean) / std per channel, or x - mean for SmoothAdv's
    InputCenterLayer (std None). The constants are not weights (the reference keeps them out of
    its state dict), so they are non-persistent buffers."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...] | None):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", None if std is None else torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean if self.std is None else (x - self.mean) / self.std


class ReferenceBasicBlock(nn.Module):
    """BasicBlock of the reference code's ``archs/cifar_resnet.py`` (bearpaw/pytorch-classification)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class ReferenceCifarResNet(nn.Module):
    """ResNet-(6n+2) of the reference code (and MACER's ResNet_Cifar, width 1): stages ``layer1``
    to ``layer3`` of 16/32/64 channels, 1x1-convolution + BN shortcuts where the shape changes,
    a fixed 8x8 average pool (so 32x32 inputs only) and ``fc``; names match their state dicts."""

    def __init__(self, depth: int, num_classes: int):
        super().__init__()
        if (depth - 2) % 6:
            raise InvalidArgument(f"reference CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.inplanes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [ReferenceBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [ReferenceBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x)
        return self.fc(x.view(x.size(0), -1))


class MacerLeNet(nn.Module):
    """MACER's LeNet for MNIST (``model.py``): two 5x5 convolutions (20, 50), dense 800 -> 500 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(4 * 4 * 50, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(nn.functional.relu(self.conv1(x)), 2, 2)
        x = nn.functional.max_pool2d(nn.functional.relu(self.conv2(x)), 2, 2)
        x = nn.functional.relu(self.fc1(x.view(-1, 4 * 4 * 50)))
        return self.fc2(x)
