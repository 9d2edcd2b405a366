"""YAML configs: loading, extends, overrides, every error, the shipped configs, and the config transformer."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import ezmup_plus as ezp
from ezmup_plus.cli import main
from ezmup_plus.config import ConfigError, from_config, load_config
from ezmup_plus.scale_config import scale_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """
model: {factory: "ezmup_plus.models.mlp:MLP", width: 64, kwargs: {in_features: 8}}
mup: {base_width: 16}
optimizer: {name: adam, lr: 0.01}
"""


def test_load_extend_and_override(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(tmp_path, "child.yaml", "extends: base.yaml\nmup: {parametrization: sp}\noptimizer: {lr: 0.002}\n")
    cfg = load_config(child, overrides=["model.width=128", "optimizer.betas=[0.8, 0.9]"])
    assert cfg.model.width == 128 and cfg.model.kwargs == {"in_features": 8}
    assert cfg.mup.parametrization == "sp" and cfg.mup.base_width == 16  # deep merge keeps base keys
    assert cfg.optimizer.name == "adam" and cfg.optimizer.lr == 0.002 and cfg.optimizer.betas == [0.8, 0.9]


def test_from_config_builds_a_mup_model_and_optimizer(tmp_path):
    path = write(tmp_path, "c.yaml", BASE + "scheduler: {name: cosine}\ntrain: {steps: 10}\n")
    model, opt, sched = from_config(path)
    assert ezp.plan_of(model).width == 64 and ezp.plan_of(model).base_width == 16
    lrs = {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}
    assert lrs["hidden.1.weight"] == pytest.approx(0.01 / 4) and lrs["hidden.0.weight"] == pytest.approx(0.01)
    opt.step()
    sched.step()
    assert [g["lr"] / g["lr_mult"] for g in opt.param_groups] == pytest.approx([opt.param_groups[0]["lr"]] * 3)


@pytest.mark.parametrize("text,message", [
    ("model: {factory: 'a:b', widht: 3}", r"unknown key 'model.widht'; did you mean 'model.width'\?"),
    ("model: {factory: 'a:b'}\noptimiser: {lr: 1}", r"unknown key 'optimiser'; did you mean 'optimizer'\?"),
    ("model: {factory: 'a:b', width: wide}", r"'model.width' must be int or NoneType, got str 'wide'"),
    ("model: {factory: 'a:b'}\noptimizer: {lr: [1]}", r"'optimizer.lr' must be float, got list"),
    ("model: {factory: !!python/object/apply:os.system ['echo hi']}", r"only plain YAML is allowed"),
    ("mup: {base_width: 8}", r"missing key 'model'"),
    ("model: {width: 8}", r"missing key 'model.factory'"),
])
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, "bad.yaml", text))


def test_bad_yaml_names_the_file_line_and_column(tmp_path):
    tab = write(tmp_path, "tab.yaml", "model:\n\tfactory: 'a:b'\n")
    with pytest.raises(ConfigError, match=r"tab.yaml, line 2, column 1: not valid YAML \(found character '\\t'"):
        load_config(tab)
    write(tmp_path, "open.yaml", "model: {factory: 'a:b', width: [8\n")
    child = write(tmp_path, "child.yaml", "extends: open.yaml\n")  # the file at fault is named, not the child
    with pytest.raises(ConfigError, match=r"open.yaml, line 2, column 1: not valid YAML \(expected ',' or ']'.*"
                                          r"flow sequence, started at line 1, column 32\)"):
        load_config(child)
    (tmp_path / "binary.yaml").write_bytes(b"\x80\x81")
    with pytest.raises(ConfigError, match="binary.yaml: not a text file"):
        load_config(tmp_path / "binary.yaml")
    with pytest.raises(ConfigError, match=r"override 'model.width=\[8': the value is not valid YAML"):
        load_config(write(tmp_path, "base.yaml", BASE), ["model.width=[8"])


def test_extends_cycle_and_bad_overrides(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends cycle: a.yaml -> b.yaml -> a.yaml"):
        load_config(tmp_path / "a.yaml")
    base = write(tmp_path, "base.yaml", BASE)
    with pytest.raises(ConfigError, match="not of the form section.key=value"):
        load_config(base, ["model.width"])
    with pytest.raises(ConfigError, match=r"unknown key 'model.depht'; did you mean 'model.depth'\?"):
        load_config(base, ["model.depht=4"])
    with pytest.raises(ConfigError, match="cannot be imported"):
        from_config(base, ["model.factory=ezmup_plus.models.mlp:Nope"])
    with pytest.raises(ValueError, match="optimizer='adamm' is unknown"):
        from_config(base, ["optimizer.name=adamm"])


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_build(name):
    model, opt, _ = from_config(CONFIGS / f"{name}.yaml", overrides=["model.width=64"])
    plan = ezp.plan_of(model)
    expected = "sp" if name.endswith("_sp") else load_config(CONFIGS / f"{name}.yaml").mup.parametrization
    assert plan.parametrization == expected and plan.width == 64
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml") if not p.stem.endswith("_sp")))
def test_shipped_configs_train_on_their_named_data(name, data_copies, tmp_path):
    """What a fresh clone runs: `ezmup-plus train CONFIG` with the data set the config names (each *_sp config
    is its muP config with one line changed, and builds in the test above)."""
    cfg = load_config(CONFIGS / f"{name}.yaml")
    width = 2 * (cfg.mup.base_width or cfg.model.width)  # twice the base: rescaled, and small (VGG11 at 64 is the full net)
    main(["train", str(CONFIGS / f"{name}.yaml"), "--set", f"model.width={width}", "--set", "train.steps=2",
          "--set", "data.val_size=128", "--out", str(tmp_path)])  # 128 of CIFAR-10's 10,000 test images
    plan = ezp.MupPlan.from_yaml(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["plan"])
    assert plan.parametrization == cfg.mup.parametrization and plan.width == width
    assert len(json.loads((tmp_path / "loss.json").read_text())["train"]) == 2


def test_val_size_takes_the_first_held_out_examples():
    from ezmup_plus.trial import task_from

    base = {"model": {"factory": "ezmup_plus.models.mlp:MLP", "width": 16}, "data": {"name": "digits"}}
    whole = task_from(load_config(base)).val
    first = task_from(load_config(base, ["data.val_size=5"])).val
    assert len(whole[0]) > 5 and all(torch.equal(a[:5], b) for a, b in zip(whole, first))
    with pytest.raises(ConfigError, match=r"data.val_size=0 must be at least 1"):
        load_config(base, ["data.val_size=0"])


def test_sp_variants_are_one_line_apart():
    for sp in CONFIGS.glob("*_sp.yaml"):
        lines = [line for line in sp.read_text().splitlines() if line.strip()]
        assert len(lines) == 2 and lines[0].startswith("extends:") and "parametrization: sp" in lines[1], sp


# --- the config transformer -----------------------------------------------------------------

def test_scale_a_dict_with_multiples_and_expressions():
    cfg = {"d_model": 47, "d_ff": "4*w", "n_head": "w/64", "inter": "round(8*w/3, 256)", "act": "gelu",
           "layer": {"hidden": 94, "dropout": 0.1}, "vocab_size": 47 * 3}
    out = scale_config(cfg, width=1024, pin=("vocab_size",))
    assert out == {"d_model": 1024, "d_ff": 4096, "n_head": 16, "inter": 2816, "act": "gelu",
                   "layer": {"hidden": 2048, "dropout": 0.1}, "vocab_size": 141}
    assert cfg["d_model"] == 47  # the input is not mutated


def test_scale_a_dataclass_with_depth():
    @dataclasses.dataclass
    class Cfg:
        width: int = 47
        n_layer: int = 5
        ffn: str = "4*w"
        heads: int = 4

    out = scale_config(Cfg(), width=256, depth=20, depth_sentinel=5)
    assert out == Cfg(width=256, n_layer=20, ffn=1024, heads=4)


def test_scale_a_hugging_face_config():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_embd=47, n_inner=4 * 47, n_layer=5, n_head=1, vocab_size=50257, n_positions=64)
    out = scale_config(cfg, width=512, depth=10, depth_sentinel=5)
    assert isinstance(out, transformers.GPT2Config)
    assert (out.n_embd, out.n_inner, out.n_layer, out.vocab_size, out.n_positions) == (512, 2048, 10, 50257, 64)


def test_collisions_are_reported_not_rescaled():
    with pytest.raises(ValueError, match=r"vocab_size = 94 = 2\*47 .* pin=\('vocab_size',\)"):
        scale_config({"vocab_size": 94, "width": 47}, width=128)
    with pytest.raises(ValueError, match=r"table = 4700 = 100\*47"):
        scale_config({"table": 4700}, width=128)
    assert scale_config({"table": 4700}, width=128, pin=("table",)) == {"table": 4700}


def test_expressions_are_checked_and_never_evaluated_as_python():
    with pytest.raises(ValueError, match=r"n_head = 'w/64' is 5/2 at width 160"):
        scale_config({"n_head": "w/64"}, width=160)
    with pytest.raises(ValueError, match="only numbers, w, d"):
        scale_config({"x": "w.__class__"}, width=64)
    assert scale_config({"cmd": "__import__('os').system('echo')"}, width=64) == {"cmd": "__import__('os').system('echo')"}
    with pytest.raises(ValueError, match="uses the depth d"):
        scale_config({"n": "2*d"}, width=64)


def test_attn_scale_key_reaches_the_model(tmp_path):
    path = write(tmp_path, "gpt.yaml", """
model: {factory: "ezmup_plus.models.gpt:GPT", width: 128, width_multiple: 4, kwargs: {depth: 1}}
mup: {base_width: 32}
""")
    scaled, _, _ = from_config(path)
    kept, _, _ = from_config(path, ["mup.attn_scale=1/sqrt(d)"])
    assert scaled.blocks[0].attn.scaling == pytest.approx(8**0.5 / 32)  # 1/d relative to base
    assert kept.blocks[0].attn.scaling == pytest.approx(32**-0.5)


def test_zero_init_key_reaches_the_model(tmp_path):
    path = write(tmp_path, "c.yaml", BASE + "mup: {base_width: 16, zero_init: [readout]}\n")
    model, _, _ = from_config(path)
    assert not model.readout.weight.any() and model.hidden[1].weight.any()


def test_trace_key_turns_the_meta_forward_off(tmp_path):
    path = write(tmp_path, "c.yaml", BASE + "mup: {base_width: 16, trace: false}\n")
    with pytest.warns(UserWarning, match="trace=False: roles come from layer types"):
        model, _, _ = from_config(path)
    assert ezp.plan_of(model)["hidden.1.weight"].source == "convention"


def test_conventions_from_yaml(tmp_path):
    model, opt, _ = from_config(write(tmp_path, "c.yaml", BASE), overrides=["mup.conventions=microsoft_mup"])
    assert ezp.plan_of(model).conventions == "microsoft_mup"
    assert {g["eps"] for g in opt.param_groups} == {1e-8}
    with pytest.raises(ValueError, match=r"conventions='mup' is unknown; choose one of"):
        from_config(write(tmp_path, "d.yaml", BASE), overrides=["mup.conventions=mup"])
