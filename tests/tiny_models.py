"""Small models the tests share."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class TiedLM(nn.Module):
    """Embedding tied to the readout: the TP5 Table 8 case."""

    def __init__(self, width, vocab=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(torch.relu(self.hidden(self.emb(idx))))


class HalfBranch(nn.Module):
    """A branch output that owns no weight of its own: the multiplier must be a forward hook on it."""

    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return 0.5 * self.fc(x)


class HookResNet(nn.Module):
    def __init__(self, width, depth):
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.blocks = nn.ModuleList(HalfBranch(width) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(torch.tanh(x))
        return self.out(x)


def rotary(x):
    """A rotary embedding on the head dim: slices, a concatenation and products with cos/sin tables."""
    angle = torch.arange(x.shape[-2], device=x.device)[:, None] * 0.1
    half = x.shape[-1] // 2
    return x * angle.cos() + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * angle.sin()


class Attention(nn.Module):
    """Attention from a fused or unfused projection, computed by ``kernel``: "matmul" (q @ k^T / sqrt(d), softmax),
    "sdpa" (its default scale), "softcap" (Gemma-2's: logits x ``scaling``, tanh-capped) or "baddbmm" (Bloom's)."""

    def __init__(self, width, heads, kernel, fused, q_norm, logit_mult):
        super().__init__()
        self.heads, self.kernel, self.fused, self.logit_mult = heads, kernel, fused, logit_mult
        self.scaling = logit_mult / math.sqrt(width // heads)  # only "softcap" uses it; a decoy for the others
        self.qkv = nn.Linear(width, 3 * width) if fused else None
        self.q, self.k, self.v = (None, None, None) if fused else (nn.Linear(width, width) for _ in range(3))
        self.q_norm = nn.LayerNorm(width) if q_norm else None

    def forward(self, x):
        b, t, c = x.shape
        d = c // self.heads
        q, k, v = self.qkv(x).split(c, dim=-1) if self.fused else (self.q(x), self.k(x), self.v(x))
        q = self.q_norm(q) if self.q_norm is not None else q
        q, k, v = (z.view(b, t, self.heads, d).transpose(1, 2) for z in (q, k, v))
        q, k = rotary(q), rotary(k)
        if self.kernel == "sdpa":
            scale = None if self.logit_mult == 1 else self.logit_mult / d**0.5  # None: the kernel's 1/sqrt(d)
            y = F.scaled_dot_product_attention(q, k, v, scale=scale)
        elif self.kernel == "softcap":
            y = (torch.tanh((q @ k.transpose(-2, -1)) * self.scaling / 30.0) * 30.0).softmax(-1) @ v
        elif self.kernel == "baddbmm":
            q, k, v = (z.reshape(b * self.heads, t, d) for z in (q, k, v))
            scores = torch.zeros(b * self.heads, t, t).baddbmm(q, k.transpose(1, 2), alpha=self.logit_mult / d**0.5)
            probs = scores.view(b, self.heads, t, t).softmax(-1)  # viewed per head before the softmax, as Bloom does
            y = (probs.view(b * self.heads, t, t) @ v).view(b, self.heads, t, d)
        else:
            y = ((q @ k.transpose(-2, -1)) * self.logit_mult / math.sqrt(d)).softmax(-1) @ v
        return y.transpose(1, 2).reshape(b, t, c)


class TinyTransformer(nn.Module):
    def __init__(self, width, heads=2, kernel="matmul", fused=False, q_norm=False, logit_mult=1.0):
        super().__init__()
        self.emb = nn.Embedding(16, width)
        self.attn = Attention(width, heads, kernel, fused, q_norm, logit_mult)
        self.out = nn.Linear(width, 16)

    def forward(self, idx):
        return self.out(self.attn(self.emb(idx)))


class DenseMoE(nn.Module):
    """Mixture of experts written by hand: experts as (experts, w, 4w) tensors used through einsum, every token
    through every expert and weighted by a softmax router ``Linear(w, experts)``."""

    def __init__(self, width, experts=4, vocab=16, expert_width=None):
        super().__init__()
        hidden = 4 * width if expert_width is None else expert_width
        self.emb = nn.Embedding(vocab, width)
        self.router = nn.Linear(width, experts, bias=False)
        self.w_up = nn.Parameter(torch.randn(experts, width, hidden) / width**0.5)
        self.w_down = nn.Parameter(torch.randn(experts, hidden, width) / hidden**0.5)
        self.out = nn.Linear(width, vocab)

    def forward(self, idx):
        x = self.emb(idx)
        gates = self.router(x).softmax(-1)
        h = torch.relu(torch.einsum("btw,ewf->btef", x, self.w_up))
        y = torch.einsum("btef,efw->btew", h, self.w_down)
        return self.out(x + torch.einsum("btew,bte->btw", y, gates))


class IndexAddMoE(DenseMoE):
    """The same experts behind top-1 routing: ``nonzero`` picks each expert's tokens (no shape on meta),
    ``index_add_`` writes the results back."""

    def forward(self, idx):
        x = self.emb(idx)
        tokens = x.flatten(0, 1)
        weight, expert = self.router(tokens).softmax(-1).max(-1)
        y = torch.zeros_like(tokens)
        for e in range(self.w_up.shape[0]):
            rows = (expert == e).nonzero().squeeze(-1)
            h = torch.relu(tokens[rows] @ self.w_up[e]) @ self.w_down[e]
            y.index_add_(0, rows, h * weight[rows, None])
        return self.out(x + y.view_as(x))
