"""Depth: stacks found from probes, residual branches, CompleteP / depth-muP rules against a
hand-written reference with explicit branch multipliers, the depth coordinate check, HF models."""

import math
import re

import pytest
import torch
from torch import nn

import ezmup_plus as ezp
from ezmup_plus.models import hf
from ezmup_plus.models.gpt import GPT
from tiny_models import HookResNet


class ResMLP(nn.Module):
    """Pre-LN residual MLP: x = x + fc2(relu(fc1(ln(x)))) per block."""

    def __init__(self, width, depth):
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.blocks = nn.ModuleList(nn.ModuleDict({"ln": nn.LayerNorm(width), "fc1": nn.Linear(width, 2 * width),
                                                   "fc2": nn.Linear(2 * width, width)}) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b["fc2"](torch.relu(b["fc1"](b["ln"](x))))
        return self.out(x)


class ReferenceResMLP(nn.Module):
    """The same network written with the branch multiplier explicit (not folded)."""

    def __init__(self, width, depth, branch):
        super().__init__()
        self.branch = branch
        self.inp = nn.Linear(8, width)
        self.ln = nn.ModuleList(nn.LayerNorm(width) for _ in range(depth))
        self.fc1 = nn.ModuleList(nn.Linear(width, 2 * width) for _ in range(depth))
        self.fc2 = nn.ModuleList(nn.Linear(2 * width, width) for _ in range(depth))
        self.out = nn.Linear(width, 1)

    def forward(self, x):
        x = self.inp(x)
        for ln, fc1, fc2 in zip(self.ln, self.fc1, self.fc2):
            x = x + self.branch * fc2(torch.relu(fc1(ln(x))))
        return self.out(x)


def reference_from(model, depth, branch):
    """Copy the muP model's initial weights, un-folding the branch multiplier out of fc2."""
    ref = ReferenceResMLP(model.inp.out_features, depth, branch)
    with torch.no_grad():
        ref.inp.load_state_dict(model.inp.state_dict())
        ref.out.load_state_dict(model.out.state_dict())
        for i, b in enumerate(model.blocks):
            ref.ln[i].load_state_dict(b["ln"].state_dict())
            ref.fc1[i].load_state_dict(b["fc1"].state_dict())
            ref.fc2[i].weight.copy_(b["fc2"].weight / branch)
            ref.fc2[i].bias.copy_(b["fc2"].bias / branch)
    return ref


def in_block(ref):
    ln = [p for m in ref.ln for p in m.parameters()]
    return ln, [m.weight for m in ref.fc1] + [m.weight for m in ref.fc2], [m.bias for m in ref.fc1] + [m.bias for m in ref.fc2]


def train_and_compare(model, opt, ref, ref_opt, steps=4, outputs=1):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 8, generator=g), torch.randn(32, outputs, generator=g)
    for _ in range(steps):
        for net, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            o.step()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def resmlp():
    return ezp.wrap(ResMLP, base_width=32, base_depth=2)


def test_stack_templates_and_branches(resmlp):
    assert [(s.template, s.per_depth, s.offset) for s in resmlp.table.stacks] == [("blocks.{i}", 1, 0)]
    assert resmlp.branches == {"blocks.{i}.fc2": "fold"}
    plan = resmlp.plan(width=32, depth=6)
    assert plan.depth == 6 and plan.depth_alpha == 1.0
    assert [n for n in plan.tensors if n.endswith("fc2.weight")] == [f"blocks.{i}.fc2.weight" for i in range(6)]


def test_two_stacks_encoder_decoder():
    class EncDec(nn.Module):
        def __init__(self, width, depth):
            super().__init__()
            self.emb = nn.Embedding(10, width)
            self.enc = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
            self.dec = nn.ModuleList(nn.Linear(width, width) for _ in range(2 * depth))
            self.head = nn.Linear(width, 10)

        def forward(self, idx):
            x = self.emb(idx)
            for layer in [*self.enc, *self.dec]:
                x = x + layer(x)
            return self.head(x)

    f = ezp.wrap(EncDec, base_width=32, base_depth=1)
    assert {(s.template, s.per_depth) for s in f.table.stacks} == {("enc.{i}", 1), ("dec.{i}", 2)}
    assert f.branches == {"enc.{i}": "fold", "dec.{i}": "fold"}
    plan = f.plan(width=32, depth=3)
    assert sum(n.startswith("dec.") and n.endswith("weight") for n in plan.tensors) == 6
    assert plan["dec.5.weight"].fold == pytest.approx(1 / 3)


def test_base_depth_and_width_are_bit_identical(resmlp):
    torch.manual_seed(4)
    ours = resmlp(width=32, depth=2)
    torch.manual_seed(4)
    plain = ResMLP(32, 2)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), plain.parameters()))
    torch.manual_seed(4)
    gpt = ezp.wrap(GPT, base_width=32, base_depth=2, width_multiple=4)(width=32, depth=2)
    torch.manual_seed(4)
    assert all(torch.equal(a, b) for a, b in zip(gpt.parameters(), GPT(32, depth=2).parameters()))


@pytest.mark.parametrize("m_l", [2, 4])
def test_adamw_steps_equal_the_reference_completep(resmlp, m_l):
    depth, lr, eps = 2 * m_l, 1e-2, 1e-8
    torch.manual_seed(0)
    model = resmlp(width=32, depth=depth)
    ref = reference_from(model, depth, branch=1 / m_l)  # CompleteP: branch x m_L^-1
    ln, w, b = in_block(ref)
    ref_opt = torch.optim.AdamW([  # alpha = 1: hidden LR x m_L^0; eps x m_L^-1 inside the blocks
        {"params": [*ref.inp.parameters(), *ref.out.parameters()], "lr": lr},
        {"params": ln + w + b, "lr": lr, "eps": eps / m_l},
    ], lr=lr, weight_decay=0.0)
    opt = ezp.get_mup_optimizer(model, lr=lr, optimizer="adamw")
    train_and_compare(model, opt, ref, ref_opt)


def test_adam_steps_equal_the_reference_depth_mup():
    m_l, lr, eps = 4, 1e-2, 1e-8
    f = ezp.wrap(ResMLP, base_width=32, base_depth=2, parametrization="depth_mup")
    torch.manual_seed(0)
    model = f(width=32, depth=2 * m_l)
    ref = reference_from(model, 2 * m_l, branch=m_l**-0.5)
    ln, w, b = in_block(ref)
    ref_opt = torch.optim.Adam([  # alpha = 1/2: LR x m_L^-1/2, eps x m_L^-1/2 inside the blocks
        {"params": [*ref.inp.parameters(), *ref.out.parameters()], "lr": lr},
        {"params": ln + w + b, "lr": lr * m_l**-0.5, "eps": eps * m_l**-0.5},
    ], lr=lr)
    train_and_compare(model, ezp.get_mup_optimizer(model, lr=lr, optimizer="adam"), ref, ref_opt)


@pytest.mark.parametrize("m_l", [2, 4])
def test_sgd_steps_equal_the_reference_completep(resmlp, m_l):
    depth, lr = 2 * m_l, 0.02
    torch.manual_seed(0)
    model = resmlp(width=32, depth=depth)
    ref = reference_from(model, depth, branch=1 / m_l)
    ln, w, b = in_block(ref)
    ref_opt = torch.optim.SGD([  # alpha = 1: SGD LR x m_L inside the blocks
        {"params": [*ref.inp.parameters(), *ref.out.parameters()], "lr": lr},
        {"params": ln + w + b, "lr": lr * m_l},
    ], lr=lr, momentum=0.9)
    opt = ezp.get_mup_optimizer(model, lr=lr, optimizer="sgd", momentum=0.9)
    train_and_compare(model, opt, ref, ref_opt)


def test_width_and_depth_together_by_hand(resmlp):
    plan = resmlp.plan(width=128, depth=8)  # m_w = 4, m_L = 4, alpha = 1
    fc1, fc2 = plan["blocks.7.fc1.weight"], plan["blocks.7.fc2.weight"]
    assert (fc1.lr_mult, fc1.eps_mult, fc1.fold) == pytest.approx((1 / 4, 1 / 16, 1.0))
    # the branch multiplier 1/4 folded into fc2: init x 1/4, LR x 1/4, eps / (1/4)
    assert (fc2.lr_mult, fc2.eps_mult, fc2.fold) == pytest.approx((1 / 16, 1 / 4, 1 / 4))
    assert fc2.init_std == pytest.approx(fc1.init_std / math.sqrt(2) / 4, rel=0.05)  # fan-in 2w vs w
    assert plan["blocks.7.ln.weight"].eps_mult == pytest.approx(1 / 4)
    assert plan["inp.weight"].lr_mult == 1.0 and plan["out.weight"].lr_mult == pytest.approx(1 / 4)


def residual_rms_after_steps(model, opt, steps=3):
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 65, (8, 32), generator=g)
    for _ in range(steps):
        opt.zero_grad()
        logits = model(idx[:, :-1])
        nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten()).backward()
        opt.step()
    with torch.no_grad():
        x = model.wte(idx) + model.wpe(torch.arange(idx.shape[1]))
        for block in model.blocks:
            x = block(x)
    return float(x.pow(2).mean().sqrt())


@pytest.mark.slow
def test_depth_coordinate_check_completep_flat_sp_drifts():
    depths = [2, 4, 8, 16]
    f = ezp.wrap(GPT, base_width=32, base_depth=2, width_multiple=4, block_size=32)
    ours, plain = [], []
    for depth in depths:
        torch.manual_seed(0)
        model = f(width=32, depth=depth)
        ours.append(residual_rms_after_steps(model, ezp.get_mup_optimizer(model, lr=1e-2, optimizer="adam")))
        torch.manual_seed(0)
        model = GPT(32, depth=depth, block_size=32)
        plain.append(residual_rms_after_steps(model, torch.optim.Adam(model.parameters(), lr=1e-2)))
    assert max(ours) / min(ours) < 1.5, ours
    assert plain[-1] / plain[0] > 2.0, plain


def test_hf_gpt2_at_twice_the_depth_does_not_apply_its_own_depth_init_twice():
    f = ezp.wrap(hf.gpt2, base_width=32, base_depth=2, width_multiple=4, vocab_size=64)
    assert f.branches == {"transformer.h.{i}.attn.c_proj": "fold", "transformer.h.{i}.mlp.c_proj": "fold"}
    torch.manual_seed(0)
    model = f(width=32, depth=4)
    # GPT-2 inits c_proj with 0.02/sqrt(2*n_layer): 0.01 at the base depth 2; CompleteP then folds 1/2
    std = float(torch.cat([model.transformer.h[i].attn.c_proj.weight.detach().flatten() for i in range(4)]).std())
    assert std == pytest.approx(0.01 / 2, rel=0.05)
    plan = ezp.plan_of(model)
    assert plan["transformer.h.3.attn.c_attn.weight"].role == "hidden"
    assert plan["transformer.h.3.mlp.c_proj.weight"].fold == pytest.approx(0.5)
    assert model(torch.randint(0, 64, (2, 8))).logits.shape == (2, 8, 64)


def test_hf_llama_at_twice_the_depth():
    f = ezp.wrap(hf.llama, base_width=32, base_depth=2, width_multiple=8, vocab_size=64)
    assert f.branches == {"model.layers.{i}.self_attn.o_proj": "fold", "model.layers.{i}.mlp.down_proj": "fold"}
    model = f(width=64, depth=4)
    plan = ezp.plan_of(model)
    assert plan["model.layers.3.mlp.down_proj.weight"].fold == pytest.approx(0.5)
    assert plan["model.layers.3.self_attn.k_proj.weight"].shape_expr[0] == plan["model.layers.3.self_attn.k_proj.weight"].shape_expr[1] / 2
    assert plan["model.layers.3.input_layernorm.weight"].eps_mult == pytest.approx(0.5)
    assert model(torch.randint(0, 64, (2, 8))).logits.shape == (2, 8, 64)


@pytest.mark.parametrize("factory, branches, inputs", [
    (hf.bert, {"encoder.layer.{i}.attention.output.dense", "encoder.layer.{i}.output.dense"},
     lambda: (torch.randint(0, 65, (2, 8)),)),
    (hf.vit, {"vit.layers.{i}.attention.o_proj", "vit.layers.{i}.mlp.fc2"}, lambda: (torch.randn(2, 3, 16, 16),)),
])
def test_hf_bert_post_ln_and_vit_at_twice_the_depth(factory, branches, inputs):
    f = ezp.wrap(factory, base_width=32, base_depth=2, width_multiple=4)
    assert f.branches == dict.fromkeys(branches, "fold")
    model = f(width=32, depth=4)
    folds = {n: t.fold for n, t in ezp.plan_of(model).tensors.items() if n.endswith(".weight")
             and re.sub(r"\.\d+\.", ".{i}.", n.rpartition(".")[0], count=1) in branches}
    assert len(folds) == 8 and all(v == pytest.approx(0.5) for v in folds.values()), folds
    assert torch.isfinite(model(*inputs())[0]).all()


def test_factory_that_ignores_depth():
    with pytest.raises(ValueError, match="ignores its depth argument"):
        ezp.wrap(lambda width, depth: ResMLP(width, 2), base_width=32, base_depth=2).plan(width=64)


def test_blocks_without_a_branch_name_the_block_and_branches():
    def plain_stack(width, depth):
        return nn.Sequential(nn.Linear(8, width), *[nn.Linear(width, width) for _ in range(depth)])

    with pytest.raises(ValueError, match=r"no residual branch was found in .* branches=\["):
        ezp.wrap(plain_stack, base_width=32, base_depth=2).plan(width=64, depth=4)


def test_branches_override_and_bad_depth_arguments():
    f = ezp.wrap(ResMLP, base_width=32, base_depth=2, branches=["blocks.*.fc2"])
    assert f.branches == {"blocks.{i}.fc2": "fold"}
    with pytest.raises(ValueError, match="matches no module inside a repeated block"):
        _ = ezp.wrap(ResMLP, base_width=32, base_depth=2, branches=["head.*"]).branches
    with pytest.raises(ValueError, match="not probed in depth: pass base_depth"):
        ezp.wrap(ResMLP, base_width=32, depth=2)(width=32, depth=4)
    with pytest.raises(ValueError, match="depth_alpha=2"):
        ezp.wrap(ResMLP, base_width=32, base_depth=2, depth_alpha=2)


def test_optimizer_refuses_depth_in_place_and_a_mismatched_depth(resmlp):
    with pytest.raises(ValueError, match=r"depth cannot be changed in place.*base_depth"):
        ezp.get_mup_optimizer(ResMLP(47, 2), lr=1e-2, width=64, depth=4)
    with pytest.raises(ValueError, match="carries a plan for depth 4; got depth=8"):
        ezp.get_mup_optimizer(resmlp(width=32, depth=4), lr=1e-2, depth=8)


class ReferenceHookResNet(HookResNet):
    """The same network with the branch multiplier written out."""

    def __init__(self, width, depth, branch):
        super().__init__(width, depth)
        self.branch = branch

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + self.branch * b(torch.tanh(x))
        return self.out(x)


def test_branch_without_own_weight_gets_a_forward_multiplier_equal_to_the_reference():
    m_l, lr, eps = 4, 1e-2, 1e-8
    f = ezp.wrap(HookResNet, base_width=32, base_depth=2)
    assert f.branches == {"blocks.{i}": "hook"}
    torch.manual_seed(0)
    model = f(width=32, depth=2 * m_l)
    plan = ezp.plan_of(model)
    assert plan.multipliers == {f"blocks.{i}": 1 / m_l for i in range(2 * m_l)}
    assert plan["blocks.7.fc.weight"].fold == 1.0
    ref = ReferenceHookResNet(32, 2 * m_l, branch=1 / m_l)
    ref.load_state_dict(model.state_dict())
    ref_opt = torch.optim.Adam([  # alpha = 1: hidden LR x m_L^0; eps x m_L^-1 inside the blocks
        {"params": [*ref.inp.parameters(), *ref.out.parameters()], "lr": lr},
        {"params": ref.blocks.parameters(), "lr": lr, "eps": eps / m_l},
    ], lr=lr)
    train_and_compare(model, ezp.get_mup_optimizer(model, lr=lr, optimizer="adam"), ref, ref_opt)


def test_a_norm_ending_the_branch_gets_a_hook_not_a_fold():
    class Sandwich(nn.Module):
        """x = x + ln(fc(x)): the gain starts at 1, so folding 1/m_L into its init would change nothing."""

        def __init__(self, width, depth):
            super().__init__()
            self.inp = nn.Linear(8, width)
            self.blocks = nn.ModuleList(nn.ModuleDict({"fc": nn.Linear(width, width), "ln": nn.LayerNorm(width)})
                                        for _ in range(depth))
            self.out = nn.Linear(width, 1)

        def forward(self, x):
            x = self.inp(x)
            for b in self.blocks:
                x = x + b["ln"](b["fc"](x))
            return self.out(x)

    f = ezp.wrap(Sandwich, base_width=32, base_depth=2)
    assert f.branches == {"blocks.{i}.ln": "hook"}
    model = f(width=32, depth=8)
    x = torch.randn(4, 8)
    with torch.no_grad():
        h = model.inp(x)
        for b in model.blocks:
            ln = b["ln"]
            h = h + 0.25 * nn.functional.layer_norm(b["fc"](h), (32,), ln.weight, ln.bias, ln.eps)
        torch.testing.assert_close(model(x), model.out(h))


# --- residual branches behind a scalar or a gain -------------------------------------------------

class LayerScale(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), 0.1))


class ScaledResMLP(ResMLP):
    """ResMLP with its branch behind a number or a layer-scale gain, as CompleteP-ready code writes it;
    ``branch`` is an extra explicit multiplier, for the hand-written reference."""

    def __init__(self, width, depth, form="c*f", branch=1.0):
        super().__init__(width, depth)
        self.form, self.branch, self.c = form, branch, {"c*f": 0.5, "f*c": 0.5, "f/c": 2.0}.get(form, 1.0)
        self.out = nn.Linear(width, 64)  # a readout of 2048 weights: its base std is measured in a few builds
        for b in self.blocks:
            b["scale"] = LayerScale(width)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            f = b["fc2"](torch.relu(b["fc1"](b["ln"](x)))) * self.branch
            x = x + {"c*f": lambda: self.c * f, "f*c": lambda: f * self.c, "f/c": lambda: f / self.c,
                     "gamma*f": lambda: b["scale"].gamma * f}[self.form]()
        return self.out(x)


@pytest.mark.parametrize("form", ["c*f", "f*c", "gamma*f", "f/c"])
def test_a_branch_behind_a_scalar_or_a_gain_trains_as_the_reference_completep(form):
    """At 4x depth: outputs and 10 AdamW steps equal the same network with the branch multiplier 1/4 written
    out, its fc2 un-folded, and CompleteP's eps x m_L^-1 inside the blocks set by hand."""
    m_l, lr, eps = 4, 1e-2, 1e-8
    f = ezp.wrap(ScaledResMLP, base_width=32, base_depth=2, form=form)
    assert f.branches == {"blocks.{i}.fc2": "fold"}
    torch.manual_seed(0)
    model = f(width=32, depth=2 * m_l)
    ref = ScaledResMLP(32, 2 * m_l, form, branch=1 / m_l)
    ref.load_state_dict({k: v * m_l if ".fc2." in k else v for k, v in model.state_dict().items()})
    in_blocks = [p for n, p in ref.named_parameters() if n.startswith("blocks.")]
    ref_opt = torch.optim.AdamW([
        {"params": [*ref.inp.parameters(), *ref.out.parameters()], "lr": lr},
        {"params": in_blocks, "lr": lr, "eps": eps / m_l},
    ], lr=lr, eps=eps, weight_decay=0.1)
    opt = ezp.get_mup_optimizer(model, lr=lr, optimizer="adamw", eps=eps, weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    train_and_compare(model, opt, ref, ref_opt, steps=10, outputs=64)
