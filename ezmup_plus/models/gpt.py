"""A nanoGPT-style causal transformer: pre-LN blocks, fused QKV, ``F.scaled_dot_product_attention``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """x + attn(ln(x)), then x + mlp(ln(x)); each branch ends in a ``c_proj`` linear."""

    def __init__(self, width: int, n_head: int):
        super().__init__()
        if width % n_head:
            raise ValueError(f"width={width} must be a multiple of n_head={n_head}")
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, n_head)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Attention(nn.Module):
    def __init__(self, width: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.scaling = (width // n_head) ** -0.5  # the logit scale, an attribute as in Hugging Face models
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class GPT(nn.Module):
    """Token + position embeddings, ``depth`` blocks, final LayerNorm, untied readout."""

    def __init__(self, width: int, depth: int = 2, vocab_size: int = 65, block_size: int = 64, n_head: int = 4):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, width)
        self.wpe = nn.Embedding(block_size, width)
        self.blocks = nn.ModuleList(Block(width, n_head) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        """GPT-2's init: N(0, 0.02) weights, zero biases."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))
