"""Agreement with microsoft/mup 1.0 itself (#19, #13 item 4).

The same MLP (8 -> w -> w -> 1), pre-LN Transformer (separate q/k/v/o, MLP 4w) and tied-embedding model are written
once the microsoft/mup way (``MuReadout`` / ``MuSharedReadout``, ``set_base_shapes`` with a delta model, ``MuAdam``,
``MuAdamW``, ``MuSGD``) and once as plain PyTorch wrapped with ``conventions="microsoft_mup"``, at 4x and 8x the
base width. From one seed every tensor starts equal, the effective init std and LR (``MupPlan.effective``) agree per
tensor, and 10 steps from matched weights at the optimizers' default eps agree to 1e-6 relative.

The mapping: MuReadout's ``output_mult / width_mult`` is the plan's multiplier on the readout's input (a model's own
``output_mult`` stays in the model); ``set_base_shapes(rescale_params=True)``'s x sqrt(width_mult) on MuReadout and
Linear biases brings PyTorch's default draws to their base-width std, where ezmup_plus puts every tensor; MuAdam's
``lr / width_mult`` and ``weight_decay * width_mult`` on matrices are the hidden rules with ``wd_mode="independent"``;
the 1/d attention is written in both models; MuSharedReadout is the tied readout, its weight x sqrt(width_mult) the
conventions' tied init; eps is the optimizer's everywhere.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ezmup_plus as ezp
from ezmup_plus.build import apply_plan
from ezmup_plus.plan import make_plan

mup = pytest.importorskip("mup")

BASE, VOCAB, STEPS = 16, 32, 10
WIDTHS = (4 * BASE, 8 * BASE)
OPTIMIZERS = {  # name: (microsoft/mup's optimizer, ezmup_plus's name, keyword arguments of both)
    "adam": (mup.MuAdam, "adam", dict(lr=1e-2)),
    "adamw": (mup.MuAdamW, "adamw", dict(lr=1e-2, weight_decay=0.1)),
    "sgd": (mup.MuSGD, "sgd", dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
}


class MLP(nn.Module):
    def __init__(self, width, mu=False):
        super().__init__()
        self.hidden = nn.ModuleList([nn.Linear(8, width), nn.Linear(width, width)])
        self.readout = (mup.MuReadout if mu else nn.Linear)(width, 1)

    def forward(self, x):
        for layer in self.hidden:
            x = torch.relu(layer(x))
        return self.readout(x)


class Block(nn.Module):
    """Pre-LN, separate q/k/v/o, MLP 4w; the logits are scaled by 1/d as microsoft/mup asks the user to write."""

    def __init__(self, width, heads=2):
        super().__init__()
        self.heads, self.scaling = heads, 1.0 / (width // heads)
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.fc, self.proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, c = x.shape
        h = self.ln_1(x)
        q, k, v = (z(h).view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling)
        x = x + self.o(y.transpose(1, 2).reshape(b, t, c))
        return x + self.proj(F.gelu(self.fc(self.ln_2(x))))


class Transformer(nn.Module):
    def __init__(self, width, mu=False, block_size=8):
        super().__init__()
        self.emb, self.pos = nn.Embedding(VOCAB, width), nn.Embedding(block_size, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(2))
        self.ln_f = nn.LayerNorm(width)
        self.readout = (mup.MuReadout if mu else nn.Linear)(width, VOCAB)

    def forward(self, idx):
        x = self.emb(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.readout(self.ln_f(x))


class TiedLM(nn.Module):
    """The readout shares the embedding. MuSharedReadout(bias=True) makes a bias of the wrong shape in mup 1.0
    ((width,) instead of (vocab,)), so the readout has no bias."""

    def __init__(self, width, mu=False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, width)
        self.hidden = nn.Linear(width, width)
        if mu:
            self.head = mup.MuSharedReadout(self.emb.weight, bias=False)
        else:
            self.head = nn.Linear(width, VOCAB, bias=False)
            self.head.weight = self.emb.weight

    def forward(self, idx):
        return self.head(torch.relu(self.hidden(self.emb(idx))))


MODELS = {"mlp": MLP, "transformer": Transformer, "tied": TiedLM}
WRAP = {"transformer": dict(width_multiple=2)}  # two heads


@pytest.fixture(scope="module")
def factories():
    return {name: ezp.wrap(cls, base_width=BASE, conventions="microsoft_mup", **WRAP.get(name, {}))
            for name, cls in MODELS.items()}


def microsoft_model(cls, width, seed=0):
    """Built and rescaled as microsoft/mup's README does it: base and delta models give the base shapes."""
    torch.manual_seed(seed)
    model = cls(width, mu=True)
    return mup.set_base_shapes(model, cls(BASE, mu=True), delta=cls(2 * BASE, mu=True))


def batches(name, n=STEPS):
    g = torch.Generator().manual_seed(1)
    if name == "mlp":
        return [(torch.randn(32, 8, generator=g), torch.randn(32, 1, generator=g)) for _ in range(n)]
    return [(torch.randint(0, VOCAB, (4, 8), generator=g), torch.randint(0, VOCAB, (4, 8), generator=g))
            for _ in range(n)]


def loss_of(name, model, x, y):
    out = model(x)
    return F.mse_loss(out, y) if name == "mlp" else F.cross_entropy(out.flatten(0, 1), y.flatten())


def train(name, model, opt, data):
    losses = []
    for x, y in data:
        opt.zero_grad()
        loss = loss_of(name, model, x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def microsoft_multipliers(model):
    """Per tensor, the forward multiplier MuReadout (and MuSharedReadout: the readout use of a tied weight) puts on
    its weight's product; 1 elsewhere."""
    readouts = {id(m.weight): m.output_mult / m.width_mult() for m in model.modules() if isinstance(m, mup.MuReadout)}
    return {n: readouts.get(id(p), 1.0) for n, p in model.named_parameters()}


def microsoft_lr_factors(model, opt, base_lr, fold_lr):
    """Per tensor, the group LR microsoft/mup's optimizer gave it, with its forward multiplier acting like a fold."""
    names = {id(p): n for n, p in model.named_parameters()}
    mult = microsoft_multipliers(model)
    return {names[id(p)]: g["lr"] / base_lr * mult[names[id(p)]] ** fold_lr for g in opt.param_groups
            for p in g["params"]}


def microsoft_init_stds(cls, width, seeds=8, samples=512):
    """Effective init std per tensor (std x forward multiplier), pooled over seeded builds; None for constants.
    Tensors with fewer than ``samples`` pooled values (a one-element bias) are left out: too few to measure."""
    values = {}
    for seed in range(seeds):
        model = microsoft_model(cls, width, seed)
        mult = microsoft_multipliers(model)
        for n, p in model.named_parameters():
            values.setdefault(n, []).append(p.detach().flatten() * mult[n])
    pooled = {n: torch.cat(v) for n, v in values.items()}
    return {n: None if bool((v == v[0]).all()) else float(v.std()) for n, v in pooled.items() if v.numel() >= samples}


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_effective_init_and_lr_agree_per_tensor(factories, name, width):
    """From one seed both draw the same numbers and rescale them by the same factors, so every tensor starts equal;
    the planned effective stds are microsoft/mup's (measured over seeds) and the effective LRs are equal."""
    theirs = microsoft_model(MODELS[name], width)
    torch.manual_seed(0)
    ours = factories[name](width)
    for (n, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.allclose(p, q, rtol=1e-6, atol=0), n
    plan = ezp.plan_of(ours)
    effective = plan.effective()
    for n, std in microsoft_init_stds(MODELS[name], width).items():
        assert (effective[n].init_std is None) == (std is None), n
        if std is not None:
            assert effective[n].init_std == pytest.approx(std, rel=0.06), n
    for opt_name, (mu_cls, _, kwargs) in OPTIMIZERS.items():
        family = ezp.optim.resolve_optimizer(opt_name)[1]
        lr_theirs = microsoft_lr_factors(theirs, mu_cls(theirs.parameters(), **kwargs), kwargs["lr"],
                                         ezp.rules.FAMILIES[family].fold_lr)
        lr_ours = {n: e.lr_factor for n, e in plan.for_family(family).effective().items()}
        assert lr_ours == pytest.approx(lr_theirs, rel=1e-12), opt_name


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_ten_steps_from_matched_weights_agree(factories, name, opt_name, width):
    mu_cls, ours_name, kwargs = OPTIMIZERS[opt_name]
    theirs = microsoft_model(MODELS[name], width)
    ours = factories[name](width)
    ours.load_state_dict(theirs.state_dict())
    data = batches(name)
    lost_theirs = train(name, theirs, mu_cls(theirs.parameters(), **kwargs), data)
    lost_ours = train(name, ours, ezp.get_mup_optimizer(ours, optimizer=ours_name, **kwargs), data)
    assert lost_ours == pytest.approx(lost_theirs, rel=1e-6)
    for (n, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), n


def test_the_default_conventions_differ_only_where_the_readme_says(factories):
    """At the default conventions eps scales (hidden x m_w^-1, and the folded readout's fixed eps is m_w there) and
    the tied embedding keeps its base init; the other inits and the LRs are the same, and from matched weights Adam
    parts from microsoft/mup through eps alone while SGD agrees."""
    m = 4
    for name, f in factories.items():
        plan = f.plan(BASE * m)
        default = make_plan(f.analysis, width=BASE * m, attn_scale="1/sqrt(d)")
        ms, ez = plan.effective(), default.effective()
        assert {n: e.lr_factor for n, e in ez.items()} == pytest.approx({n: e.lr_factor for n, e in ms.items()})
        for n, t in default.tensors.items():
            expected = {"hidden": 1 / m, "output": 1 / m}.get(t.role, 1.0)
            assert ez[n].eps_factor / ms[n].eps_factor == pytest.approx(expected), n
            if t.init_std is not None:
                tied = name == "tied" and n == "emb.weight"  # set_base_shapes' sqrt(width_mult) on MuSharedReadout
                assert ms[n].init_std / ez[n].init_std == pytest.approx(m**0.5 if tied else 1.0), n
    for opt_name in ("adam", "sgd"):  # from matched weights (the readout mapped through its fold): eps alone
        mu_cls, ours_name, kwargs = OPTIMIZERS[opt_name]
        theirs = microsoft_model(MLP, BASE * m)
        ours = apply_plan(MLP(BASE * m), make_plan(factories["mlp"].analysis, width=BASE * m))
        mult = microsoft_multipliers(theirs)
        ours.load_state_dict({n: p * mult[n] for n, p in theirs.state_dict().items()})
        data = batches("mlp")
        lost_theirs = train("mlp", theirs, mu_cls(theirs.parameters(), **kwargs), data)
        lost_ours = train("mlp", ours, ezp.get_mup_optimizer(ours, optimizer=ours_name, **kwargs), data)
        assert lost_ours == pytest.approx(lost_theirs, rel=1e-5 if opt_name == "adam" else 1e-12)


def test_the_conventions_are_checked_everywhere(factories):
    with pytest.raises(ValueError, match=r"conventions='mup' is unknown; choose one of \('ezmup_plus', 'micro"):
        ezp.wrap(MLP, base_width=BASE, conventions="mup")
    model = factories["mlp"](4 * BASE)
    with pytest.raises(ValueError, match="plan for conventions microsoft_mup; got conventions='ezmup_plus'"):
        ezp.get_mup_optimizer(model, lr=1e-3, conventions="ezmup_plus")
    plan = ezp.plan_of(model)
    assert ezp.MupPlan.from_yaml(plan.to_yaml()) == plan
    assert "conventions microsoft_mup" in str(plan) and "input 0.25" in str(plan)
    in_place = MLP(47)
    ezp.get_mup_optimizer(in_place, lr=1e-3, width=188, conventions="microsoft_mup")
    assert ezp.plan_of(in_place).input_multipliers == {"readout": pytest.approx(47 / 188)}


def test_export_folds_the_readout_input_multiplier(factories):
    model = factories["transformer"](4 * BASE)
    plain = Transformer(4 * BASE)
    plain.load_state_dict(ezp.export_standard(model))
    idx = torch.randint(0, VOCAB, (2, 8))
    assert torch.allclose(plain(idx), model(idx), rtol=1e-5, atol=1e-6)
    assert copy.deepcopy(model).readout._forward_pre_hooks  # the hook survives a copy
