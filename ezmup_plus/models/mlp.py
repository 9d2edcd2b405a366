"""A plain MLP: in -> w -> ... -> w -> out, the muP reproduction's regression model."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``n_hidden`` hidden layers of size ``width`` with ReLU; PyTorch's default init."""

    def __init__(self, width: int, in_features: int = 8, out_features: int = 1, n_hidden: int = 2, bias: bool = True):
        super().__init__()
        sizes = [in_features] + [width] * n_hidden
        self.hidden = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(sizes[:-1], sizes[1:]))
        self.readout = nn.Linear(width, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.readout(x)
