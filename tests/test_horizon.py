"""The training-horizon rule for weight decay (``ezmup_plus.horizon``) and ``transfer --steps/--wd-horizon``."""

import pytest

from ezmup_plus import cli, trial
from ezmup_plus.horizon import DEFAULT_MODE, MODES, horizon_steps, horizon_weight_decay

TINY = """
model: {factory: "ezmup_plus.models.mlp:MLP", width: 32, kwargs: {in_features: 8, out_features: 1}}
mup: {base_width: 16%s}
optimizer: {name: adamw, lr: 0.01%s}
train: {steps: 20, batch_size: 16}
data: {name: synthetic}
"""


def test_ema_rule_by_hand():
    assert horizon_weight_decay(0.1, steps=100, target_steps=400) == pytest.approx(0.025)  # 4x steps: wd / 4
    assert horizon_weight_decay(0.1, steps=400, target_steps=100) == pytest.approx(0.4)
    assert horizon_weight_decay(0.1, steps=100, target_steps=100) == pytest.approx(0.1)
    # batch 32 -> 128 at the same samples: a quarter of the steps, so 4x the weight decay (Bergsma et al.: wd ~ B)
    assert horizon_steps(100, 32, 128) == 25
    assert horizon_weight_decay(0.1, steps=100, batch_size=32, target_batch_size=128) == pytest.approx(0.4)
    # an explicit step count wins over the batch sizes: the rule counts steps
    assert horizon_weight_decay(0.1, steps=100, target_steps=200, batch_size=32, target_batch_size=128) == \
        pytest.approx(0.05)
    # the LR is in the timescale 1/(lr*wd): twice the LR, half the weight decay; with 4x steps, an eighth
    assert horizon_weight_decay(0.1, steps=100, target_steps=100, lr=0.01, target_lr=0.02) == pytest.approx(0.05)
    assert horizon_weight_decay(0.1, steps=100, target_steps=400, lr=0.01, target_lr=0.02) == pytest.approx(0.0125)
    assert horizon_weight_decay(0.0, steps=100, target_steps=400) == 0.0


def test_constant_mode_keeps_the_weight_decay():
    assert horizon_weight_decay(0.1, steps=100, target_steps=400, lr=0.01, target_lr=0.02, mode="constant") == 0.1
    assert set(MODES) == {"ema", "constant"} and DEFAULT_MODE in MODES


@pytest.mark.parametrize("kwargs, name", [
    (dict(steps=0), "steps"), (dict(steps=-5), "steps"), (dict(steps=100, target_steps=0), "target_steps"),
    (dict(steps=100, batch_size=0, target_batch_size=8), "batch_size"),
    (dict(steps=100, batch_size=8, target_batch_size=-1), "target_batch_size"),
    (dict(steps=100, lr=0), "lr"), (dict(steps=100, target_lr=-1e-3), "target_lr"),
    (dict(steps=float("inf")), "steps"),
])
def test_bad_numbers_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}=.* must be a positive number"):
        horizon_weight_decay(0.1, **kwargs)


def test_bad_mode_and_weight_decay():
    with pytest.raises(ValueError, match=r"mode='emma' is not a weight-decay horizon rule; choose one of \("):
        horizon_weight_decay(0.1, steps=100, target_steps=400, mode="emma")
    with pytest.raises(ValueError, match=r"weight_decay=-0.1 must be"):
        horizon_weight_decay(-0.1, steps=100, target_steps=400)


def _transfer(tmp_path, monkeypatch, capsys, options, hparams="", optimizer=", weight_decay: 0.1"):
    """Run ``transfer`` on a tiny config; the optimizers and step counts of its runs, and what it printed."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY % (hparams, optimizer))
    built, steps = [], []
    build, train = trial.build_optimizer, trial.train  # every run of transfer is a trial.run_trial
    monkeypatch.setattr(trial, "build_optimizer", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
    monkeypatch.setattr(trial, "train", lambda *a, **k: steps.append(a[4]) or train(*a, **k))
    cli.main(["transfer", str(path), "--lr-range", "0.004", "0.008", "--seeds", "0", *options])
    return built, steps, capsys.readouterr().out


def _decay_per_step_over_lr(opt):
    """lr*wd / lr of every group: the weight decay the independent mode planned (group wd = wd / lr_mult)."""
    return {round(g["lr"] * g["weight_decay"] / opt.defaults["lr"], 12) for g in opt.param_groups}


@pytest.mark.parametrize("options, wd, target_steps, line", [
    (["--steps", "80", "--wd-horizon", "ema"], 0.025, 80,
     "steps 20 -> 80, batch 16 -> 16, weight decay 0.025 (rule ema"),
    (["--steps", "80", "--wd-horizon", "constant"], 0.1, 80, "weight decay 0.1 (rule constant (wd kept)"),
    (["--batch-size", "64", "--wd-horizon", "ema"], 0.4, 5,
     "steps 20 -> 5, batch 16 -> 64, weight decay 0.4 (rule ema"),
])
def test_transfer_applies_the_rule_to_the_optimizer_it_builds(tmp_path, monkeypatch, capsys, options, wd,
                                                              target_steps, line):
    built, steps, out = _transfer(tmp_path, monkeypatch, capsys, options)
    *proxy, target = built  # two LRs at the base width, then the target run
    assert steps == [20, 20, target_steps] and len(proxy) == 2
    assert all(_decay_per_step_over_lr(o) == {0.1} for o in proxy)
    assert _decay_per_step_over_lr(target) == {wd}
    groups = target.param_groups
    assert [g["weight_decay"] * g["lr_mult"] for g in groups] == pytest.approx([wd] * len(groups))
    assert line in out and "proxy's 0.1" in out


def test_transfer_rule_on_the_hparams_weight_decay(tmp_path, monkeypatch, capsys):
    built, steps, out = _transfer(tmp_path, monkeypatch, capsys, ["--steps", "40", "--wd-horizon", "ema"],
                                  hparams=", hparams: {weight_decay: 0.2}", optimizer="")
    assert _decay_per_step_over_lr(built[-1]) == {0.1} and "weight decay 0.1 (rule ema" in out


def test_transfer_default_keeps_the_config(tmp_path, monkeypatch, capsys):
    built, steps, out = _transfer(tmp_path, monkeypatch, capsys, [])
    assert steps == [20, 20, 20] and _decay_per_step_over_lr(built[-1]) == {0.1}
    assert f"rule {DEFAULT_MODE}" in out


def test_batch_size_alone_needs_whole_steps(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        _transfer(tmp_path, monkeypatch, capsys, ["--batch-size", "48"])  # 20*16/48 is not a whole number
    assert "give --steps too" in capsys.readouterr().err
