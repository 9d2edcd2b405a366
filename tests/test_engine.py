"""``ezmup-plus train`` on the Accelerate engine: the same numbers as a plain loop, on 1 process and on 2 gloo
processes, with accumulation, clipping, bf16 autocast and checkpoint + resume; the muP groups survive prepare."""

import functools
import io
import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
import tqdm.auto
import yaml

pytest.importorskip("accelerate")

from ezmup_plus import cli  # noqa: E402
from ezmup_plus.trial import task_from  # noqa: E402
from ezmup_plus.checkpoint import save_checkpoint  # noqa: E402
from ezmup_plus.config import build_factory, build_optimizer, build_scheduler, load_config  # noqa: E402
from ezmup_plus.engine import Engine  # noqa: E402

# every feature at once: a schedule, two microbatches, clipping (at a norm the gradients exceed), checkpoints
CONFIG = """
model: {factory: "ezmup_plus.models.mlp:MLP", width: 64, kwargs: {in_features: 8, out_features: 1}}
mup: {base_width: 16}
optimizer: {name: adamw, lr: 0.01, weight_decay: 0.1}
scheduler: {name: cosine}
train: {steps: 8, batch_size: 32, accumulation: 2, grad_clip: 0.5, checkpoint_every: 4}
data: {name: synthetic}
"""


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setattr("ezmup_plus.engine.tqdm", functools.partial(tqdm.auto.tqdm, file=io.StringIO()))


FACTORIES = {}


def factory(cfg):
    """The config's factory, traced once: tracing is not under test here and dominates an in-process run."""
    key = repr((cfg.model, cfg.mup))
    if key not in FACTORIES:
        FACTORIES[key] = build_factory(cfg)
    return FACTORIES[key]


@pytest.fixture(autouse=True)
def trace_once(monkeypatch):
    monkeypatch.setattr(cli, "build_factory", factory)


def write(tmp_path, text=CONFIG, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def train(config, out, *extra):
    cli.main(["train", str(config), "--out", str(out), *extra])
    return json.loads((out / "loss.json").read_text())


def losses(log):
    return [r["loss"] for r in log["train"]]


def plain_loop(text, clip=None):
    """The bare loop 'train' used to be (one batch per step, no engine), for the engine to equal."""
    cfg = load_config(yaml.safe_load(text))
    task = task_from(cfg)
    torch.manual_seed(cfg.train.seed)
    model = factory(cfg)(width=cfg.model.width)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    out = []
    for _, (x, y) in zip(range(cfg.train.steps), task.batches(cfg.train.seed)):
        opt.zero_grad()
        loss = task.loss(model(x), y)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        out.append(float(loss.detach()))
    return out


def test_one_process_is_the_plain_loop(tmp_path):
    text = CONFIG.replace("accumulation: 2", "accumulation: 1")
    assert losses(train(write(tmp_path, text), tmp_path / "out")) == plain_loop(text, clip=0.5)


def test_two_microbatches_equal_one_batch_of_twice_the_size(tmp_path, monkeypatch):
    sizes = []
    real = torch.nn.functional.mse_loss
    monkeypatch.setattr(torch.nn.functional, "mse_loss", lambda out, y: sizes.append(len(y)) or real(out, y))
    whole = train(write(tmp_path, CONFIG.replace("accumulation: 2", "accumulation: 1")), tmp_path / "whole")
    assert sizes == [32] * 8 + [len(task_from(load_config(yaml.safe_load(CONFIG))).val[1])]
    sizes.clear()
    halves = train(write(tmp_path), tmp_path / "halves")
    assert sizes[:16] == [16] * 16, "each step is two microbatches of 16"
    assert losses(halves) == pytest.approx(losses(whole), rel=1e-6, abs=0)
    assert [r["grad_norm"] for r in halves["train"]] == pytest.approx([r["grad_norm"] for r in whole["train"]],
                                                                      rel=1e-5)
    assert halves["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-6)


def test_gradient_clipping_is_applied(tmp_path):
    text = (CONFIG.replace("name: adamw, lr: 0.01, weight_decay: 0.1", "name: sgd, lr: 0.05")  # SGD: the norm counts
            .replace("grad_clip: 0.5", "grad_clip: 0.3"))
    clipped = train(write(tmp_path, text), tmp_path / "clipped")
    norms = [r["grad_norm"] for r in clipped["train"]]
    assert min(norms) > 0.3, "every step's gradient is above the clipping norm, so every step is clipped"
    assert losses(clipped) == pytest.approx(plain_loop(text, clip=0.3), rel=1e-5)
    unclipped = train(write(tmp_path, text.replace("grad_clip: 0.3", "grad_clip: null")), tmp_path / "unclipped")
    assert "grad_norm" not in unclipped["train"][0]
    assert abs(losses(unclipped)[-1] - losses(clipped)[-1]) > 1e-3


def test_resume_gives_the_uninterrupted_run(tmp_path, monkeypatch):
    config = write(tmp_path)
    whole = train(config, tmp_path / "whole")
    real, calls = torch.optim.AdamW.step, itertools.count()

    def ctrl_c_at_step_6(self, *args, **kwargs):
        if next(calls) == 6:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", ctrl_c_at_step_6)
    with pytest.raises(SystemExit) as exc:
        train(config, tmp_path / "cut")
    assert exc.value.code == 2
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt")
    assert saved["step"] == 4 and len(saved["log"]) == 4  # the checkpoint every 4 steps, not the final one
    calls = itertools.count(-100)  # no more interrupts
    resumed = train(config, tmp_path / "cut", "--resume")
    assert next(calls) == -100 + 4, "the resumed run took the 4 remaining steps only"
    assert resumed == whole  # losses, LRs, gradient norms and validation loss, bit for bit


def test_resume_needs_a_checkpoint_of_train(tmp_path, capsys):
    config = write(tmp_path)
    with pytest.raises(SystemExit):
        train(config, tmp_path / "none", "--resume")
    assert "checkpoint.pt: no checkpoint to resume from (run without --resume to start)" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    save_checkpoint(tmp_path / "bare" / "checkpoint.pt", factory(load_config(config))(width=64))
    with pytest.raises(SystemExit):
        train(config, tmp_path / "bare", "--resume")
    assert "holds no training step: it was not written by 'ezmup-plus train'" in capsys.readouterr().err


def test_prepare_keeps_the_mup_groups_and_the_schedule():
    cfg = load_config(yaml.safe_load(CONFIG))
    engine = Engine(cfg.train)
    model = factory(cfg)(width=64)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)

    def groups(o):
        return [({k: v for k, v in g.items() if k != "params"}, [id(p) for p in g["params"]]) for g in o.param_groups]

    before = groups(opt)
    assert len({g["lr"] for g, _ in before}) > 1 and len({g["eps"] for g, _ in before}) > 1, "muP groups differ"
    with engine:
        model, prepared, prepared_sched = engine.prepare(model, opt, sched)
        assert groups(prepared) == before  # lr, initial_lr, eps, weight_decay, betas and the very same tensors
        ratios = [g["lr"] / g["initial_lr"] for g in opt.param_groups]
        assert ratios == [1.0] * len(ratios)
        prepared.step()
        prepared_sched.step()
        scaled = {g["lr"] / g["initial_lr"] for g in opt.param_groups}
        assert len(scaled) == 1 and scaled.pop() < 1, "one scheduler step scales every group's LR alike"


def test_bf16_autocast_on_cpu(tmp_path):
    text = CONFIG.replace("steps: 8", "steps: 3")
    fp32 = train(write(tmp_path, text), tmp_path / "fp32")
    bf16 = train(write(tmp_path, text.replace("accumulation: 2", "accumulation: 2, mixed_precision: bf16")),
                 tmp_path / "bf16")
    assert losses(bf16) != losses(fp32), "the forward ran in bf16"
    assert losses(bf16) == pytest.approx(losses(fp32), rel=2e-2)
    saved = torch.load(tmp_path / "bf16" / "checkpoint.pt")
    assert {t.dtype for t in saved["model"].values()} == {torch.float32}, "the weights stay fp32"


@pytest.mark.parametrize("setting, says", [
    ("train.acumulation=2", "unknown key 'train.acumulation'; did you mean 'train.accumulation'?"),
    ("train.mixed_precision=fp8", "train.mixed_precision='fp8' is unknown; choose from ('no', 'bf16', 'fp16')"),
    ("train.mixed_precision=fp16", "train.mixed_precision=fp16 is not run on CPU"),
    ("train.accumulation=0", "train.accumulation=0 must be at least 1"),
    ("train.grad_clip=0", "train.grad_clip=0.0 must be positive"),
    ("train.accumulation=3", "train.batch_size=32 must be a multiple of train.accumulation x processes = 3 x 1"),
])
def test_a_bad_train_setting_is_one_line(setting, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train(write(tmp_path), tmp_path / "out", "--set", setting)
    assert exc.value.code == 2 and says in capsys.readouterr().err


def test_two_gloo_processes_give_the_losses_of_one(tmp_path):
    """torchrun --standalone (a free port the OS picks), 2 CPU processes, each taking half of every microbatch."""
    config = write(tmp_path)
    one = train(config, tmp_path / "one")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "ezmup_plus.cli", "train", str(config), "--out", str(tmp_path / "two")],
                            capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "loss.json").read_text())
    assert [r["lr"] for r in two["train"]] == [r["lr"] for r in one["train"]]
    assert losses(two) == pytest.approx(losses(one), rel=1e-5, abs=0)
    assert [r["grad_norm"] for r in two["train"]] == pytest.approx([r["grad_norm"] for r in one["train"]], rel=1e-5)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)
    assert result.stdout.count("final train loss") == 1 and "(2 processes)" in result.stdout, result.stdout
