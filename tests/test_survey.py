"""The architecture survey's coordinate check as a test, for the Hugging Face architectures no other test checks:
from base to 4x base muP passes (with the way out the README table gives, where it gives one) and SP fails. One
seed at base and 4x base keeps each to a second or two; ``benchmarks/architectures.py`` runs two seeds and three
widths. Mixtral, GPT-2, Llama, OPT, BERT and ViT are checked in test_moe and test_models."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import ezmup_plus as ezp  # noqa: E402
from architectures import WAYS_OUT, check_setup, coordinate_check, survey_factory, training_batch, wrap_options  # noqa: E402
from ezmup_plus.data import lm_loss  # noqa: E402

CHECKED = ("Gemma", "Gemma-2", "Falcon", "Bloom", "Qwen2-MoE", "Qwen3-MoE", "OLMoE", "DeepSeek-V3", "T5", "Mamba",
           "Mamba-2")


@pytest.mark.parametrize("name", CHECKED)
def test_mup_passes_and_sp_fails_from_base_to_4x(name):
    f, plain, kind, blocks, readout = check_setup(name)
    mup = coordinate_check(f, kind, blocks, readout, base=f.base_width, seeds=1)
    sp = coordinate_check(plain, kind, blocks, readout, seeds=1)
    assert mup["pass"] and not sp["pass"], (mup, sp)


def test_t5_needs_its_width_constant_held_and_a_small_readout():
    """As configured, T5's readout starts large (its tied embedding at std 1.0) and its change shrinks with the
    width, and the coordinate check says so; the small readout of the way out passes only with T5's d**-0.5
    held at base."""
    f, _, kind, blocks, readout = check_setup("T5", way_out=False)
    as_configured = coordinate_check(f, kind, blocks, readout, seeds=1)
    unheld = ezp.wrap(survey_factory("T5"), base_width=32, base_depth=2, width_constants="warn",
                      **wrap_options("T5"), **WAYS_OUT["T5"][0])
    with pytest.warns(UserWarning, match="changes with the width"):
        not_held = coordinate_check(unheld, kind, blocks, readout, seeds=1)
    for check in (as_configured, not_held):
        assert not check["pass"] and check["worst"] == readout == "lm_head", check
    told = ezp.coord_check(f, [32, 128], training_batch(kind), loss_fn=lambda out, y: lm_loss(out.logits, y),
                           modules=lambda name, m: name == readout)
    assert "lm_head: its change is led by W0.dx" in str(told) and "init_input" in str(told), str(told)


def test_what_mup_prescribes_for_mamba_state_space_tensors():
    """Mamba's SSM tensors under muP Adam at 4x base, as the README states them: the per-channel decay ``A_log``
    (its state dim is contracted in the scan: fan-in 16, input-like), the skip ``D`` and the depthwise conv
    (fan-in 4) keep their init and LR, as vector-like tensors do; ``dt_proj`` grows on both sides (fan-in
    w/16: hidden); the structured inits (``A_log`` = log 1..16 per channel, ``dt_proj.bias`` = softplus^-1 of
    a dt in [dt_min, dt_max]) are the factory's own at every width, under the spectral init too."""
    f = ezp.wrap(survey_factory("Mamba"), base_width=32, base_depth=2, **wrap_options("Mamba"))
    plan = f.plan(width=128)
    mixer = "backbone.layers.0.mixer."
    got = {name[len(mixer):]: (t.role, str(t.fan_in), t.init, round(t.init_factor, 4), t.lr_mult)
           for name, t in plan.tensors.items() if name.startswith(mixer)}
    assert got == {
        "A_log": ("input", "16", "relative", 1.0, 1.0),
        "D": ("vector", "1", "keep", 1.0, 1.0),
        "conv1d.weight": ("input", "4", "law", 1.0, 1.0),
        "conv1d.bias": ("vector", "1", "keep", 1.0, 1.0),
        "in_proj.weight": ("hidden", "w", "law", 0.5, 0.25),
        "x_proj.weight": ("hidden", "2*w", "law", 0.5, 0.25),
        "dt_proj.weight": ("hidden", "w/16", "law", 0.5, 0.25),
        "dt_proj.bias": ("vector", "1", "relative", 1.0, 1.0),
        "out_proj.weight": ("hidden", "2*w", "law", 0.5, 0.25),
    }
    torch.manual_seed(0)
    model = f(width=128)
    layer = model.backbone.layers[0].mixer
    log_a = torch.log(torch.arange(1, 17.0)).expand(256, 16)
    assert torch.equal(layer.A_log, log_a)
    spectral = ezp.wrap(survey_factory("Mamba"), base_width=32, base_depth=2, parametrization="spectral",
                        **wrap_options("Mamba"))  # its absolute std is a random matrix's: A_log keeps its values
    assert torch.equal(spectral(width=128).backbone.layers[0].mixer.A_log, log_a)
    dt = torch.nn.functional.softplus(layer.dt_proj.bias)
    config = model.config
    assert dt.min() >= config.time_step_floor and dt.max() <= config.time_step_max * (1 + 1e-5)
    assert math.isclose(layer.conv1d.weight.std().item(), 4 ** -0.5 / math.sqrt(3), rel_tol=0.1)
