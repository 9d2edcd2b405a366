"""The analysis: one plain value from either front door, exact through JSON, and all a plan needs."""

import json

import pytest

import ezmup_plus as ezp
from ezmup_plus import analysis as analysis_module
from ezmup_plus.analysis import Analysis
from ezmup_plus.models import hf
from ezmup_plus.models.gpt import GPT
from ezmup_plus.models.mlp import MLP
from ezmup_plus.plan import make_plan
from tiny_models import TiedLM

FACTORIES = {
    "gpt": lambda: ezp.wrap(GPT, base_width=32, base_depth=2, width_multiple=4),  # stacks, branches, attention
    "tied": lambda: ezp.wrap(TiedLM, base_width=16),  # a tied readout
    "gpt2": lambda: ezp.wrap(hf.gpt2, base_width=32, width_multiple=4),  # Conv1D (in, out)
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_json_round_trip_is_exact_and_plans_the_same(name):
    f = FACTORIES[name]()
    text = f.analysis.to_json()
    back = Analysis.from_json(text)
    assert back == f.analysis and back.to_json() == text
    depth = 4 if f.base_depth else None
    assert make_plan(back, width=128, depth=depth) == f.plan(width=128, depth=depth)


def test_the_model_door_round_trips_too():
    model = GPT(width=47, depth=1, n_head=1)
    ezp.get_mup_optimizer(model, width=94, lr=1e-3)
    found = analysis_module.analyse_model(GPT(width=47, depth=1, n_head=1),
                                          analysis_module.AnalysisOptions(base_width=47, source="model"))
    assert Analysis.from_json(found.to_json()) == found and found.init_builds == 0
    assert set(found.attention) == {"blocks.0.attn"} and found.attention["blocks.0.attn"].via == "scaling"


def test_both_front_doors_run_the_same_stages(monkeypatch):
    calls = []
    real = analysis_module.learn

    def spy(table, *args, **kwargs):
        calls.append(table.widths)
        return real(table, *args, **kwargs)

    monkeypatch.setattr(analysis_module, "learn", spy)
    ezp.wrap(MLP, base_width=16).plan(width=64)
    ezp.get_mup_optimizer(MLP(47), width=64, lr=1e-3)
    assert calls == [(47, 53, 59), (47,)]


def test_the_same_family_read_either_way_agrees_where_one_probe_can_tell():
    """Probed at three primes or read from one build at 47: the same roles, fan-ins, attention route and head dim."""
    probed = ezp.wrap(GPT, base_width=47, n_head=1, depth=1).analysis
    read = analysis_module.analyse_model(GPT(width=47, depth=1, n_head=1),
                                         analysis_module.AnalysisOptions(base_width=47, source="model"))
    assert read.roles == probed.roles and read.attention == probed.attention
    assert {n: p.dims for n, p in read.table.params.items()} == {n: p.dims for n, p in probed.table.params.items()}


def test_the_summary_names_what_was_learned():
    text = str(FACTORIES["gpt"]().analysis)
    assert "stack blocks.{i}: 1*depth+0 blocks" in text and "residual branch blocks.{i}.attn.c_proj: fold" in text
    assert "attention blocks.{i}.attn: head dim w/4, route scaling" in text
    assert "lm_head.weight  (65, w)  output from trace, fan-in w" in text
    assert json.loads(FACTORIES["gpt"]().analysis.to_json())["options"]["width_multiple"] == 4
