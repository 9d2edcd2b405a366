"""The core pipeline on the reference MLP and GPT: bit-identity at base, per-tensor numbers at 4x
and 16x written out by hand, exact training steps against a hand-written reference muP MLP, the
coordinate check, and every bad-input error of the core issue."""

import copy
import math
import pickle
import re

import pytest
import torch
from torch import nn

import ezmup_plus as ezp
from ezmup_plus.models.gpt import GPT
from ezmup_plus.models.mlp import MLP

BASE = 64


@pytest.fixture(scope="module")
def mlp():
    return ezp.wrap(MLP, base_width=BASE)


def same_parameters(a: nn.Module, b: nn.Module) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


# --- tracing and the plan ------------------------------------------------------------------

def test_plan_shapes_and_roles_of_the_gpt():
    f = ezp.wrap(GPT, base_width=64, width_multiple=4, depth=2, vocab_size=65, block_size=32)
    plan = f.plan(width=256)
    expect = {
        "wte.weight": ("(65, w)", "input"),
        "wpe.weight": ("(32, w)", "input"),
        "blocks.0.attn.c_attn.weight": ("(3*w, w)", "hidden"),
        "blocks.1.mlp.c_fc.weight": ("(4*w, w)", "hidden"),
        "blocks.1.mlp.c_proj.weight": ("(w, 4*w)", "hidden"),
        "blocks.0.ln_1.weight": ("(w,)", "vector"),
        "blocks.0.mlp.c_fc.bias": ("(4*w,)", "vector"),
        "lm_head.weight": ("(65, w)", "output"),
    }
    for name, (shape, role) in expect.items():
        assert str(plan[name].shape_expr) == shape, name
        assert plan[name].role == role, name
    assert plan["blocks.1.mlp.c_fc.weight"].shape == (1024, 256)
    assert str(plan["blocks.1.mlp.c_proj.weight"].fan_in) == "4*w"
    text = str(plan)
    assert "blocks.0.attn.c_attn.weight" in text and "(3*w, w)" in text and "hidden" in text


def test_plan_yaml_round_trip(mlp):
    plan = mlp.plan(width=256)
    again = ezp.MupPlan.from_yaml(plan.to_yaml())
    assert again == plan
    assert again.for_family("sgd") == plan.for_family("sgd")
    gpt = ezp.wrap(GPT, base_width=16, width_multiple=4, base_depth=2).plan(width=64, depth=4)
    assert gpt.attention and ezp.MupPlan.from_yaml(gpt.to_yaml()) == gpt  # attention scales, depth, multipliers


def test_plan_at_base_is_all_ones(mlp):
    for t in mlp.plan(width=BASE):
        assert (t.init_factor, t.lr_mult, t.wd_mult, t.eps_mult, t.multiplier) == (1, 1, 1, 1, 1), t.name


@pytest.mark.parametrize("m", [4, 16])
def test_per_tensor_std_and_lr_against_hand_computed_numbers(mlp, m):
    """PyTorch's Linear init is U(+-1/sqrt(fan_in)): std 1/sqrt(3 fan_in); muP rescales relative to base."""
    width = BASE * m
    torch.manual_seed(0)
    model = mlp(width=width)
    p = dict(model.named_parameters())
    base_std = 1 / math.sqrt(3 * BASE)
    hand = {  # name: (expected std, expected Adam LR multiplier)
        "hidden.0.weight": (1 / math.sqrt(3 * 8), 1.0),
        "hidden.1.weight": (base_std / math.sqrt(m), 1 / m),
        "readout.weight": (base_std / m, 1 / m),
        "hidden.1.bias": (base_std, 1.0),  # a vector: x1 relative to base, though PyTorch draws 1/sqrt(3 * width)
    }
    plan = ezp.plan_of(model)
    for name, (std, lr) in hand.items():
        assert float(p[name].detach().std()) == pytest.approx(std, rel=0.06), name
        assert plan[name].lr_mult == pytest.approx(lr, rel=1e-12), name
    sgd = plan.for_family("sgd")
    assert [sgd[n].lr_mult for n in ("hidden.0.weight", "hidden.0.bias", "hidden.1.weight", "readout.weight",
                                     "readout.bias")] == pytest.approx([m, m, 1, 1 / m, 1])


# --- build --------------------------------------------------------------------------------

def test_base_width_is_bit_identical_to_the_factory(mlp):
    torch.manual_seed(1)
    ours = mlp(width=BASE)
    torch.manual_seed(1)
    plain = MLP(BASE)
    assert same_parameters(ours, plain)
    assert torch.equal(torch.rand(3), (torch.manual_seed(1), MLP(BASE), torch.rand(3))[2])


def test_base_width_is_bit_identical_for_the_gpt():
    f = ezp.wrap(GPT, base_width=64, width_multiple=4, depth=2)
    torch.manual_seed(3)
    ours = f(width=64)
    torch.manual_seed(3)
    assert same_parameters(ours, GPT(64, depth=2))


def test_building_does_not_consume_the_global_rng(mlp):
    f = ezp.wrap(MLP, base_width=32)  # fresh: its first call probes and measures
    torch.manual_seed(5)
    f(width=128)
    after_ours = torch.rand(4)
    torch.manual_seed(5)
    MLP(128)
    assert torch.equal(after_ours, torch.rand(4))


def test_plan_survives_deepcopy_pickle_and_state_dict(mlp):
    torch.manual_seed(0)
    model = mlp(width=256)
    plan = ezp.plan_of(model)
    assert ezp.plan_of(copy.deepcopy(model)) == plan
    assert ezp.plan_of(pickle.loads(pickle.dumps(model))) == plan
    other = mlp(width=256)
    other.load_state_dict(model.state_dict())
    assert ezp.plan_of(other) == plan and same_parameters(other, model)


# --- the optimizer --------------------------------------------------------------------------

def test_groups_are_few_and_carry_their_multipliers(mlp):
    model = mlp(width=256)
    opt = ezp.get_mup_optimizer(model, lr=1e-2, optimizer="adamw", weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    by_name = {n: g for g in opt.param_groups for n in g["param_names"]}
    assert len(opt.param_groups) == 3
    assert by_name["hidden.1.weight"]["lr"] == pytest.approx(1e-2 / 4)
    assert by_name["hidden.1.weight"]["lr_mult"] == pytest.approx(1 / 4)
    assert by_name["hidden.1.weight"]["eps"] == pytest.approx(1e-8 / 4)
    # independent weight decay: lr * wd per step is the base model's 1e-3 for every tensor
    for g in opt.param_groups:
        assert g["lr"] * g["weight_decay"] == pytest.approx(1e-3)


@pytest.mark.parametrize("kw", [{"foreach": True}, {"fused": True}, {"foreach": False}])
def test_fused_and_foreach_are_kept(mlp, kw):
    opt = ezp.get_mup_optimizer(mlp(width=128), lr=1e-3, optimizer="adam", **kw)
    for key, value in kw.items():
        assert all(g[key] is value for g in opt.param_groups)


def test_schedulers_keep_the_per_tensor_ratios(mlp):
    model = mlp(width=256)
    opt = ezp.get_mup_optimizer(model, lr=1e-2)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[3])
    for _ in range(6):
        opt.step()
        sched.step()
        ratios = [g["lr"] / (1e-2 * g["lr_mult"]) for g in opt.param_groups]
        assert ratios == pytest.approx([ratios[0]] * len(ratios))
        assert 0 < ratios[0] <= 1
    opt2 = ezp.get_mup_optimizer(mlp(width=256), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda step: 0.5**step)
    opt2.step()
    sched2.step()
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([0.5e-2 * g["lr_mult"] for g in opt2.param_groups])


class ReferenceMuMLP(nn.Module):
    """The muP MLP written out by hand: layers named plainly, per-layer LRs chosen in the tests below."""

    def __init__(self, width):
        super().__init__()
        self.l_in = nn.Linear(8, width)
        self.l_hidden = nn.Linear(width, width)
        self.l_out = nn.Linear(width, 1)

    def forward(self, x):
        return self.l_out(torch.relu(self.l_hidden(torch.relu(self.l_in(x)))))


def copy_into_reference(model):
    ref = ReferenceMuMLP(model.readout.in_features)
    with torch.no_grad():
        for dst, src in [(ref.l_in, model.hidden[0]), (ref.l_hidden, model.hidden[1]), (ref.l_out, model.readout)]:
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    return ref


def train_both(model, opt, ref, ref_opt, steps=5):
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(32, 8, generator=g), torch.randn(32, 1, generator=g)
        for net, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            o.step()


def test_five_adamw_steps_equal_the_hand_written_reference(mlp):
    width, lr, wd = 4 * BASE, 3e-3, 0.1  # m_w = 4
    torch.manual_seed(0)
    model = mlp(width=width)
    ref = copy_into_reference(model)
    opt = ezp.get_mup_optimizer(model, lr=lr, optimizer="adamw", weight_decay=wd, foreach=False)
    ref_opt = torch.optim.AdamW([
        {"params": [ref.l_in.weight, ref.l_in.bias, ref.l_hidden.bias, ref.l_out.bias], "lr": lr, "weight_decay": wd},
        {"params": [ref.l_hidden.weight], "lr": lr / 4, "weight_decay": wd * 4, "eps": 1e-8 / 4},
        {"params": [ref.l_out.weight], "lr": lr / 4, "weight_decay": wd * 4},
    ], lr=lr, foreach=False)
    train_both(model, opt, ref, ref_opt)
    assert same_parameters(copy_into_reference(model), ref)


def test_five_sgd_steps_equal_the_hand_written_reference(mlp):
    width, lr = 4 * BASE, 0.05
    torch.manual_seed(0)
    model = mlp(width=width)
    ref = copy_into_reference(model)
    opt = ezp.get_mup_optimizer(model, lr=lr, optimizer="sgd", momentum=0.9, foreach=False)
    ref_opt = torch.optim.SGD([
        {"params": [ref.l_in.weight, ref.l_in.bias, ref.l_hidden.bias], "lr": lr * 4},  # fan_out grows 4x
        {"params": [ref.l_hidden.weight, ref.l_out.bias], "lr": lr},
        {"params": [ref.l_out.weight], "lr": lr / 4},
    ], lr=lr, momentum=0.9, foreach=False)
    train_both(model, opt, ref, ref_opt)
    assert same_parameters(copy_into_reference(model), ref)


def test_updates_at_base_equal_the_plain_optimizer(mlp):
    torch.manual_seed(2)
    model = mlp(width=BASE)
    torch.manual_seed(2)
    plain = MLP(BASE)
    opt = ezp.get_mup_optimizer(model, lr=1e-2, optimizer="adamw", weight_decay=0.01)
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(16, 8, generator=g)
        for net, o in ((model, opt), (plain, plain_opt)):
            o.zero_grad()
            net(x).square().mean().backward()
            o.step()
    assert same_parameters(model, plain)


# --- behaviour: coordinate check -------------------------------------------------------------

def activation_rms_after_steps(make, width, steps=3, lr=1e-2):
    torch.manual_seed(0)
    model, opt = make(width, lr)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        h = torch.relu(model.hidden[1](torch.relu(model.hidden[0](x))))
        return {"hidden": float(h.pow(2).mean().sqrt()), "output": float(model(x).pow(2).mean().sqrt())}


@pytest.mark.slow
def test_coordinate_check_mup_flat_sp_grows():
    widths = [64, 256, 1024]
    f = ezp.wrap(MLP, base_width=64)

    def mup(width, lr):
        model = f(width=width)
        return model, ezp.get_mup_optimizer(model, lr=lr, optimizer="adam")

    def sp(width, lr):
        model = MLP(width)
        return model, torch.optim.Adam(model.parameters(), lr=lr)

    ours = [activation_rms_after_steps(mup, w) for w in widths]
    plain = [activation_rms_after_steps(sp, w) for w in widths]
    for key in ("hidden", "output"):
        values = [r[key] for r in ours]
        assert max(values) / min(values) < 1.5, (key, values)
    assert plain[-1]["output"] / plain[0]["output"] > 3.0, plain


# --- bad input --------------------------------------------------------------------------------

def test_factory_that_ignores_its_width():
    with pytest.raises(ValueError, match="ignores its width argument"):
        ezp.wrap(lambda width: MLP(32), base_width=64).plan(width=128)


def test_width_that_breaks_divisibility():
    class Halves(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.a = nn.Linear(8, width)
            self.b = nn.Linear(width, width // 2)

        def forward(self, x):
            return self.b(self.a(x))

    g = ezp.wrap(Halves, base_width=64, width_multiple=2)
    with pytest.raises(ValueError, match=r"b.weight: dim w/2 is 129/2 at width 129"):
        g.plan(width=129)


def test_factory_that_needs_a_width_multiple_gets_a_hint():
    with pytest.raises(RuntimeError, match="width_multiple"):
        ezp.wrap(GPT, base_width=64, depth=1).plan(width=128)


def test_names_that_change_with_the_width():
    def odd(width):
        return nn.Sequential(*[nn.Linear(width, width) for _ in range(1 + width % 2)])

    with pytest.raises(ValueError, match="parameter names differ between width"):
        ezp.wrap(odd, base_width=64, sentinels=(47, 50, 59)).plan(width=64)


def test_a_dim_that_fits_no_polynomial():
    with pytest.raises(ValueError, match=r"0.weight dim 0: .*fit no polynomial"):
        ezp.wrap(lambda width: nn.Sequential(nn.Linear(width, int(width**1.5))), base_width=64).plan(width=64)


def test_sentinel_collision_is_reported_and_kept_finite():
    with pytest.warns(UserWarning, match=r"0.weight dim 0 is 94 = 2\*47 at every probe"):
        plan = ezp.wrap(lambda width: nn.Sequential(nn.Embedding(94, width)), base_width=64).plan(width=128)
    assert plan["0.weight"].shape == (94, 128) and plan["0.weight"].role == "input"


def test_bad_sentinels_and_arguments():
    with pytest.raises(ValueError, match="at least three primes"):
        ezp.wrap(MLP, base_width=64, sentinels=(47, 53)).plan(width=64)
    with pytest.raises(ValueError, match="parametrization='mupp'"):
        ezp.wrap(MLP, base_width=64, parametrization="mupp")
    with pytest.raises(ValueError, match="not a multiple of width_multiple"):
        ezp.wrap(MLP, base_width=66, width_multiple=4)


def test_unknown_optimizer_and_missing_plan(mlp):
    model = mlp(width=128)
    with pytest.raises(ValueError, match=r"optimizer='adamm' is unknown. Did you mean 'adam'\?.*register_optimizer"):
        ezp.get_mup_optimizer(model, lr=1e-3, optimizer="adamm")
    with pytest.raises(ValueError, match="carries no muP plan and no width was given"):
        ezp.get_mup_optimizer(MLP(128), lr=1e-3)
    with pytest.raises(LookupError, match="carries no muP plan"):
        ezp.plan_of(MLP(128))


def test_role_overrides(mlp):
    plan = ezp.wrap(MLP, base_width=64, roles={"readout.*": "hidden"}).plan(width=128)
    assert plan["readout.weight"].role == "hidden" and plan["readout.bias"].role == "hidden"
    assert re.search(r"readout.weight .* hidden +override", str(plan))
    with pytest.raises(ValueError, match=r"roles\['head.\*'\] matches no parameter"):
        ezp.wrap(MLP, base_width=64, roles={"head.*": "output"}).plan(width=128)
    with pytest.raises(ValueError, match="is not a role"):
        ezp.wrap(MLP, base_width=64, roles={"readout.weight": "readout"}).plan(width=128)
