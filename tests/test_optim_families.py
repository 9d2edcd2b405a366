"""Beyond test_families.py: the Muon hybrid's split and its RMS variant, and a coordinate check per
family that also watches the readout's change since init."""

import pytest
import torch
from torch import nn

import ezmup_plus as ezp
from ezmup_plus.models.mlp import MLP


@pytest.fixture(scope="module")
def factory():
    return ezp.wrap(MLP, base_width=64)


def lrs_by_name(opt):
    return {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}


def test_muon_hybrid_groups_and_rms_variant():
    f = ezp.wrap(lambda width: nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 4 * width), nn.ReLU(),
                                             nn.Linear(4 * width, 1)), base_width=32)
    model = f(width=128)  # m_w = 4
    opt = ezp.get_mup_optimizer(model, lr=0.02, optimizer="muon", weight_decay=0.1)
    assert isinstance(opt, torch.optim.Optimizer) and isinstance(opt.muon, torch.optim.Muon)
    muon = {n for g in opt.muon.param_groups for n in g["param_names"]}
    assert muon == {"2.weight"}  # the only hidden matrix; everything else on AdamW
    lrs = lrs_by_name(opt)
    assert lrs["2.weight"] == pytest.approx(0.02)  # orthogonal: hidden LR x sqrt(m_out/m_in) = 1
    assert lrs["4.weight"] == pytest.approx(0.02 / 4) and lrs["0.weight"] == pytest.approx(0.02)  # AdamW rules
    rms = ezp.get_mup_optimizer(model, lr=0.02, optimizer="muon_rms", weight_decay=0.1, wd_mode="coupled")
    g = next(g for g in rms.muon.param_groups if "2.weight" in g["param_names"])
    assert g["lr"] == pytest.approx(0.02 / 2) and g["weight_decay"] == pytest.approx(0.1 * 2)  # m^-1/2, m^1/2


@pytest.mark.parametrize("name,lr", [("sgd", 0.05), ("adafactor", 1e-2), ("muon", 1e-2), ("nadam", 1e-2)])
def test_coordinate_check_holds_for_each_family(factory, name, lr):
    """Widths 128 to 2048: at 64 Muon's readout still shows a finite-width drift (slope 0.2 at step 1)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)
    check = ezp.coord_check(factory, [128, 512, 2048], (x, y), optimizer=name, lr=lr)
    assert check.ok, str(check)
