"""Beyond test_families.py: the Muon hybrid's split and its RMS variant, and a coordinate check per
family that also watches the readout's change since init."""

import warnings

import pytest
import torch
from torch import nn

import ezmup_plus as ezp
from ezmup_plus.hybrid import warn_emulated_bf16
from ezmup_plus.models.mlp import MLP


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


# Widths per family: SGD's readout needs 128 and up to leave its finite-width regime; torch's Muon
# orthogonalises in bf16, emulated ~100x slower without native bf16, so its widths stay at 128 or less.
FAMILY_CHECKS = [("sgd", 0.05, 32, [128, 512, 2048]), ("adafactor", 1e-2, 32, [64, 128, 256, 512]),
                 ("muon", 1e-2, 16, [32, 64, 128]), ("nadam", 1e-2, 32, [64, 128, 256, 512])]


@pytest.mark.parametrize("name,lr,base,widths", FAMILY_CHECKS)
def test_coordinate_check_holds_for_each_family(name, lr, base, widths):
    """muP passes the coordinate check for every family, and SP fails it on the same widths (so it can fail);
    averaged over 4 seeds, as one seed's width-independent random readout bias tilts a slope by a few tenths."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)
    checks = {p: ezp.coord_check(ezp.wrap(MLP, base_width=base, parametrization=p), widths, (x, y), optimizer=name,
                                 lr=lr, seeds=4) for p in ("mup", "sp")}
    assert checks["mup"].ok, str(checks["mup"])
    assert not checks["sp"].ok, str(checks["sp"])


def test_muon_on_a_cpu_without_native_bf16_warns_once(monkeypatch):
    monkeypatch.setattr("ezmup_plus.hybrid.native_bf16", lambda: False)
    warn_emulated_bf16.cache_clear()
    model = ezp.wrap(MLP, base_width=16)(width=32)
    with pytest.warns(UserWarning, match="no native bf16"):
        ezp.get_mup_optimizer(model, lr=1e-2, optimizer="muon")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ezp.get_mup_optimizer(model, lr=1e-2, optimizer="muon")  # once per process
    warn_emulated_bf16.cache_clear()
