"""The rules tables against DESIGN.md, with the numbers written out by hand (m_w = 4 and 16)."""

import math

import pytest

from ezmup_plus import rules
from ezmup_plus.rules import Scaling, TensorScale


def hidden(m):
    return TensorScale("hidden", m_in=m, m_out=m)


def test_base_is_identity_for_every_role_and_family():
    for family in ("adam", "sgd"):
        for role in rules.ROLES:
            for p in ("sp", "mup", "depth_mup", "completep"):
                s = rules.scaling(p, family, TensorScale(role, in_block=True))
                assert s == Scaling(), (p, family, role)


@pytest.mark.parametrize("m", [4.0, 16.0])
def test_adam_width_table(m):
    # DESIGN.md: input x1/x1, hidden init m^-1/2 LR m^-1, output init m^-1 LR m^-1, vectors x1
    table = {
        TensorScale("input", m_in=1, m_out=m): (1.0, 1.0, 1.0),
        hidden(m): (1 / math.sqrt(m), 1 / m, 1 / m),
        TensorScale("output", m_in=m, m_out=1): (1 / m, 1 / m, 1.0),
        TensorScale("vector", m_in=1, m_out=m): (1.0, 1.0, 1.0),
        TensorScale("finite"): (1.0, 1.0, 1.0),
    }
    for t, (init, lr, eps) in table.items():
        s = rules.scaling("mup", "adam", t)
        assert (s.init, s.lr, s.eps) == pytest.approx((init, lr, eps), rel=1e-12), t.role


@pytest.mark.parametrize("m", [4.0, 16.0])
def test_sgd_width_table(m):
    # TP5 Table 3: input weights and biases LR x m, hidden LR x1, output LR x m^-1
    table = {
        TensorScale("input", m_in=1, m_out=m): m,
        hidden(m): 1.0,
        TensorScale("output", m_in=m, m_out=1): 1 / m,
        TensorScale("vector", m_in=1, m_out=m): m,
        TensorScale("finite"): 1.0,
    }
    for t, lr in table.items():
        assert rules.scaling("mup", "sgd", t).lr == pytest.approx(lr, rel=1e-12), t.role


def test_sp_never_scales():
    assert rules.scaling("sp", "adam", hidden(16.0)) == Scaling()


@pytest.mark.parametrize("alpha,name", [(1.0, "completep"), (0.5, "depth_mup")])
def test_adam_depth_columns(alpha, name):
    m_w, m_l = 4.0, 8.0
    t = TensorScale("hidden", m_in=m_w, m_out=m_w, m_depth=m_l, in_block=True)
    s = rules.scaling(name, "adam", t)
    assert s.lr == pytest.approx(m_w**-1 * m_l ** (alpha - 1))
    assert s.eps == pytest.approx(m_w**-1 * m_l**-alpha)
    gain = rules.scaling(name, "adam", TensorScale("vector", m_out=m_w, m_depth=m_l, in_block=True))
    assert gain.lr == pytest.approx(m_l ** (alpha - 1))
    outside = rules.scaling(name, "adam", TensorScale("hidden", m_in=m_w, m_out=m_w, m_depth=m_l))
    assert outside.lr == pytest.approx(1 / m_w)


def test_sgd_depth_completep_scales_hidden_lr_with_depth():
    t = TensorScale("hidden", m_in=2.0, m_out=2.0, m_depth=8.0, in_block=True)
    assert rules.scaling("completep", "sgd", t).lr == pytest.approx(8.0)


def test_spectral_init_is_absolute():
    s = rules.scaling("spectral", "adam", TensorScale("hidden", m_in=4, m_out=4, fan_in=1024, fan_out=256))
    assert s.init_std == pytest.approx(1 / 32 * 0.5)
    s = rules.scaling("spectral", "adam", TensorScale("input", m_in=1, m_out=4, fan_in=8, fan_out=1024))
    assert s.init_std == pytest.approx(1 / math.sqrt(8))


def test_fold_keeps_the_training_trajectory():
    s = Scaling(init=0.5, lr=0.25, eps=0.25)
    assert rules.fold("adam", s, 0.1) == Scaling(init=0.05, lr=0.025, eps=2.5)
    sgd = rules.fold("sgd", s, 0.1)
    assert (sgd.init, sgd.lr) == pytest.approx((0.05, 0.0025))


def test_bad_names_are_errors():
    with pytest.raises(ValueError, match="parametrization='mupp' is unknown"):
        rules.scaling("mupp", "adam", hidden(2))
    with pytest.raises(ValueError, match="family 'adamw' is unknown"):
        rules.scaling("mup", "adamw", hidden(2))
    with pytest.raises(ValueError, match="role 'embedding' is unknown"):
        rules.scaling("mup", "adam", TensorScale("embedding"))


@pytest.mark.parametrize("m", [4.0, 16.0])
def test_microsoft_mup_conventions(m):
    """MuAdam / MuSGD: eps fixed; the readout in MuReadout's form (init x1, Adam LR x1, SGD LR x m_w, 1/m_w on its
    input); the other roles as in the default conventions."""
    conv = rules.CONVENTIONS["microsoft_mup"]
    readout = TensorScale("output", m_in=m, m_out=1)
    assert rules.scaling("mup", "adam", readout, conv=conv) == Scaling(init=1.0, lr=1.0, eps=1.0)
    assert rules.scaling("mup", "sgd", readout, conv=conv).lr == pytest.approx(m)
    assert rules.readout_multiplier("mup", readout, conv) == 1 / m
    assert rules.readout_multiplier("sp", readout, conv) == rules.readout_multiplier("mup", hidden(m), conv) == 1.0
    assert rules.scaling("mup", "adam", hidden(m), conv=conv) == Scaling(init=m**-0.5, lr=1 / m, eps=1.0)
    block = TensorScale("hidden", m_in=m, m_out=m, m_depth=2.0, in_block=True)
    assert rules.fold("adam", rules.scaling("completep", "adam", block, conv=conv), 0.5).eps == 2.0  # folds stay exact
    with pytest.raises(ValueError, match=r"conventions='mup' is unknown; choose one of \('ezmup_plus', 'micro"):
        rules.conventions("mup")
