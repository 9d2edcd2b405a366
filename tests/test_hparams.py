"""The muTransferable knobs (#15 item 1): each one at base against a hand-written reference, carried to other
widths by the plan, printed in its header, read from YAML, and changed without tracing the factory again."""

import copy

import pytest
import torch

import ezmup_plus as ezp
from ezmup_plus import analysis as analysis_module
from ezmup_plus.config import ConfigError, load_config
from ezmup_plus.hparams import HParams
from ezmup_plus.models.gpt import GPT
from ezmup_plus.models.mlp import MLP
from ezmup_plus.plan import MupPlan, make_plan
from tiny_models import TiedLM

IDS = torch.randint(0, 65, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def gpt():
    return ezp.wrap(GPT, base_width=32, width_multiple=4, depth=2, cache=False)


def built(factory, hparams=None, width=32, seed=0):
    torch.manual_seed(seed)
    return (factory if hparams is None else factory.with_hparams(hparams))(width=width)


def plain_gpt(seed=0):
    torch.manual_seed(seed)
    return GPT(width=32, depth=2)


def test_defaults_are_the_factory_and_the_plan_unchanged(gpt):
    model = built(gpt, HParams())
    for (name, p), q in zip(model.named_parameters(), plain_gpt().parameters()):
        assert torch.equal(p, q), name
    assert gpt.with_hparams({}).plan(128).to_dict() == gpt.plan(128).to_dict()
    assert "hparams" not in gpt.plan(128).to_dict()


def test_output_multiplier_doubles_the_logits_exactly(gpt):
    with torch.no_grad():
        assert torch.equal(built(gpt, {"output": 2.0})(IDS), 2 * plain_gpt()(IDS))


def test_init_multipliers_scale_the_stds(gpt):
    model, plain = built(gpt, {"init": 0.5, "init_hidden": 3.0}), dict(plain_gpt().named_parameters())
    plan = ezp.plan_of(model)
    for name, p in model.named_parameters():
        t = plan[name]
        factor = 1.0 if t.init == "keep" else 0.5 * (3.0 if t.role == "hidden" else 1.0)
        assert torch.allclose(p, factor * plain[name], rtol=1e-6, atol=0), name
    assert plan["lm_head.weight"].init_std == pytest.approx(0.01)
    assert plan["blocks.0.mlp.c_fc.weight"].init_std == pytest.approx(0.03)
    wide = built(gpt, {"init": 0.5, "init_hidden": 3.0}, width=128)
    assert ezp.check_init(wide).ok
    base = gpt.plan(128)
    for t in ezp.plan_of(wide):  # the same factors on the muP stds of the wide model
        if t.init != "keep":
            assert t.init_std == pytest.approx(base[t.name].init_std * (1.5 if t.role == "hidden" else 0.5))


def test_attention_multiplier_scales_the_logits(gpt):
    reference = plain_gpt()
    for block in reference.blocks:
        block.attn.scaling *= 2.0
    with torch.no_grad():
        assert torch.equal(built(gpt, {"attention": 2.0})(IDS), reference(IDS))
    wide = gpt.with_hparams({"attention": 2.0}).plan(64)
    assert wide.attention["blocks.0.attn"].factor == pytest.approx(2.0 * 0.5**0.5)  # times muP's sqrt(d_base/d)
    assert "times hparams.attention 2" in str(wide)


def test_input_multiplier_on_the_first_layer():
    f = ezp.wrap(MLP, base_width=16, cache=False)
    x = torch.randn(5, 8)
    model = built(f, {"input": 3.0}, width=16)
    torch.manual_seed(0)
    ref = MLP(width=16)
    h = torch.relu(3.0 * ref.hidden[0](x))
    h = torch.relu(ref.hidden[1](h))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref.readout(h), rtol=1e-6, atol=1e-6)
    plan = ezp.plan_of(model)
    assert (plan["hidden.0.weight"].lr_mult, plan["hidden.0.bias"].eps_mult, plan["hidden.1.weight"].lr_mult) == (
        3.0, 1 / 3.0, 1.0)  # Adam's fold: LR x A, eps / A, only on the input layer


def test_lr_multipliers_are_the_param_group_lrs(gpt):
    model = built(gpt, {"lr_output": 4.0, "lr_vector": 0.5}, width=64)
    opt = ezp.get_mup_optimizer(model, lr=1e-3)
    lrs = {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}
    assert lrs["lm_head.weight"] == pytest.approx(1e-3 * 0.5 * 4.0)  # muP's 1/m_w times the knob
    assert lrs["ln_f.weight"] == pytest.approx(1e-3 * 0.5)
    assert lrs["blocks.0.mlp.c_fc.weight"] == pytest.approx(1e-3 * 0.5)
    sgd = ezp.plan_of(model).for_family("sgd")  # another family keeps the knobs
    assert sgd["lm_head.weight"].lr_mult == pytest.approx(0.5 * 4.0)


def test_weight_decay_knob_and_conflict(gpt):
    model = built(gpt, {"weight_decay": 0.1})
    opt = ezp.get_mup_optimizer(model, lr=1e-3)
    assert {g["weight_decay"] for g in opt.param_groups} == {0.1}
    assert ezp.get_mup_optimizer(model, lr=1e-3, weight_decay=0.1).defaults["weight_decay"] == 0.1
    with pytest.raises(ValueError, match="hparams.weight_decay=0.1"):
        ezp.get_mup_optimizer(model, lr=1e-3, weight_decay=0.2)
    with pytest.raises(ValueError, match="hparams"):
        ezp.get_mup_optimizer(model, lr=1e-3, hparams={"output": 2.0})


def test_ezmup_style_path_takes_the_knobs():
    torch.manual_seed(0)
    model = MLP(width=47)
    ezp.get_mup_optimizer(model, width=94, lr=1e-2, hparams={"output": 2.0})
    plan = ezp.plan_of(model)
    assert plan.hparams.output == 2.0 and plan["readout.weight"].lr_mult == pytest.approx(0.5 * 2.0)


def test_changing_knobs_never_traces(gpt, monkeypatch):
    gpt.analysis  # noqa: B018 -- learned once

    def refuse(*args, **kwargs):
        raise AssertionError("traced again")

    for name in ("analyse_factory", "analyse_model", "probe_factory"):
        if hasattr(analysis_module, name):
            monkeypatch.setattr(analysis_module, name, refuse)
    monkeypatch.setattr("ezmup_plus.build.analyse_factory", refuse)
    for hp in ({"output": 0.5}, {"init": 2.0, "attention": 0.7}):
        built(gpt, hp, width=64)
    plan = make_plan(gpt.analysis, width=64, hparams={"lr_hidden": 2.0})
    assert plan["blocks.0.attn.c_proj.weight"].lr_mult == pytest.approx(1.0)


def test_plan_header_and_yaml_round_trip(gpt):
    plan = gpt.with_hparams({"output": 2.0, "weight_decay": 0.05}).plan(64)
    assert str(plan).splitlines()[1] == "hyperparameters (at base): output 2, weight_decay 0.05"
    again = MupPlan.from_yaml(plan.to_yaml())
    assert again.hparams == plan.hparams and again.to_dict() == plan.to_dict()


def test_errors_name_the_knob(gpt):
    with pytest.raises(ValueError, match=r"unknown hyperparameter 'hparams.outptu'; did you mean 'hparams.output'"):
        gpt.with_hparams({"outptu": 2.0})
    with pytest.raises(ValueError, match="hparams.init=-1 must be positive"):
        HParams(init=-1)
    with pytest.raises(ValueError, match="no attention"):
        ezp.wrap(MLP, base_width=16, hparams={"attention": 2.0}).plan(32)
    with pytest.raises(ValueError, match="emb.weight is tied"):
        ezp.wrap(TiedLM, base_width=16, hparams={"input": 2.0}).plan(32)
    tied = ezp.wrap(TiedLM, base_width=16, hparams={"output": 2.0}).plan(64)
    assert tied.multipliers["head"] == pytest.approx(2.0 / 4)


def test_yaml_config_hparams():
    cfg = {"model": {"factory": "ezmup_plus.models.mlp:MLP", "width": 32},
           "mup": {"base_width": 16, "hparams": {"output": 2.0, "init": 0.5}}}
    assert load_config(cfg).mup.hparams == HParams(output=2.0, init=0.5)
    bad = copy.deepcopy(cfg)
    bad["mup"]["hparams"]["init_hiden"] = 2.0
    with pytest.raises(ConfigError, match=r"unknown key 'mup.hparams.init_hiden'; did you mean 'mup.hparams.init_hidden'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="mup.hparams: hparams.output=0"):
        load_config(copy.deepcopy(cfg), ["mup.hparams.output=0"])
    model, opt, _ = ezp.from_config(cfg, ["mup.hparams.weight_decay=0.01"])
    assert ezp.plan_of(model).hparams.output == 2.0 and opt.defaults["weight_decay"] == 0.01
