"""CompleteP as its authors define it (Dey et al. 2025, and their nanoGPT-mup "completep" branch), written out by
hand as a second GPT, against ``wrap(GPT, base_depth=2)(depth=8)``.

The reference multiplies every residual branch by m_L^-alpha in the forward (alpha = 1) and trains with AdamW at
hidden LR x m_N^-1 m_L^(alpha-1), hidden weight decay x m_N (lr*wd kept) and eps x m_N^-1 m_L^-alpha inside the
blocks (the paper's Eq. 40); here only the depth changes (m_N = 1). ezmup_plus folds the branch multiplier into each
branch's c_proj (init and LR x m_L^-1, eps x m_L): at equal (mapped) weights the outputs are equal, and so are 10
AdamW steps. The authors' script also exempts norms and biases from weight decay, a training recipe outside the
parametrization; here every tensor decays in both.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ezmup_plus as ezp
from ezmup_plus.models.gpt import GPT

WIDTH, HEADS, VOCAB, BLOCK, BASE_DEPTH, DEPTH, ALPHA = 32, 4, 65, 16, 2, 8, 1.0
LR, WD, EPS, STEPS = 1e-2, 0.1, 1e-8, 10
M_L = DEPTH / BASE_DEPTH


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn, self.c_proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (z.view(b, t, HEADS, c // HEADS).transpose(1, 2) for z in self.c_attn(x).split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / math.sqrt(c // HEADS))
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    """x + m_L^-alpha attn(ln(x)), then x + m_L^-alpha mlp(ln(x)): CompleteP's residual branches."""

    def __init__(self):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = nn.LayerNorm(WIDTH), Attention(), nn.LayerNorm(WIDTH), MLP()

    def forward(self, x):
        x = x + M_L**-ALPHA * self.attn(self.ln_1(x))
        return x + M_L**-ALPHA * self.mlp(self.ln_2(x))


class CompletePGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, WIDTH), nn.Embedding(BLOCK, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.ln_f = nn.LayerNorm(WIDTH)
        self.lm_head = nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def completep_adamw(model):
    """The authors' groups at m_N = 1: LR x m_L^(alpha-1) and eps x m_L^-alpha inside the blocks, x1 outside."""
    inside = [p for n, p in model.named_parameters() if n.startswith("blocks.")]
    outside = [p for n, p in model.named_parameters() if not n.startswith("blocks.")]
    return torch.optim.AdamW([
        {"params": inside, "lr": LR * M_L ** (ALPHA - 1), "eps": EPS * M_L**-ALPHA},
        {"params": outside, "lr": LR, "eps": EPS},
    ], lr=LR, weight_decay=WD, foreach=False)


def mapped(ours):
    """The reference with our weights, each branch output projection unfolded (x m_L^alpha)."""
    ref = CompletePGPT()
    state = {n: p * M_L**ALPHA if ".c_proj." in n else p for n, p in ours.state_dict().items()}
    ref.load_state_dict(state)
    return ref


def test_completep_by_hand_equals_the_folded_plan():
    torch.manual_seed(0)
    ours = ezp.wrap(GPT, base_width=WIDTH, base_depth=BASE_DEPTH, width_multiple=HEADS, n_head=HEADS,
                    vocab_size=VOCAB, block_size=BLOCK)(width=WIDTH, depth=DEPTH)
    plan = ezp.plan_of(ours)
    assert plan.depth_alpha == ALPHA and plan["blocks.3.mlp.c_proj.weight"].fold == pytest.approx(1 / M_L)
    ref = mapped(ours)
    g = torch.Generator().manual_seed(0)
    data = [torch.randint(0, VOCAB, (2, BLOCK + 1), generator=g) for _ in range(STEPS)]
    with torch.no_grad():
        assert torch.allclose(ours(data[0][:, :-1]), ref(data[0][:, :-1]), rtol=1e-6, atol=1e-7)
    opts = ezp.get_mup_optimizer(ours, lr=LR, optimizer="adamw", weight_decay=WD, foreach=False), completep_adamw(ref)
    for tokens in data:
        x, y = tokens[:, :-1], tokens[:, 1:]
        losses = []
        for model, opt in zip((ours, ref), opts):
            opt.zero_grad()
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    for (n, p), q in zip(mapped(ours).named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), n
