"""ezp.tune and ezmup-plus tune: Optuna studies of a tiny MLP on synthetic data (20 steps a trial)."""

import importlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

import ezmup_plus as ezp
from ezmup_plus import build
from ezmup_plus.cli import main
from ezmup_plus.config import config_data, load_config
from ezmup_plus.models.mlp import MLP
from test_cli import TINY  # the tiny synthetic config the CLI tests use

tune_module = importlib.import_module("ezmup_plus.tune")  # ezmup_plus.tune is the function

SPACE = """
optimizer.lr: {low: 1.0e-3, high: 0.1, log: true}
mup.hparams.output: {low: 0.25, high: 4.0, log: true}
mup.hparams.init: {low: 0.5, high: 2.0}
optimizer.betas: {choices: [[0.9, 0.999], [0.9, 0.95]]}
"""


class HangingMLP(MLP):
    """An MLP whose build never returns once another has trained, when EZMUP_TEST_HANG is set: a tune process
    that is killed in the middle of its second trial."""

    trained = False

    def __init__(self, width, **kwargs):
        if os.environ.get("EZMUP_TEST_HANG") and HangingMLP.trained:
            threading.Event().wait()
        super().__init__(width, **kwargs)

    def forward(self, x):
        HangingMLP.trained |= x.device.type != "meta" and torch.is_grad_enabled()
        return super().forward(x)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "space.yaml").write_text(SPACE)
    return tmp_path / "tiny.yaml", tmp_path / "space.yaml"


def trials_of(storage, study="tiny"):
    return optuna.load_study(study_name=study, storage=tune_module.open_storage(storage)).trials


def states(trials):
    return [t.state.name for t in trials]


def wait_for(condition, proc, timeout=60.0):
    """Poll ``condition`` until it holds; fail if ``proc`` ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the tune process ended early (exit {proc.returncode})"
        assert time.monotonic() < deadline, f"not reached in {timeout} s"
        time.sleep(0.05)


def test_a_killed_study_resumes_and_two_workers_top_it_up(files, tmp_path, monkeypatch):
    config, space = files
    config.write_text(TINY.replace("ezmup_plus.models.mlp:MLP", "test_tune:HangingMLP"))
    out, journal = tmp_path / "out", tmp_path / "out" / "study.log"
    monkeypatch.setenv("EZMUP_PLUS_CACHE", str(tmp_path / "cache"))  # the workers load the first process's analysis
    here, package = Path(__file__).parent, Path(ezp.__file__).parents[1]
    env = {**os.environ, "EZMUP_TEST_HANG": "1", "PYTHONPATH": os.pathsep.join([str(package), str(here)])}
    script = ("import sys, ezmup_plus, ezmup_plus.cli; assert 'optuna' not in sys.modules, 'imported at import'; "
              "ezmup_plus.cli.main(sys.argv[1:])")
    argv = ["tune", str(config), "--space", str(space), "--trials", "5", "--out", str(out), "--pruner", "none"]
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, "-c", script, *argv, "--storage", f"journal:{journal}"], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        try:  # the first trial done, the second hanging in its build: killed mid-trial
            wait_for(lambda: journal.exists() and states(trials_of(f"journal:{journal}")) == ["COMPLETE", "RUNNING"],
                     proc)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    first = trials_of(f"journal:{journal}")[0]

    main([*argv, "--workers", "2"])  # the default storage: the journal file the first run left
    trials = trials_of(f"journal:{journal}")
    assert states(trials).count("COMPLETE") == 5 and states(trials)[1] == "RUNNING"  # 5 finished, the dead one kept
    assert trials[0].params == first.params and trials[0].value == first.value
    assert {t.user_attrs["worker"] for t in trials[2:]} == {0, 1}  # both workers ran trials of the one study
    assert len((out / "trials.csv").read_text().splitlines()) == 1 + 6


def test_best_yaml_round_trips_as_an_overlay_and_trials_never_retrace(files, tmp_path, monkeypatch, capsys):
    config, space = files
    traces, factories = [], []
    analyse = build.analyse_factory
    monkeypatch.setattr(build, "analyse_factory", lambda *a: traces.append(1) or analyse(*a))
    build_factory = tune_module.build_factory
    monkeypatch.setattr(tune_module, "build_factory", lambda cfg: factories.append(1) or build_factory(cfg))
    result = ezp.tune(config, space, trials=4, out=tmp_path / "out", pruner="none", progress=False)
    assert len(traces) == 1 and len(factories) == 1  # four trials, one analysis
    stored = optuna.load_study(study_name="tiny", storage=result.storage).best_trial
    assert stored.number == result.best_trial and len(result.trials) == 4

    best = tmp_path / "out" / "best.yaml"
    cfg = load_config(config, overlays=[best])
    assert cfg.optimizer.lr == stored.params["optimizer.lr"] == result.best_params["optimizer.lr"]  # exact
    assert cfg.mup.hparams.output == stored.params["mup.hparams.output"]
    assert cfg.mup.hparams.init == stored.params["mup.hparams.init"]
    assert cfg.optimizer.betas == yaml.safe_load(stored.params["optimizer.betas"])
    assert yaml.safe_load(best.read_text())["optimizer"]["lr"] == stored.params["optimizer.lr"]
    out = capsys.readouterr().out
    assert "trial  state     val_loss  optimizer.lr" in out and "4 trials: 4 complete" in out
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == {"history.png", "slice.png", "importances.png"}

    main(["inspect", str(config), "--overlay", str(best)])  # the knobs reach the plan
    assert f"output {cfg.mup.hparams.output:.4g}" in capsys.readouterr().out
    main(["train", str(config), "--overlay", str(best), "--out", str(tmp_path / "train")])
    assert (tmp_path / "train" / "loss.json").exists()
    main(["transfer", str(config), "--overlay", str(best)])
    assert f"optimizer.lr={cfg.optimizer.lr:.4g} from the overlay, not tuned again; at width 64" in capsys.readouterr().out


def test_a_diverging_trial_is_recorded_and_the_study_goes_on(files, tmp_path):
    config, space = files
    space.write_text("optimizer.lr: {low: 1.0e-3, high: 1.0e3, log: true}\n")
    storage = f"journal:{tmp_path / 'study.log'}"
    study = optuna.create_study(study_name="tiny", storage=tune_module.open_storage(storage))
    for lr in (1000.0, 0.01):  # the first diverges; the study goes on to the second
        study.enqueue_trial({"optimizer.lr": lr})
    result = ezp.tune(config, space, trials=3, storage=storage, out=tmp_path, pruner="none", progress=False)
    diverged, good, _ = trials_of(storage)
    assert diverged.state.name == "COMPLETE" and diverged.value == math.inf and diverged.user_attrs["diverged"]
    assert good.state.name == "COMPLETE" and good.value < 1 and not good.user_attrs["diverged"]
    assert result.best_trial != 0 and result.best_value <= good.value
    assert result.trials[0]["diverged"] and "DIVERGED" in tune_module.table(result.trials, ["optimizer.lr"])


def test_an_obviously_bad_trial_is_pruned(files, tmp_path):
    config, space = files
    space.write_text("optimizer.lr: {low: 1.0e-7, high: 0.1, log: true}\n")
    storage = f"journal:{tmp_path / 'study.log'}"
    study = optuna.create_study(study_name="tiny", storage=tune_module.open_storage(storage))
    for lr in [0.01] * 5 + [1e-7]:  # the median pruner waits for 5 trials; then an LR that cannot learn in 20 steps
        study.enqueue_trial({"optimizer.lr": lr})
    ezp.tune(config, space, trials=6, storage=storage, out=tmp_path, pruner="median", eval_every=5, progress=False)
    trials = trials_of(storage)
    assert states(trials) == ["COMPLETE"] * 5 + ["PRUNED"] and trials[5].last_step == 5


SPACE_ERRORS = {
    "optimizer.lrr: {low: 1.0e-3, high: 0.1}": "space key 'optimizer.lrr' = 0.001: unknown key 'optimizer.lrr'; did "
                                              "you mean 'optimizer.lr'?",
    "mup.hparams.outptu: {low: 0.5, high: 2.0}": "unknown key 'mup.hparams.outptu'; did you mean 'mup.hparams.output'",
    "model.width: {choices: [16, 32]}": "space key 'model.width': tune samples optimizer.* and mup.hparams.* only",
    "optimizer.lr: {low: 0.1, high: 0.01}": "space key 'optimizer.lr': the range is empty: low=0.1 must be below high",
    "optimizer.lr: {low: 0.0, high: 0.1, log: true}": "space key 'optimizer.lr': log: true needs low > 0",
    "optimizer.lr: {low: 1.0e-3, high: .inf}": "space key 'optimizer.lr': high=inf must be a finite number",
    "optimizer.lr: {low: one, high: 0.1}": "space key 'optimizer.lr': low='one' must be a finite number",
    "mup.hparams.init: {low: 0.0, high: 2.0}": "space key 'mup.hparams.init' = 0.0: mup.hparams: hparams.init=0.0 "
                                               "must be positive",
    "optimizer.lr: {low: 1.0e-3, hgih: 0.1}": "space key 'optimizer.lr': unknown field(s) ['hgih']",
    "optimizer.lr: {low: 1, high: 2.5, int: true}": "high=2.5 must be a finite integer",
    "optimizer.lr: 0.01": "space key 'optimizer.lr': give {low, high, log: true}",
    "optimizer.lr: !!python/object/apply:os.system [echo unsafe]": "only plain YAML is allowed",
}


@pytest.mark.parametrize("text", SPACE_ERRORS)
def test_a_bad_space_is_one_line_naming_the_key(files, text, capsys):
    config, space = files
    space.write_text(text + "\n")
    with pytest.raises(SystemExit) as exc:
        main(["tune", str(config), "--space", str(space), "--trials", "2", "--out", str(space.parent / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and SPACE_ERRORS[text] in err, err
    assert not (space.parent / "out" / "study.db").exists()  # refused before any study was made


def test_without_optuna_tune_says_what_to_install(files, monkeypatch, capsys):
    config, space = files
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    with pytest.raises(SystemExit) as exc:
        main(["tune", str(config), "--space", str(space), "--trials", "2", "--out", str(space.parent / "out")])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "ezmup-plus: tune needs Optuna: pip install 'ezmup_plus[tune]'\n"


def test_default_storage_is_sqlite_for_one_worker_a_journal_for_several_and_an_existing_one_wins(tmp_path):
    spec = tune_module.storage_spec
    assert spec(None, tmp_path, 1) == f"sqlite:///{tmp_path.resolve() / 'study.db'}"
    assert spec(None, tmp_path, 2) == f"journal:{tmp_path.resolve() / 'study.log'}"
    (tmp_path / "study.db").touch()
    assert spec(None, tmp_path, 2).startswith("sqlite:///")  # a rerun finds its study whatever --workers says
    assert spec("postgresql://host/db", tmp_path, 2) == "postgresql://host/db"
    journal = tune_module.open_storage(str(tmp_path / "other.log"))
    assert isinstance(journal, optuna.storages.JournalStorage)


@pytest.mark.parametrize("name", ["mlp_california", "gpt_shakespeare"])
def test_the_shipped_spaces_fit_their_configs(name):
    configs = Path(__file__).resolve().parents[1] / "configs"
    base = config_data(configs / f"{name}{'_mup' if name == 'mlp_california' else ''}.yaml")
    knobs = tune_module.load_space(configs / "spaces" / f"{name}.yaml")
    tune_module.check_space(base, knobs)
    assert "optimizer.lr" in knobs and "mup.hparams.output" in knobs and knobs["optimizer.lr"].log
