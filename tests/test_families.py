"""Optimizer families at 4x width: per-tensor LR/WD/eps against hand tables, exact steps against
plain torch optimizers with hand-set LRs, mid-run state_dict resume, schedulers on the Muon hybrid,
a coordinate check, and the bad-input errors."""

import copy

import pytest
import torch
from torch import nn

import ezmup_plus as ezp
from ezmup_plus.hybrid import MuonHybrid
from ezmup_plus.models.mlp import MLP
from ezmup_plus.optim import OPTIMIZERS

BASE, LR, WD = 16, 1e-2, 0.1
NAMES = ["hidden.0.weight", "hidden.0.bias", "hidden.1.weight", "hidden.1.bias", "readout.weight", "readout.bias"]


class SignSGD(torch.optim.Optimizer):
    """A tiny sign-update optimizer (no eps), standing in for Lion-like packages torch does not ship."""

    def __init__(self, params, lr=1e-3, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.mul_(1 - g["lr"] * g["weight_decay"]).add_(p.grad.sign(), alpha=-g["lr"])


ezp.register_optimizer("signsgd", SignSGD, family="sign")


@pytest.fixture(scope="module")
def mlp():
    return ezp.wrap(MLP, base_width=BASE)


# LR multipliers at m_w = 4 for the names above, written out from the rules' derivation
LR_TABLE = {
    "sgd": [4, 4, 1, 4, 1 / 4, 1],
    "adamw": [1, 1, 1 / 4, 1, 1 / 4, 1],
    "nadam": [1, 1, 1 / 4, 1, 1 / 4, 1],
    "signsgd": [1, 1, 1 / 4, 1, 1 / 4, 1],
    "adafactor": [1, 1, 1 / 2, 1, 1, 1],
    "muon": [1, 1, 1, 1, 1 / 4, 1],  # Muon x1 on the hidden matrix, AdamW rules elsewhere
    "muon_rms": [1, 1, 1 / 2, 1, 1 / 4, 1],
}
EPS_TABLE = {"adamw": [1, 1, 1 / 4, 1, 1, 1], "nadam": [1, 1, 1 / 4, 1, 1, 1]}
COUPLED_WD = {"muon_rms": [1, 1, 2, 1, 1, 1]}  # WD x m_w^1/2 on the hidden matrix


def by_name(opt):
    return {n: g for g in opt.param_groups for n in g["param_names"]}


@pytest.mark.parametrize("name", sorted(LR_TABLE))
def test_effective_lr_wd_eps_at_4x(mlp, name):
    opt = ezp.get_mup_optimizer(mlp(width=4 * BASE), lr=LR, optimizer=name, weight_decay=WD)
    groups = by_name(opt)
    assert [groups[n]["lr"] for n in NAMES] == pytest.approx([LR * m for m in LR_TABLE[name]])
    assert [groups[n]["lr"] * groups[n]["weight_decay"] for n in NAMES] == pytest.approx([LR * WD] * 6)
    if name in EPS_TABLE:
        default = opt.defaults["eps"]
        assert [groups[n]["eps"] for n in NAMES] == pytest.approx([default * m for m in EPS_TABLE[name]])
    coupled = by_name(ezp.get_mup_optimizer(mlp(width=4 * BASE), lr=LR, optimizer=name, weight_decay=WD,
                                            wd_mode="coupled"))
    assert [coupled[n]["weight_decay"] for n in NAMES] == pytest.approx([WD * m for m in COUPLED_WD.get(name, [1] * 6)])


def test_muon_hybrid_uses_torch_muon_with_the_family_adjustment(mlp):
    for name, fn in (("muon", "original"), ("muon_rms", "match_rms_adamw")):
        opt = ezp.get_mup_optimizer(mlp(width=4 * BASE), lr=LR, optimizer=name)
        assert isinstance(opt, MuonHybrid) and isinstance(opt, torch.optim.Optimizer)
        assert [n for g in opt.muon.param_groups for n in g["param_names"]] == ["hidden.1.weight"]
        assert opt.muon.param_groups[0]["adjust_lr_fn"] == fn
        assert len(opt.param_groups) == len(opt.muon.param_groups) + len(opt.adamw.param_groups)


def batches(n):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 8, generator=g), torch.randn(16, 1, generator=g)) for _ in range(n)]


def train(model, opt, data):
    for x, y in data:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def reference_groups(model, name, lr, wd):
    """Plain per-tensor groups from the hand LR table, independent WD (lr*wd fixed)."""
    params = dict(model.named_parameters())
    out = []
    for n, m in zip(NAMES, LR_TABLE[name]):  # the MLP's parameter order is NAMES
        g = {"params": [params[n]], "lr": lr * m, "weight_decay": wd / m}
        if name in EPS_TABLE:
            g["eps"] = 1e-8 * EPS_TABLE[name][NAMES.index(n)]
        out.append(g)
    return out


@pytest.mark.parametrize("name, cls, kw", [
    ("sgd", torch.optim.SGD, {"momentum": 0.9}),
    ("adamw", torch.optim.AdamW, {}),
    ("signsgd", SignSGD, {}),
    ("adafactor", torch.optim.Adafactor, {}),
])
def test_steps_equal_plain_torch_with_hand_set_lrs(mlp, name, cls, kw):
    torch.manual_seed(0)
    model = mlp(width=4 * BASE)
    ref = copy.deepcopy(model)
    opt = ezp.get_mup_optimizer(model, lr=LR, optimizer=name, weight_decay=WD, foreach=False, **kw) \
        if name != "signsgd" else ezp.get_mup_optimizer(model, lr=LR, optimizer=name, weight_decay=WD)
    ref_kw = dict(kw, foreach=False) if name != "signsgd" else {}
    ref_opt = cls(reference_groups(ref, name, LR, WD), lr=LR, **ref_kw)
    data = batches(4)
    train(model, opt, data)
    train(ref, ref_opt, data)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n


def test_muon_hybrid_steps_equal_plain_muon_and_adamw(mlp):
    torch.manual_seed(0)
    model = mlp(width=4 * BASE)
    ref = copy.deepcopy(model)
    opt = ezp.get_mup_optimizer(model, lr=LR, optimizer="muon_rms", weight_decay=WD)
    groups = reference_groups(ref, "muon_rms", LR, WD)
    hidden = groups.pop(2)
    hidden["weight_decay"] = WD * 2  # lr/2 * 2wd = lr*wd
    muon = torch.optim.Muon([hidden], lr=LR, adjust_lr_fn="match_rms_adamw")
    for g in groups:
        g["eps"] = 1e-8
    adamw = torch.optim.AdamW(groups, lr=LR)
    data = batches(4)
    train(model, opt, data)
    for x, y in data:
        muon.zero_grad(), adamw.zero_grad()
        nn.functional.mse_loss(ref(x), y).backward()
        muon.step(), adamw.step()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("name", ["sgd", "adamw", "signsgd", "adafactor", "muon", "muon_rms"])
def test_state_dict_resume_is_bit_identical(mlp, name):
    torch.manual_seed(0)
    data = batches(6)
    model = mlp(width=4 * BASE)
    twin = copy.deepcopy(model)
    kw = {"momentum": 0.9} if name == "sgd" else {}
    opt = ezp.get_mup_optimizer(model, lr=LR, optimizer=name, weight_decay=WD, **kw)
    train(model, opt, data)
    opt2 = ezp.get_mup_optimizer(twin, lr=LR, optimizer=name, weight_decay=WD, **kw)
    train(twin, opt2, data[:3])
    saved = copy.deepcopy(opt2.state_dict())
    opt3 = ezp.get_mup_optimizer(twin, lr=LR, optimizer=name, weight_decay=WD, **kw)
    opt3.load_state_dict(saved)
    train(twin, opt3, data[3:])
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_schedulers_keep_ratios_on_the_hybrid(mlp):
    for make in (lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.5**s),
                 lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=4)):
        opt = ezp.get_mup_optimizer(mlp(width=4 * BASE), lr=LR, optimizer="muon")
        sched = make(opt)
        for _ in range(3):
            opt.step()
            sched.step()
        ratios = [g["lr"] / (LR * g["lr_mult"]) for g in opt.param_groups]
        assert ratios == pytest.approx([ratios[0]] * len(ratios)) and ratios[0] < 1
        # the inner optimizers see the scheduled LRs (same dicts)
        assert opt.muon.param_groups[0]["lr"] == pytest.approx(LR * ratios[0])


@pytest.mark.parametrize("name", ["adamw", "sgd", "signsgd", "adafactor", "muon"])
def test_coordinate_check_holds(name):
    """Hidden features at 16x the base width. torch's Muon orthogonalises in bf16, which a CPU without native
    bf16 emulates at ~100x the fp32 cost, so its pair of widths is smaller."""
    base, wide = (16, 256) if name == "muon" else (64, 1024)
    f = ezp.wrap(MLP, base_width=base)
    x, y = batches(1)[0]
    rms = []
    for width in (base, wide):
        torch.manual_seed(0)
        model = f(width=width)
        opt = ezp.get_mup_optimizer(model, lr=0.05 if name == "sgd" else 1e-2, optimizer=name)
        for _ in range(3):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        h = torch.relu(model.hidden[1](torch.relu(model.hidden[0](x))))
        rms.append(h.pow(2).mean().sqrt().item())
    assert 1 / 1.5 < rms[1] / rms[0] < 1.5, rms


def test_bad_optimizer_names_and_classes(mlp):
    model = mlp(width=4 * BASE)
    with pytest.raises(ValueError, match="register_optimizer") as e:
        ezp.get_mup_optimizer(model, lr=LR, optimizer="shampoo")
    assert "orthogonal_rms" in str(e.value)

    class Custom(SignSGD):
        pass

    with pytest.raises(ValueError, match="Custom.*register_optimizer"):
        ezp.get_mup_optimizer(model, lr=LR, optimizer=Custom)
    with pytest.raises(ValueError, match="unknown"):
        ezp.register_optimizer("x", Custom, family="lion")
    assert "signsgd" in OPTIMIZERS and all(f in ezp.rules.FAMILIES for _, f in OPTIMIZERS.values())
