"""Each ezmup-plus command on a tiny config."""

import json

import pytest
import torch

import ezmup_plus as ezp
from ezmup_plus.checkpoint import load_checkpoint
from ezmup_plus.cli import main
from ezmup_plus.config import build_factory, build_optimizer, load_config
from ezmup_plus.models.mlp import MLP

TINY = """
model: {factory: "ezmup_plus.models.mlp:MLP", width: 64, kwargs: {in_features: 8, out_features: 1}}
mup: {base_width: 16}
optimizer: {name: adam, lr: 0.01}
train: {steps: 20, batch_size: 16}
data: {name: synthetic}
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_every_command_has_help():
    for command in ("inspect", "train", "sweep", "tune", "transfer", "coord-check", "export", "demo"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0


def test_inspect_prints_the_plan(config, capsys):
    main(["inspect", str(config), "--set", "model.width=128"])
    out = capsys.readouterr().out
    assert "width 128 (base 16)" in out and "hidden.1.weight" in out and "(w, w)" in out


def test_train_logs_and_checkpoints(config, tmp_path):
    out = tmp_path / "run"
    main(["train", str(config), "--out", str(out)])
    log = json.loads((out / "loss.json").read_text())
    assert len(log["train"]) == 20 and (out / "loss.csv").read_text().startswith("step,loss,lr")
    cfg = load_config(config)
    model = build_factory(cfg)(width=64)
    opt = build_optimizer(model, cfg)
    state = load_checkpoint(out / "checkpoint.pt", model, opt)
    assert ezp.MupPlan.from_yaml(state["plan"]) == ezp.plan_of(model)
    assert opt.state_dict()["state"], "optimizer state was restored"
    main(["export", str(config), str(out / "checkpoint.pt"), "--out", str(out / "plain.pt")])
    plain = MLP(64, in_features=8, out_features=1)
    plain.load_state_dict(torch.load(out / "plain.pt"))
    x = torch.randn(4, 8)
    torch.testing.assert_close(plain(x), model(x))


def test_sweep_and_transfer(config, tmp_path, capsys):
    main(["sweep", str(config), "--widths", "16", "32", "--lr-range", "0.004", "0.008", "--seeds", "0", "1",
          "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "drift (octaves)" in out and (tmp_path / "sweep.png").exists()
    assert len((tmp_path / "sweep.jsonl").read_text().splitlines()) == 2 * 2 * 2 * 2
    results = json.loads((tmp_path / "sweep.json").read_text())
    for name, t in results.items():  # the printed drift carries the interval written to the JSON
        low, high = t["drift_interval"]
        assert f"{t['drift_log2']:.2f} [{low:.2f}, {high:.2f}]" in out and t["verdict"] in out and t["seeds"] == 2
        more = t["seeds_for_one_step"]
        assert set(t["scales"]) == {"16", "32"}
        assert (f"{name} {more} (now 2)" if more > 2 else f"{name} already at 2") in out
    main(["transfer", str(config), "--lr-range", "0.004", "0.008", "--seeds", "0", "1"])
    out = capsys.readouterr().out
    assert "best LR at base width 16: " in out and ", 2 seeds" in out and "log2 " in out and " [" in out


def test_coord_check_command(config, tmp_path, capsys):
    main(["coord-check", str(config), "--widths", "64", "256", "--out", str(tmp_path)])
    assert "pass" in capsys.readouterr().out and (tmp_path / "coord_check.png").exists()


def test_config_errors_exit_2_with_the_key(config, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["inspect", str(config), "--set", "mup.bse_width=3"])
    assert exc.value.code == 2 and "did you mean 'mup.base_width'" in capsys.readouterr().err


def test_the_command_list(capsys):
    """The installed console script itself runs in tests/test_errors.py (one subprocess for the suite)."""
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "coord-check" in capsys.readouterr().out
