"""Every tensor is brought to its planned std, whatever the factory's init law, in width and in depth.

One small residual net written with each common init; the built stds at 4x and 16x the base width and
at 4x the base depth are checked against numbers worked out by hand here (muP, base width 32, base
depth 2: hidden x m^-1/2, readout x m^-1, embedding and biases x1, and the residual branch output, weight
and bias, x (L/L0)^-1; all relative to the factory's own std at the BASE width and depth).
"""

import math
import re

import pytest
import torch
from torch import nn

import ezmup_plus as ezp

BASE_W, BASE_L, VOCAB, OUT = 32, 2, 16, 4


class InitNet(nn.Module):
    """Embedding, ``depth`` residual blocks x + fc(relu(x)), readout; drawn by ``init``."""

    def __init__(self, width, depth=BASE_L, init="default"):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.out = nn.Linear(width, OUT)
        weights = [b.weight for b in self.blocks]
        if init == "normal":
            for p in (self.emb.weight, *weights, self.out.weight):
                nn.init.normal_(p, std=0.02)
            for b in (*self.blocks, self.out):
                nn.init.zeros_(b.bias)
        elif init == "d_sqrt":
            nn.init.normal_(self.emb.weight, std=width**-0.5)
        elif init == "xavier":
            for p in (self.emb.weight, *weights, self.out.weight):
                nn.init.xavier_uniform_(p)
        elif init == "kaiming":
            for p in (*weights, self.out.weight):
                nn.init.kaiming_normal_(p, nonlinearity="relu")
        elif init == "trunc":
            for p in (*weights, self.out.weight):
                nn.init.trunc_normal_(p, std=0.02)
        elif init == "orthogonal":
            for p in weights:
                nn.init.orthogonal_(p)
        elif init == "zero_readout":
            nn.init.zeros_(self.out.weight)
        elif init == "n_layer":  # GPT-2 / Megatron: the branch output's std reads the depth
            for p in weights:
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * depth))

    def forward(self, idx):
        x = self.emb(idx)
        for block in self.blocks:
            x = x + block(torch.relu(x))
        return self.out(x)


def linear_default(fan_in):  # PyTorch's U(+-1/sqrt(fan_in)) for weights and biases
    return 1 / math.sqrt(3 * fan_in)


BASE_STD = {  # init -> tensor -> the factory's own std at the base width and depth, worked out by hand
    "default": {"emb": 1.0, "hidden": linear_default(BASE_W), "bias": linear_default(BASE_W),
                "out": linear_default(BASE_W)},
    "normal": {"emb": 0.02, "hidden": 0.02, "bias": None, "out": 0.02},
    "d_sqrt": {"emb": BASE_W**-0.5, "hidden": linear_default(BASE_W), "bias": linear_default(BASE_W),
               "out": linear_default(BASE_W)},
    "xavier": {"emb": math.sqrt(2 / (VOCAB + BASE_W)), "hidden": math.sqrt(2 / (2 * BASE_W)),
               "bias": linear_default(BASE_W), "out": math.sqrt(2 / (OUT + BASE_W))},
    "kaiming": {"emb": 1.0, "hidden": math.sqrt(2 / BASE_W), "bias": linear_default(BASE_W),
                "out": math.sqrt(2 / BASE_W)},
    "trunc": {"emb": 1.0, "hidden": 0.02, "bias": linear_default(BASE_W), "out": 0.02},  # +-2 is 100 sigma
    "orthogonal": {"emb": 1.0, "hidden": BASE_W**-0.5, "bias": linear_default(BASE_W),
                   "out": linear_default(BASE_W)},
    "zero_readout": {"emb": 1.0, "hidden": linear_default(BASE_W), "bias": linear_default(BASE_W), "out": None},
    "n_layer": {"emb": 1.0, "hidden": 0.02 / math.sqrt(2 * BASE_L), "bias": linear_default(BASE_W),
                "out": linear_default(BASE_W)},
}


def expected(init, width, depth):
    """muP's target std per tensor at (width, depth), from the base stds above."""
    m, m_depth, base = width / BASE_W, depth / BASE_L, BASE_STD[init]
    return {"emb": base["emb"], "hidden": base["hidden"] / math.sqrt(m) / m_depth,
            "bias": None if base["bias"] is None else base["bias"] / m_depth,
            "out": None if base["out"] is None else base["out"] / m}


def measured(model):
    std = lambda t: float(t.detach().std())  # noqa: E731
    hidden = torch.cat([b.weight.detach().flatten() for b in model.blocks])
    bias = torch.cat([b.bias.detach().flatten() for b in model.blocks])
    return {"emb": std(model.emb.weight), "hidden": float(hidden.std()), "bias": float(bias.std()),
            "out": std(model.out.weight)}


@pytest.mark.parametrize("init", sorted(BASE_STD))
def test_built_std_is_the_hand_worked_target_at_4x_16x_width_and_4x_depth(init):
    f = ezp.wrap(InitNet, base_width=BASE_W, base_depth=BASE_L, init=init)
    torch.manual_seed(0)
    for width, depth in ((4 * BASE_W, BASE_L), (16 * BASE_W, BASE_L), (4 * BASE_W, 4 * BASE_L)):
        model = f(width=width, depth=depth)
        got, want = measured(model), expected(init, width, depth)
        for name, target in want.items():
            if target is None:  # a constant the factory draws (zero biases, a zero readout): kept as built
                assert got[name] == 0.0, (init, width, depth, name)
            else:  # 6 sigma of the sampling error of a std over these many entries
                rel = 6 * 0.71 / math.sqrt({"emb": VOCAB * width, "hidden": depth * width**2,
                                            "bias": depth * width, "out": OUT * width}[name]) + 0.01
                assert got[name] == pytest.approx(target, rel=rel), (init, width, depth, name)
        assert ezp.check_init(model).ok, str(ezp.check_init(model))


def test_at_base_nothing_is_rescaled_whatever_the_init():
    for init in sorted(BASE_STD):
        torch.manual_seed(3)
        ours = ezp.wrap(InitNet, base_width=BASE_W, base_depth=BASE_L, init=init)(width=BASE_W, depth=BASE_L)
        torch.manual_seed(3)
        plain = InitNet(BASE_W, BASE_L, init)
        assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), plain.parameters())), init


def test_the_plan_table_says_how_each_init_is_reached():
    f = ezp.wrap(InitNet, base_width=BASE_W, base_depth=BASE_L, init="zero_readout")
    plan = f.plan(width=128)
    assert (plan["blocks.0.weight"].init, plan["out.weight"].init, plan["out.bias"].init) == ("law", "keep", "law")
    text = str(plan)
    assert re.search(r"init_std +init ", text) and re.search(rf"{BASE_STD['default']['bias']:.4g} +law", text)


def test_an_identity_init_is_kept_and_said_so():
    def identity(width):
        net = nn.Sequential(nn.Linear(8, width), nn.Linear(width, width), nn.Linear(width, 1))
        nn.init.eye_(net[1].weight)
        return net

    f = ezp.wrap(identity, base_width=32)
    assert f.plan(width=128)["1.weight"].init == "keep" and "1.weight" in str(f.plan(width=128))
    assert torch.equal(f(width=128)[1].weight, torch.eye(128))


def test_a_one_element_bias_drawn_from_a_width_law_is_rescaled_not_kept():
    """nn.Linear(w, 1)'s bias is one number drawn U(+-1/sqrt(w)): it is planned like any random tensor."""
    f = ezp.wrap(lambda width: nn.Sequential(nn.Linear(8, width), nn.Linear(width, 1)), base_width=32)
    t = f.plan(width=512)["1.bias"]
    assert t.init == "law" and t.init_std == pytest.approx(linear_default(32))
    assert t.drawn_std == pytest.approx(linear_default(512))
    biases = torch.cat([(torch.manual_seed(s), f(width=512)[1].bias.detach())[1] for s in range(400)])
    assert float(biases.std()) == pytest.approx(linear_default(32), rel=0.1)


def test_an_init_the_reader_cannot_follow_is_measured_and_rescaled_relatively():
    class Cumulative(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.inp, self.hidden, self.out = nn.Linear(8, width), nn.Linear(width, width), nn.Linear(width, 1)
            with torch.no_grad():
                self.hidden.weight.exp_()  # an op the reader does not model

        def forward(self, x):
            return self.out(self.hidden(self.inp(x)))

    plan = ezp.wrap(Cumulative, base_width=32).plan(width=128)
    t = plan["hidden.weight"]
    assert t.init == "relative" and t.init_factor == pytest.approx(0.5) and t.drawn_std is None
    assert re.search(r"hidden.weight .* x0.5 +relative", str(plan))
