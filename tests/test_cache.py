"""The disk cache of analyses: a second factory (a second process) reuses the first one's analysis unless
anything it depends on changed, says again what it warned, and is never in the way."""

import importlib
import sys
import warnings

import pytest
import torch
from torch import nn

import ezmup_plus as ezp
from ezmup_plus import analysis as analysis_module
from ezmup_plus.cache import analysis_key
from ezmup_plus.models.gpt import GPT
from ezmup_plus.models.mlp import MLP


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EZMUP_PLUS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def analyses(monkeypatch):
    """How many times the factory was really analysed."""
    calls = []
    real = analysis_module.learn
    monkeypatch.setattr(analysis_module, "learn", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_a_second_factory_reads_the_analysis_and_builds_the_same_model(cache, analyses):
    first = ezp.wrap(GPT, base_width=32, base_depth=2, width_multiple=4)
    first.plan(width=64)
    second = ezp.wrap(GPT, base_width=32, base_depth=2, width_multiple=4)
    assert second.analysis == first.analysis and len(analyses) == 1 and len(list(cache.glob("*.json"))) == 1
    torch.manual_seed(0)
    a = first(width=128, depth=4)
    torch.manual_seed(0)
    b = second(width=128, depth=4)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_other_options_fixed_arguments_or_inputs_are_other_keys(cache, analyses):
    ezp.wrap(MLP, base_width=16).plan(width=64)
    ezp.wrap(MLP, base_width=32).plan(width=64)
    ezp.wrap(MLP, base_width=16, in_features=4).plan(width=64)
    ezp.wrap(MLP, base_width=16, roles={"readout.weight": "hidden"}).plan(width=64)
    ezp.wrap(MLP, base_width=16).plan(width=128)  # the same analysis: only the plan differs
    assert len(analyses) == 4
    assert (analysis_key(MLP, "{}", (torch.zeros(2, 8),)) != analysis_key(MLP, "{}", (torch.zeros(2, 4),))
            == analysis_key(MLP, "{}", (torch.ones(2, 4),)))


def test_an_edited_factory_file_is_analysed_again(cache, analyses, tmp_path, monkeypatch):
    module = tmp_path / "user_model.py"
    source = "from torch import nn\n\ndef make(width):\n    return nn.Sequential(nn.Linear(8, width), nn.Linear(width, {k}))\n"
    module.write_text(source.format(k=1))
    monkeypatch.syspath_prepend(str(tmp_path))
    user = importlib.import_module("user_model")
    ezp.wrap(user.make, base_width=16).plan(width=64)
    ezp.wrap(user.make, base_width=16).plan(width=64)
    module.write_text(source.format(k=2))
    user = importlib.reload(user)
    assert ezp.wrap(user.make, base_width=16).plan(width=64)["1.weight"].shape == (2, 64)
    assert len(analyses) == 2
    del sys.modules["user_model"]


def test_warnings_are_said_again_from_the_cache(cache):
    class Scaled(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.inp, self.out = nn.Linear(8, width), nn.Linear(width, 1)
            self.scale = width**0.5

        def forward(self, x):
            return self.out(self.inp(x) * self.scale)

    for _ in range(2):  # the second wrap reads the first one's analysis, and warns the same
        with pytest.warns(UserWarning, match="a number that changes with the width"):
            ezp.wrap(Scaled, base_width=16, width_constants="warn").plan(width=64)


def test_no_cache_for_what_cannot_be_keyed_and_when_switched_off(cache, analyses, monkeypatch):
    marker = object()  # a closure over an object with no stable repr: the key cannot tell it apart
    ezp.wrap(lambda width: (marker, nn.Linear(width, width))[1], base_width=16).plan(width=32)
    ezp.wrap(MLP, base_width=16, cache=False).plan(width=32)
    monkeypatch.setenv("EZMUP_PLUS_CACHE", "off")
    ezp.wrap(MLP, base_width=16).plan(width=32)
    assert not cache.exists() or not list(cache.glob("*.json"))
    assert len(analyses) == 3


def test_a_damaged_entry_is_analysed_again_and_rewritten(cache, analyses):
    ezp.wrap(MLP, base_width=16).plan(width=32)
    (entry,) = cache.glob("*.json")
    entry.write_text(entry.read_text()[:100])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ezp.wrap(MLP, base_width=16).plan(width=32)
    ezp.wrap(MLP, base_width=16).plan(width=32)
    assert len(analyses) == 2
