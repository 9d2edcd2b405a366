"""Mixtures of experts end to end: expert tensors hidden with their traced fan-in (the expert dim a batch
dim), routers output-like, through einsum, index_add dispatch with nonzero routing (a CPU trace) and Hugging
Face Mixtral's grouped matmul; bit-identical at base; a coordinate check muP passes and SP fails."""

import warnings

import pytest
import torch

import ezmup_plus as ezp
from ezmup_plus.data import lm_loss
from ezmup_plus.diagnostics import coord_check
from ezmup_plus.models import hf
from tiny_models import DenseMoE, IndexAddMoE

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def summary(plan, names):
    return {n: (plan[n].role, str(plan[n].fan_in), str(plan[n].fan_out), plan[n].source) for n in names}


def test_hand_written_experts_are_hidden_and_the_router_output_like():
    """Dense dispatch through einsum on meta, top-1 dispatch with nonzero and index_add_ on CPU: the same numbers.
    (Every token through every expert's up-projection is one (w, 4 x 4w) matrix; picked per expert, four.)"""
    plans = []
    for model, device, up in ((DenseMoE, "meta", "16*w"), (IndexAddMoE, "cpu", "4*w")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every fan-in traced
            f = ezp.wrap(model, base_width=32)
            plans.append(f.plan(width=128))
        assert f.analysis.forward.device == device
        expected = {"w_up": ("hidden", "w", up, "trace"), "w_down": ("hidden", "4*w", "w", "trace"),
                    "router.weight": ("output", "w", "4", "trace")}
        assert summary(plans[-1], expected) == expected
    assert all(a.init_factor == b.init_factor and a.lr_mult == b.lr_mult for a, b in zip(*plans))


def test_what_the_rules_do_when_experts_multiply_or_stay_narrow():
    """The expert count growing with the width stays a batch dim (the router then grows on both sides:
    hidden); experts of a fixed width are matrices with one finite side (up output-like, down input-like)."""
    more = ezp.wrap(lambda width: IndexAddMoE(width, experts=width // 8), base_width=32,
                    width_multiple=8).plan(width=128)
    assert summary(more, ["w_up", "router.weight"]) == {"w_up": ("hidden", "w", "4*w", "trace"),
                                                         "router.weight": ("hidden", "w", "w/8", "trace")}
    narrow = ezp.wrap(lambda width: DenseMoE(width, expert_width=16), base_width=32).plan(width=128)
    assert summary(narrow, ["w_up", "w_down"]) == {"w_up": ("output", "w", "64", "trace"),  # 4 experts x 16
                                                   "w_down": ("input", "16", "w", "trace")}


TOKENS = torch.randint(0, 65, (8, 17), generator=torch.Generator().manual_seed(0))


def test_mixtral_roles_base_and_coordinate_check():
    f = ezp.wrap(hf.mixtral, base_width=32, width_multiple=8)
    plan = f.plan(width=128)
    assert f.analysis.forward.device == "cpu" and str(plan).splitlines()[0].endswith("traced on cpu")
    layer = "model.layers.0.mlp."
    assert summary(plan, [layer + "experts.gate_up_proj", layer + "experts.down_proj", layer + "gate.weight"]) == {
        layer + "experts.gate_up_proj": ("hidden", "w", "4*w", "trace"),  # stored (experts, out, in)
        layer + "experts.down_proj": ("hidden", "2*w", "w", "trace"),
        layer + "gate.weight": ("output", "w", "4", "trace")}
    torch.manual_seed(0)
    ours = dict(f(width=32).named_parameters())
    torch.manual_seed(0)
    plain = dict(hf.mixtral(32).named_parameters())
    assert all(torch.equal(ours[k], plain[k]) for k in plain)
    blocks = dict(loss_fn=lambda out, y: lm_loss(out.logits, y), steps=3, lr=1e-2,
                  modules=lambda name, m: name.startswith("model.layers.") and name.count(".") == 2)
    data = (TOKENS[:, :-1], TOKENS[:, 1:])
    assert spread(coord_check(f, [32, 64, 128], data, **blocks)) < 1.5  # muP: block outputs flat
    assert spread(coord_check(hf.mixtral, [32, 64, 128], data, **blocks)) > 1.5  # SP: they grow


def spread(check) -> float:
    """The largest ratio over the widths of a block output's RMS after the last step (as test_models checks)."""
    last = max(check.steps)
    return max(max(r) / min(r) for r in ([x.rms for x in check.rows if x.module == m and x.step == last]
                                          for m in check.modules))
