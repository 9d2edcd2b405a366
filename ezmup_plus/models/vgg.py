"""VGG11 for CIFAR-10 as the muP reproduction scales it: VGG11's layer pattern, channels a multiple of ``width``."""

from __future__ import annotations

import torch
from torch import nn

PATTERN = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "G")
"""VGG11's configuration A (64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M) in units of its first stage;
G, the last pool, is global: on 32x32 images it is the fifth 2x2 pool, and smaller images (the tracer's
16x16 guess) pass too."""


class VGG11(nn.Module):
    """Eight 3x3 convolutions with ReLU and five max-pools (32x32 -> 1x1), then the classifier head:
    two hidden layers of ``5 * width`` with dropout, and the readout.

    ``width`` is the first stage's channel count: the reproduction's base model is ``VGG11(4)``
    (stages of 4, 8, 16 and 32 channels, a head of 20); width multiplier m is ``VGG11(4 * m)``.
    The init is torchvision's VGG init (Kaiming-normal convolutions, N(0, 0.01) linears, zero biases).
    """

    def __init__(self, width: int, in_channels: int = 3, num_classes: int = 10, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in PATTERN:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            elif item == "G":
                layers.append(nn.AdaptiveMaxPool2d(1))
            else:
                layers += [nn.Conv2d(channels, item * width, 3, padding=1), nn.ReLU()]
                channels = item * width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(channels, 5 * width), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(5 * width, 5 * width), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(5 * width, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))
