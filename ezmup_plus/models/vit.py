"""A small Vision Transformer for CIFAR-10 as the muP reproduction scales it: eight heads whose size grows
with ``width``, sinusoidal positions, a class token."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_positions(tokens: int, width: int) -> torch.Tensor:
    """The Transformer's fixed encoding: sin on even features, cos on odd, wavelengths 2*pi..10000*2*pi."""
    position = torch.arange(tokens, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(tokens, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return table


class Attention(nn.Module):
    """Multi-head self-attention from one fused QKV projection; ``scaling`` is the logit scale given to the kernel."""

    def __init__(self, width: int, n_head: int, dropout: float):
        super().__init__()
        if width % n_head:
            raise ValueError(f"width={width} must be a multiple of n_head={n_head}")
        self.n_head = n_head
        self.scaling = (width // n_head) ** -0.5
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)
        return self.drop(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class Block(nn.Module):
    """Pre-LN: x + attn(ln(x)), then x + mlp(ln(x)); the MLP keeps the width (expansion factor ``mlp_ratio``)."""

    def __init__(self, width: int, n_head: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, n_head, dropout)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    """Patches (a strided convolution) plus fixed sinusoidal positions, a class token in front, ``depth``
    pre-LN blocks, a final LayerNorm and a linear readout of the class token.

    The reproduction's base model is ``ViT(32)``: patch size 4 on 32x32 images (64 patches), six blocks,
    eight heads of 4, MLP expansion 1, dropout 0.1. The heads stay eight, so the head size grows with the
    width (the 1/d_head attention rule applies).
    """

    def __init__(self, width: int, depth: int = 6, n_head: int = 8, patch_size: int = 4, image_size: int = 32,
                 in_channels: int = 3, num_classes: int = 10, mlp_ratio: int = 1, dropout: float = 0.1):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        tokens = (image_size // patch_size) ** 2 + 1
        self.patch = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, width))
        nn.init.normal_(self.cls_token, std=0.02)
        self.register_buffer("positions", sinusoidal_positions(tokens, width).unsqueeze(0), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(width, n_head, mlp_ratio, dropout) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1)
        x = self.drop(x + self.positions[:, : x.shape[1]])  # smaller images use the first positions
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x[:, 0]))
