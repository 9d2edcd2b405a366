"""ezmup style: a model built at the sentinel width, re-created at the target inside get_mup_optimizer."""

import pytest
import torch
from torch import nn

import ezmup_plus as ezp
from ezmup_plus.models.gpt import GPT
from ezmup_plus.models.mlp import MLP
from tiny_models import TinyTransformer


class SplitHeads(nn.Module):
    """Keeps the width in an int attribute used in forward, like nanoGPT's ``n_embd``."""

    def __init__(self, width):
        super().__init__()
        self.n_embd = width
        self.emb = nn.Embedding(10, width)
        self.ln = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.head = nn.Linear(width, 10)

    def forward(self, idx):
        q, k, v = self.qkv(self.ln(self.emb(idx))).split(self.n_embd, dim=-1)
        return self.head(q * k + v)


def test_mlp_rescaled_in_place_matches_wrap():
    model = MLP(47)
    opt = ezp.get_mup_optimizer(model, width=188, lr=1e-2, optimizer="adam")
    assert model.hidden[1].weight.shape == (188, 188)
    assert (model.hidden[1].in_features, model.hidden[1].out_features, model.readout.in_features) == (188, 188, 188)
    assert model(torch.randn(5, 8)).shape == (5, 1)
    by_name = {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}
    assert by_name["hidden.1.weight"] == pytest.approx(1e-2 / 4)
    assert by_name["readout.weight"] == pytest.approx(1e-2 / 4)
    assert by_name["hidden.0.weight"] == pytest.approx(1e-2)
    wrapped = ezp.wrap(MLP, base_width=47).plan(width=188)
    ours = ezp.plan_of(model)
    assert {t.name: (t.role, t.shape, t.lr_mult) for t in ours} == {t.name: (t.role, t.shape, t.lr_mult) for t in wrapped}
    # optimizer points at the new tensors
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}


def test_init_is_relative_to_the_sentinel_build():
    torch.manual_seed(0)
    model = MLP(47)
    hidden_std = float(model.hidden[1].weight.detach().std())
    bias_std = float(model.hidden[1].bias.detach().std())
    ezp.get_mup_optimizer(model, width=47 * 16, lr=1e-3)
    # re-drawn at the sentinel's std, then scaled by the rule (not by this draw's std): sampling error only
    assert float(model.hidden[1].weight.detach().std()) == pytest.approx(hidden_std / 4, rel=0.01)
    assert float(model.hidden[1].bias.detach().std()) == pytest.approx(bias_std, rel=0.15)  # vectors: x1


def test_int_attributes_layernorm_and_dtype_follow():
    model = SplitHeads(47).double()
    ezp.get_mup_optimizer(model, width=94, lr=1e-3)
    assert model.n_embd == 94 and model.ln.normalized_shape == (94,) and model.emb.embedding_dim == 94
    assert model.qkv.weight.dtype == torch.float64 and model.qkv.weight.shape == (282, 94)
    assert torch.equal(model.ln.weight, torch.ones(94, dtype=torch.float64))
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 10)


def test_refuses_what_one_probe_cannot_get_right():
    class Scaled(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.proj = nn.Linear(width, width)
            self.scale = width**-0.5

    with pytest.raises(ValueError, match=r"model.scale = .* looks derived from the width .*ezmup_plus.wrap"):
        ezp.get_mup_optimizer(Scaled(47), width=94, lr=1e-3)

    class Buffered(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.proj = nn.Linear(width, width)
            self.register_buffer("mask", torch.ones(width))

    with pytest.raises(ValueError, match="buffer mask has shape"):
        ezp.get_mup_optimizer(Buffered(47), width=94, lr=1e-3)
    with pytest.raises(ValueError, match=r"0.weight dim 0: 2209 is a multiple of 47\^2"):
        ezp.get_mup_optimizer(nn.Sequential(nn.Linear(47, 47 * 47)), width=94, lr=1e-3)
    with pytest.raises(ValueError, match="build the model at width=47"):
        ezp.get_mup_optimizer(MLP(32), width=94, lr=1e-3)


def test_width_given_twice_for_a_planned_model():
    model = ezp.wrap(MLP, base_width=32)(width=64)
    ezp.get_mup_optimizer(model, width=64, lr=1e-3)  # same width: fine
    with pytest.raises(ValueError, match="already carries a plan for width 64"):
        ezp.get_mup_optimizer(model, width=128, lr=1e-3)


def test_attention_in_place_is_planned_as_wrap_plans_it():
    """One head of width 47, the scale a `scaling` attribute given to SDPA: read from the one build, the head dim
    is w, so the logits get 1/d_head at the target as from wrap, and the model computes what wrap's model does."""
    torch.manual_seed(0)
    model = GPT(width=47, depth=2, n_head=1)
    ezp.get_mup_optimizer(model, width=188, lr=1e-3)
    wrapped = ezp.wrap(GPT, base_width=47, n_head=1, depth=2)(width=188)
    ours, theirs = ezp.plan_of(model), ezp.plan_of(wrapped)
    assert ours.attention == theirs.attention and ours.attention["blocks.0.attn"].factor == pytest.approx(0.5)
    assert {t.name: (t.role, t.shape, t.lr_mult, t.eps_mult) for t in ours} == {
        t.name: (t.role, t.shape, t.lr_mult, t.eps_mult) for t in theirs}
    assert model.blocks[1].attn.scaling == wrapped.blocks[1].attn.scaling == pytest.approx(47**0.5 / 188)
    wrapped.load_state_dict(model.state_dict())
    idx = torch.randint(0, 65, (2, 16))
    torch.testing.assert_close(model(idx), wrapped(idx))


def test_attention_scale_that_is_not_one_over_sqrt_d_is_refused():
    model = GPT(width=47, depth=1, n_head=1)
    model.blocks[0].attn.scaling = 0.5 * 47**-0.5  # some other law: one build cannot tell what it becomes
    with pytest.raises(ValueError, match=r"blocks.0.attn.scaling = .* is not 1/sqrt\(d_head\)"):
        ezp.get_mup_optimizer(model, width=94, lr=1e-3)


def test_attention_in_the_forward_folds_into_the_query_projection_in_place():
    torch.manual_seed(0)
    model = TinyTransformer(47, heads=1)
    del model.attn.scaling  # the 1/sqrt(d) is computed in the forward from the tensor's size
    ezp.get_mup_optimizer(model, width=94, lr=1e-3)
    plan = ezp.plan_of(model)
    assert plan.attention["attn"].via == "fold" and plan["attn.q.weight"].fold == pytest.approx(0.5**0.5)
