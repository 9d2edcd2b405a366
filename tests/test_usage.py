"""Roles and attention from traced use: parameters followed through views, einsum and matmuls into the
ops that use them; tied readouts; attention rescaled with no ``scaling`` attribute; the fallbacks."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ezmup_plus as ezp
from tiny_models import TiedLM, TinyTransformer


class StoredInOut(nn.Module):
    """Bare parameters stored (in, out) and used through ``@`` and ``einsum``; one is 3-d, per head."""

    def __init__(self, width, heads=4):
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(8, width) / 8**0.5)
        self.w_up = nn.Parameter(torch.randn(width, 4 * width) / width**0.5)
        self.w_heads = nn.Parameter(torch.randn(heads, 4 * width, width // heads) / (4 * width) ** 0.5)
        self.w_out = nn.Parameter(torch.randn(width, 3) / width**0.5)

    def forward(self, x):
        h = torch.relu(x @ self.w_in)
        h = torch.relu(h @ self.w_up)
        h = torch.einsum("bi,hid->bhd", h, self.w_heads).flatten(1)
        return torch.relu(h) @ self.w_out


class SameWithLinears(nn.Module):
    """The reference: the same function written with nn.Linear, whose layout the conventions know."""

    def __init__(self, width):
        super().__init__()
        self.w_in, self.w_up = nn.Linear(8, width, bias=False), nn.Linear(width, 4 * width, bias=False)
        self.w_heads, self.w_out = nn.Linear(4 * width, width, bias=False), nn.Linear(width, 3, bias=False)

    def forward(self, x):
        h = torch.relu(self.w_up(torch.relu(self.w_in(x))))
        return self.w_out(torch.relu(self.w_heads(h)))


def test_fan_in_is_the_contracted_dim_whatever_the_layout():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the trace tells every fan-in: no fallback warning
        ours = ezp.wrap(StoredInOut, base_width=32, width_multiple=4,
                        example_inputs=(torch.randn(2, 8),)).plan(width=128)
    reference = ezp.wrap(SameWithLinears, base_width=32).plan(width=128)
    for name in ("w_in", "w_up", "w_heads", "w_out"):
        t, ref = ours[name], reference[f"{name}.weight"]
        assert (t.role, t.fan_in, t.source) == (ref.role, ref.fan_in, "trace"), name
        assert (t.lr_mult, t.init_factor, t.eps_mult) == pytest.approx((ref.lr_mult, ref.init_factor, ref.eps_mult))
    assert str(ours["w_up"].fan_in) == "w" and ours["w_out"].role == "output"  # the (in, out) convention would miss
    assert str(ours["w_heads"].fan_in) == "4*w"  # contracted dim 1 of (heads, 4w, w/heads)


class Cumsum(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(4, width)
        self.w = nn.Parameter(torch.randn(width, width))

    def forward(self, x):
        return self.lin(x) @ torch.cumsum(self.w, 0)


def test_an_unknown_op_falls_back_with_a_warning_naming_the_tensor():
    with pytest.warns(UserWarning, match=r"w: used by aten\.cumsum.*cannot read a fan-in.*roles=\{'w'"):
        plan = ezp.wrap(Cumsum, base_width=32).plan(width=64)
    assert plan["w"].role == "hidden" and plan["w"].source == "convention"


class NeedsValues(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin, self.out = nn.Linear(4, width), nn.Linear(width, 1)

    def forward(self, x):
        if x.abs().max().item() > 1e6:  # reads a value: impossible on meta tensors
            x = x.clamp(-1e6, 1e6)
        return self.out(torch.relu(self.lin(x)))


def test_a_forward_that_fails_on_meta_runs_on_cpu_within_the_budget(monkeypatch):
    """The meta forward cannot read a value; a real one at the sentinel widths (small by construction) can."""
    for inputs in (None, (torch.randn(2, 4),)):
        f = ezp.wrap(NeedsValues, base_width=32, example_inputs=inputs)
        plan = f.plan(width=64)
        assert plan["out.weight"].role == "output" and plan["out.weight"].source == "trace"
        run = f.analysis.forward
        assert (run.device, run.forwards) == ("cpu", 2) and "item" in run.reason and 0 < run.peak_bytes < 2**20
        assert str(plan).splitlines()[0].endswith("traced on cpu")
    monkeypatch.setattr("ezmup_plus.usage.CPU_TRACE_BUDGET", 1000)  # the model at 47 takes 1132 bytes
    with pytest.raises(RuntimeError, match=r"cannot run on meta tensors \(.*item.*\).*would build 0.00108 MiB.*"
                                           r"above the 0.000954 MiB budget.*example_inputs=.*trace=False"):
        ezp.wrap(NeedsValues, base_width=32).plan(width=64)
    with pytest.warns(UserWarning, match="trace=False: roles come from layer types"):
        plan = ezp.wrap(NeedsValues, base_width=32, trace=False).plan(width=64)
    assert plan["out.weight"].role == "output" and plan["out.weight"].source == "convention"


class TiedMatmulLM(TiedLM):
    """TiedLM's function, with the readout written as a matmul in the root's forward."""

    def forward(self, idx):
        return torch.relu(self.hidden(self.emb(idx))) @ self.emb.weight.T


def test_a_tied_readout_written_as_a_matmul_is_found():
    plan = ezp.wrap(TiedMatmulLM, base_width=32).plan(width=128)
    assert plan["emb.weight"].role == "input" and plan["emb.weight"].lr_mult == 1.0
    assert plan.multipliers == {"": pytest.approx(0.25)}  # the root returns the logits
    torch.manual_seed(0)
    ours = ezp.wrap(TiedMatmulLM, base_width=32)(width=128)
    reference = ezp.wrap(TiedLM, base_width=32)(width=128)  # tied through aliasing, multiplier on `head`
    reference.load_state_dict(ours.state_dict(), strict=False)
    idx = torch.randint(0, 16, (4, 5))
    torch.testing.assert_close(ours(idx), reference(idx))


class TiedThenSoftmax(TiedLM):
    def forward(self, idx):
        return (torch.relu(self.hidden(self.emb(idx))) @ self.emb.weight.T).log_softmax(-1)


def test_a_tied_readout_with_nowhere_for_its_multiplier_is_an_error():
    with pytest.raises(ValueError, match=r"emb.weight is used as an input embedding and as the readout.*own module"):
        ezp.wrap(TiedThenSoftmax, base_width=32).plan(width=64)


# --- attention with no `scaling` attribute: the query rows are rescaled --------------------------

@pytest.mark.parametrize("kernel,fused,q_norm,via,query", [
    ("matmul", False, False, "fold", ("attn.q", 0, 64)),  # an unfused projection: into its init and LR
    ("sdpa", True, False, "query", ("attn.qkv", 0, 64)),  # the first third of the fused output, by a hook
    ("matmul", False, True, "query", ("attn.q_norm", 0, 64)),  # a norm on the queries: its output is rescaled
    ("softcap", False, False, "scaling", ("attn.q", 0, 64)),  # the attribute is used: it is the one changed
])
def test_attention_logits_are_rescaled_through_the_attribute_it_uses_or_the_query_rows(kernel, fused, q_norm, via,
                                                                                        query):
    """The modules all carry a float ``scaling``; only the "softcap" kernel uses it (recognised by identity)."""
    options = dict(kernel=kernel, fused=fused, q_norm=q_norm)
    f = ezp.wrap(TinyTransformer, base_width=16, width_multiple=2, **options)
    a = f.plan(width=64).attention["attn"]
    assert (a.factor, a.via, (a.query, a.start, a.stop)) == (pytest.approx(0.5), via, query)  # sqrt(8/32)
    torch.manual_seed(0)
    ours = f(width=64)
    # 1/d relative to base, written by hand (folded: the query weights carry it)
    reference = TinyTransformer(64, logit_mult=1.0 if via == "fold" else 0.5, **options)
    reference.load_state_dict(ours.state_dict())
    idx = torch.randint(0, 16, (3, 7))
    torch.testing.assert_close(ours(idx), reference(idx))
    ours(idx).square().sum().backward()
    reference(idx).square().sum().backward()
    for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    assert f(width=16)(idx).shape == (3, 7, 16)  # base: no hook


def test_a_folded_logit_factor_trains_as_the_forward_multiplier_it_replaces():
    """Folded: query weights x 1/2, their Adam LR x 1/2 and eps x 2. The reference keeps the factory's query
    weights and LR and multiplies the logits by 1/2 instead; both take the same steps (TP5's abc symmetry)."""
    f = ezp.wrap(TinyTransformer, base_width=16, width_multiple=2)
    torch.manual_seed(0)
    ours = f(width=64)
    opt = ezp.get_mup_optimizer(ours, lr=1e-2, optimizer="adam")
    reference = TinyTransformer(64, logit_mult=0.5)
    reference.load_state_dict({k: v / 0.5 if k.startswith("attn.q.") else v for k, v in ours.state_dict().items()})
    params = dict(reference.named_parameters())
    ref_opt = torch.optim.Adam([
        {"params": [params[n] for n in g["param_names"]],
         "lr": g["lr"] / 0.5 if g["param_names"][0].startswith("attn.q.") else g["lr"],
         "eps": g["eps"] * 0.5 if g["param_names"][0].startswith("attn.q.") else g["eps"]}
        for g in opt.param_groups])
    assert all(len({n.startswith("attn.q.") for n in g["param_names"]}) == 1 for g in opt.param_groups)
    idx = torch.randint(0, 16, (4, 7), generator=torch.Generator().manual_seed(1))
    for _ in range(4):
        for net, o in ((ours, opt), (reference, ref_opt)):
            o.zero_grad()
            F.cross_entropy(net(idx).flatten(0, 1), idx.flatten()).backward()
            o.step()
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), reference(idx))


class PerHeadFused(TinyTransformer):
    """q, k, v interleaved per head in one projection (as GPT-NeoX does): the query rows are not one block."""

    def forward(self, idx):
        x = self.emb(idx)
        b, t, c = x.shape
        qkv = self.attn.q(x).repeat(1, 1, 3).view(b, t, self.attn.heads, -1).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c))


class MultiQueryFused(TinyTransformer):
    """Falcon's multi-query layout: one projection of heads + 2 head dims, split after the heads view."""

    def __init__(self, width, logit_mult=1.0):
        super().__init__(width, logit_mult=logit_mult)
        self.fused = nn.Linear(width, 2 * width)  # heads + 2 = 4 head dims of width / 2

    def forward(self, idx):
        x = self.emb(idx)
        b, t, c = x.shape
        qkv = self.fused(x).view(b, t, 4, c // 2)
        q, k, v = qkv[:, :, :2].transpose(1, 2), qkv[:, :, [2]].transpose(1, 2), qkv[:, :, [3]].transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k.expand_as(q), v.expand_as(q), scale=self.attn.logit_mult / (c // 2)**0.5)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class InterleavedQKV(TinyTransformer):
    """Bloom's layout: one projection whose rows are (q, k, v) per head, split after a (heads, 3, d) view."""

    def __init__(self, width, logit_mult=1.0):
        super().__init__(width, logit_mult=logit_mult)
        self.fused = nn.Linear(width, 3 * width)

    def forward(self, idx):
        x = self.emb(idx)
        b, t, c = x.shape
        qkv = self.fused(x).view(b, t, 2, 3, c // 2)
        q, k, v = (qkv[..., i, :].transpose(1, 2) for i in range(3))
        y = F.scaled_dot_product_attention(q, k, v, scale=self.attn.logit_mult / (c // 2)**0.5)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class NormalizedQueries(TinyTransformer):
    def forward(self, idx):
        x = self.emb(idx)
        q, k = F.normalize(self.attn.q(x), dim=-1).unsqueeze(1), self.attn.k(x).unsqueeze(1)
        return self.out(F.scaled_dot_product_attention(q, k, k).squeeze(1))


class TorchEncoder(nn.Module):
    """torch's own nn.TransformerEncoderLayer, whose query projection lives inside nn.MultiheadAttention.
    With ``logit_mult`` its forward is written out by hand (in eval mode: no dropout), logits x ``logit_mult``."""

    def __init__(self, width, heads=2, logit_mult=1.0):
        super().__init__()
        self.logit_mult = logit_mult
        self.emb = nn.Embedding(16, width)
        self.layer = nn.TransformerEncoderLayer(width, heads, 2 * width, batch_first=True)
        self.out = nn.Linear(width, 16)

    def forward(self, idx):
        x = self.emb(idx)
        return self.out(self.layer(x) if self.logit_mult == 1.0 else self.by_hand(x))

    def by_hand(self, x):
        layer, a = self.layer, self.layer.self_attn
        b, t, c = x.shape
        d = c // a.num_heads
        q, k, v = (z.view(b, t, a.num_heads, d).transpose(1, 2)
                   for z in F.linear(x, a.in_proj_weight, a.in_proj_bias).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, scale=self.logit_mult / d**0.5).transpose(1, 2).reshape(b, t, c)
        x = layer.norm1(x + a.out_proj(y))
        return layer.norm2(x + layer.linear2(F.relu(layer.linear1(x))))


@pytest.mark.parametrize("model,attention,via,query", [
    (MultiQueryFused, "", "query", ("fused", 0, 64, 0, 1)),  # heads + 2: the first heads are the queries
    (InterleavedQKV, "", "query", ("fused", 0, 32, 96, 2)),  # per head (q, k, v): every third block of d rows
    (TorchEncoder, "layer.self_attn", "weight", ("layer.self_attn", 0, 64, 0, 1)),  # first rows of in_proj_weight
    (lambda width, logit_mult=1.0: TinyTransformer(width, kernel="baddbmm", logit_mult=logit_mult), "attn", "fold",
     ("attn.q", 0, 64, 0, 1)),  # Bloom's baddbmm scores, heads merged into the batch dim
])
def test_query_rows_that_are_no_single_block_get_the_logit_factor(model, attention, via, query):
    """Outputs and gradients equal the same model computing 1/d by hand (its kernel given the 1/d scale)."""
    f = ezp.wrap(model, base_width=16, width_multiple=2)
    a = f.plan(width=64).attention[attention]
    assert (a.factor, a.via, (a.query, a.start, a.stop, a.every, a.blocks)) == (pytest.approx(0.5), via, query)
    torch.manual_seed(0)
    ours = f(width=64).eval()
    reference = model(64, logit_mult=1.0 if via == "fold" else 0.5).eval()
    reference.load_state_dict(ours.state_dict())
    idx = torch.randint(0, 16, (3, 7))
    torch.testing.assert_close(ours(idx), reference(idx))
    ours(idx).square().sum().backward()
    reference(idx).square().sum().backward()
    for (name, p), q in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize("model", [PerHeadFused, NormalizedQueries])
def test_attention_that_cannot_be_rescaled_is_an_error(model):
    with pytest.raises(ValueError, match=r"computes attention with a head dim that grows with the width \(d_head = "
                                         r"w(/2)?\).*no way to do it.*attn_scale='1/sqrt\(d\)'"):
        ezp.wrap(model, base_width=16, width_multiple=2).plan(width=64)
    ezp.wrap(model, base_width=16, width_multiple=2, attn_scale="1/sqrt(d)").plan(width=64)  # the way out


def test_multi_head_attention_with_a_fixed_head_dim_needs_nothing():
    assert ezp.wrap(lambda width: TorchEncoder(width, heads=width // 8), base_width=16,
                    width_multiple=8).plan(width=64).attention == {}


class ScaledEmbedding(nn.Module):
    """Multiplies its embedding by sqrt(width), as Gemma does: a width-dependent number muP knows nothing of."""

    def __init__(self, width):
        super().__init__()
        self.width = width
        self.emb, self.out = nn.Embedding(16, width), nn.Linear(width, 16)
        self.embed_scale = width**0.5

    def forward(self, idx):
        return self.out(self.emb(idx) * self.width**0.5)


def test_numbers_that_change_with_the_width_are_reported_under_warn():
    with pytest.warns(UserWarning) as caught:
        ezp.wrap(ScaledEmbedding, base_width=32, width_constants="warn").plan(width=64)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("embed_scale = 6.856 at width 47 and 7.28 at width 53: a number that changes")
               for m in messages)
    assert any(m.startswith("the root module multiplies a tensor by 6.856 at width 47") for m in messages)
    with pytest.raises(ValueError, match=r"(?s)width_constants='error'.*multiplies a tensor by 6.856"):
        ezp.wrap(ScaledEmbedding, base_width=32, width_constants="error").plan(width=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # attention's 1/sqrt(d) is accounted for: no warning
        ezp.wrap(TinyTransformer, base_width=16, width_multiple=2).plan(width=64)


def test_width_constants_is_read_from_yaml(tmp_path):
    """``mup.width_constants`` in a config reaches the plan: correct holds the number (a plan constant), error refuses."""
    from ezmup_plus.config import build_factory, load_config

    config = tmp_path / "scaled.yaml"
    config.write_text(f"model: {{factory: '{__name__}:ScaledEmbedding', width: 64}}\nmup: {{base_width: 32}}\n")
    assert build_factory(load_config(config)).plan(width=64).constants  # the default, correct
    with pytest.raises(ValueError, match=r"(?s)width_constants='error'.*multiplies a tensor by 6.856"):
        build_factory(load_config(config, ["mup.width_constants=error"])).plan(width=64)


class HeldScale(ScaledEmbedding):
    """ScaledEmbedding with its number written at the base width 32: the hand-written reference."""

    def forward(self, idx):
        return self.out(self.emb(idx) * 32**0.5)


class ScaledReadout(nn.Module):
    """T5's pattern: the features times d**-0.5 before a bias-free readout."""

    def __init__(self, width):
        super().__init__()
        self.width = width
        self.emb, self.out = nn.Embedding(16, width), nn.Linear(width, 16, bias=False)

    def forward(self, idx):
        return self.out(torch.relu(self.emb(idx)) * self.width**-0.5)


def test_a_width_dependent_number_is_held_at_its_base_value():
    """Folded into the embedding it multiplies (init and LR x 1/2 at 4x), or into the bias-free readout it feeds
    (T5's d**-0.5; a hook where that readout is tied), and shown in the plan."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # corrected: nothing to warn about
        f = ezp.wrap(ScaledEmbedding, base_width=32)
        plan = f.plan(width=128)
    assert plan["emb.weight"].fold == pytest.approx(0.5) and plan["emb.weight"].lr_mult == pytest.approx(0.5)
    assert "multiplies a tensor by 6.856 at width 47 and 7.28 at width 53: x 0.5 on emb (folded" in str(plan)
    torch.manual_seed(0)
    ours, reference = f(width=128), HeldScale(128)
    reference.load_state_dict({k: v / 0.5 if k == "emb.weight" else v for k, v in ours.state_dict().items()})
    idx = torch.randint(0, 16, (3, 7))
    torch.testing.assert_close(ours(idx), reference(idx))
    readout = ezp.wrap(ScaledReadout, base_width=32).plan(width=128)
    assert readout.multipliers == {} and readout["out.weight"].fold == pytest.approx(2.0)
