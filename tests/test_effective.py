"""Effective numbers (#19 item 4): per tensor, the init std, LR and eps the trained function sees, wherever its
forward multiplier lives (folded into init and LR, an output hook, MuReadout's input, a tied readout, attention)."""

import re

import pytest

import ezmup_plus as ezp
from ezmup_plus.models.gpt import GPT
from ezmup_plus.models.mlp import MLP
from ezmup_plus.plan import make_plan
from tiny_models import HookResNet, TiedLM


def test_a_multiplier_counts_the_same_folded_or_in_the_forward():
    analysis = ezp.wrap(MLP, base_width=16).analysis
    folded, forward = (make_plan(analysis, width=64, conventions=c) for c in ("ezmup_plus", "microsoft_mup"))
    a, b = folded.effective()["readout.weight"], forward.effective()["readout.weight"]
    assert (a.multiplier, a.where, b.multiplier, b.where) == (0.25, "folded", 0.25, "input")
    assert (a.init_std, a.lr_factor) == pytest.approx((b.init_std, b.lr_factor)) and a.lr_factor == 0.25
    assert (a.eps_factor, b.eps_factor) == (1.0, 4.0)  # microsoft/mup's fixed eps acts like 4x on the folded readout
    sgd = forward.for_family("sgd").effective()["readout.weight"]
    assert sgd.lr_factor == pytest.approx(folded.for_family("sgd").effective()["readout.weight"].lr_factor) == 0.25
    assert folded.effective()["hidden.1.weight"] == ezp.EffectiveNumbers(
        "hidden.1.weight", folded["hidden.1.weight"].init_std, 0.25, 0.25, 1.0, 1.0, "")
    assert folded.effective(eps_mode="fixed")["hidden.1.weight"].eps_factor == 1.0
    assert folded.effective(wd_mode="coupled")["hidden.1.weight"].wd_factor == 0.25  # lr*wd under PyTorch's coupling


def test_hooks_ties_attention_and_folds():
    hooked = ezp.wrap(HookResNet, base_width=16, base_depth=2).plan(64, depth=4)
    fc = hooked.effective()["blocks.2.fc.weight"]
    assert (fc.multiplier, fc.where, fc.lr_factor) == (0.5, "hook", 0.125)
    assert fc.init_std == pytest.approx(0.5 * hooked["blocks.2.fc.weight"].init_std)
    sgd = hooked.for_family("sgd").effective()["blocks.2.fc.weight"]
    assert sgd.lr_factor == pytest.approx(2 * 0.5**2)  # SGD: LR x m_L, and A^2
    tied = ezp.wrap(TiedLM, base_width=16).plan(64).effective()["emb.weight"]
    assert (tied.multiplier, tied.where, tied.lr_factor) == (0.25, "tied readout", 0.25)
    gpt = ezp.wrap(GPT, base_width=16, base_depth=2, width_multiple=4).plan(64, depth=4)
    e = gpt.effective()
    assert (e["blocks.1.attn.c_attn.weight"].where, e["blocks.1.attn.c_attn.weight"].multiplier) == (
        "attention:scaling", 0.5)
    assert (e["blocks.1.mlp.c_proj.weight"].where, e["blocks.1.mlp.c_proj.weight"].multiplier) == ("folded", 0.5)
    assert e["lm_head.weight"].where == "folded" and e["wte.weight"].where == ""
    line = next(s for s in str(gpt).splitlines() if s.startswith("blocks.1.mlp.c_proj.weight"))
    assert line.split()[-2:] == ["folded", "0.5"] and re.search(r"eff_std +eff_lr +eff_eps +where", str(gpt))
