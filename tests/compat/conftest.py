# SPDX-License-Identifier: MIT
"""Models for the pytorchfi differential tests: a small CNN, a torchvision-like ResNet (BasicBlock
with its ReLU called twice, a downsampling shortcut, BatchNorm with non-trivial statistics) and a
model that calls one convolution twice."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
    )


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock (``self.relu`` runs twice per forward pass)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def tiny_resnet() -> nn.Module:
    model = TinyResNet()
    g = torch.Generator().manual_seed(7)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


class SharedConv(nn.Module):
    """One convolution called twice: two pytorchfi layers, one module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.stem = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.relu(self.conv(self.stem(x))))
        return self.head(x.flatten(1))


#: name -> (builder, input shape, layer_types)
MODELS = {
    "cnn": (small_cnn, [3, 8, 8], [nn.Conv2d, nn.Linear]),
    "cnn_default_types": (small_cnn, [3, 8, 8], None),
    "resnet": (tiny_resnet, [3, 8, 8], [nn.Conv2d, nn.Linear]),
    "resnet_all": (tiny_resnet, [3, 8, 8], ["all"]),
    "shared": (SharedConv, [3, 8, 8], [nn.Conv2d, nn.Linear]),
    "cnn_float64": (lambda: small_cnn().double(), [3, 8, 8], [nn.Conv2d, nn.Linear]),
    "cnn_bfloat16": (lambda: small_cnn().bfloat16(), [3, 8, 8], [nn.Conv2d, nn.Linear]),
}


@pytest.fixture(scope="session")
def pfi_models() -> dict:
    """``{name: (builder, input shape, layer_types)}`` of the differential tests."""
    return MODELS
