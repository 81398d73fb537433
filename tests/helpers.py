"""Tiny models and classifiers for the tests."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from art_latent import LatentClassifier


class Residual(nn.Module):
    """A residual block whose final activation is shared with the conv branch (a reused module)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + x)


class TinyNet(nn.Module):
    """Nested Sequentials, a residual block, a functional activation: 1x8x8 inputs, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            OrderedDict(unit=nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 4, 3, padding=1), bn=nn.BatchNorm2d(4),
                                                       act=nn.ELU())))
        )
        self.res = Residual(4)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.res(self.stem(x)))
        x = torch.relu(self.fc(x.flatten(1)))  # functional activation: hooked through its producer, fc
        return self.head(x)


def make_classifier(model: nn.Module | None = None, lr: float = 0.05, **kwargs) -> LatentClassifier:
    torch.manual_seed(0)
    model = TinyNet() if model is None else model
    kwargs.setdefault("clip_values", (0.0, 1.0))
    return LatentClassifier(
        model, nn.CrossEntropyLoss(), (1, 8, 8), 3, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
        device_type="cpu", **kwargs
    )
