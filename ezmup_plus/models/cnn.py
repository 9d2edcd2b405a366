"""A small VGG-style CNN: channels scale with ``width``, kernels are finite."""

from __future__ import annotations

import torch
from torch import nn


class CNN(nn.Module):
    """conv(3->w) -> conv(w->2w) -> pool -> conv(2w->2w) -> global pool -> linear(2w->classes)."""

    def __init__(self, width: int, in_channels: int = 3, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))
