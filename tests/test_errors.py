"""Every command turns a user's mistake or Ctrl-C into one line on stderr and exit code 2; --debug keeps the traceback.

Run in-process (``main([...])``) on the tiny synthetic MLP of test_cli.py, so the whole grid stays fast.
"""

import functools
import io
import itertools
import shutil
import subprocess

import pooch
import pytest
import torch
import tqdm.auto
import yaml
from test_cli import TINY

import ezmup_plus as ezp
from ezmup_plus import cli
from ezmup_plus.config import ConfigError, build_factory, load_config
from ezmup_plus.data import DATA_DIR_VAR

COMMANDS = ("inspect", "train", "sweep", "transfer", "coord-check", "export")
SWEEP = ["--widths", "16", "32", "--lr-range", "0.004", "0.008", "--parametrizations", "mup"]


def argv(command, config, tmp_path, out=None):
    """The command line of ``command`` on ``config``, writing under ``tmp_path`` (or to ``out``)."""
    out = out or tmp_path / "out"
    tail = {"inspect": [],
            "train": ["--out", out],
            "sweep": [*SWEEP, "--out", out],
            "transfer": [*SWEEP[3:], "--out", out],
            "coord-check": ["--widths", "64", "128", "--out", out],
            "export": [tmp_path / "checkpoint.pt", "--out", out / "plain.pt"]}[command]
    return [str(a) for a in (command, config, *tail)]


def fails(args, capsys) -> str:
    """The one stderr line of a command that must exit 2 without a traceback."""
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert err.startswith("ezmup-plus: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    return err


@pytest.fixture(autouse=True)
def no_progress_bars(monkeypatch):
    """Progress bars write to stderr too; send them elsewhere so stderr holds only the error."""
    quiet = functools.partial(tqdm.auto.tqdm, file=io.StringIO())
    monkeypatch.setattr("ezmup_plus.engine.tqdm", quiet)
    monkeypatch.setattr("ezmup_plus.diagnostics.sweep.tqdm", quiet)


FACTORIES = {}


def traced(cfg):
    """The factory of ``cfg``, traced once per module: tracing dominates these runs and is not under test."""
    if repr(cfg) not in FACTORIES:
        FACTORIES[repr(cfg)] = build_factory(cfg)
    return FACTORIES[repr(cfg)]


@pytest.fixture(autouse=True)
def trace_each_config_once(monkeypatch):
    monkeypatch.setattr(cli, "build_factory", traced)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Real files: checkpoints of the tiny config's model at width 64, at width 32 (another plan) and of a model
    with other shapes, and what 'export' writes."""
    root = tmp_path_factory.mktemp("checkpoints")
    factory = traced(load_config(yaml.safe_load(TINY)))
    model = factory(width=64)
    ezp.save_checkpoint(root / "good.pt", model)
    torch.save(ezp.export_standard(model), root / "exported.pt")
    ezp.save_checkpoint(root / "width 32.pt", factory(width=32))
    state = torch.load(root / "good.pt")
    state["model"]["hidden.0.weight"] = torch.zeros(64, 4)  # the first layer of a model with 4 inputs, not 8
    torch.save(state, root / "other model.pt")
    return root


BAD_CONFIGS = {  # name -> (file contents, or None for no file; what the message says)
    "missing file": (None, "does not exist"),
    "directory": ("a directory", "Is a directory"),
    "not text": (b"\xff\xfe\x00binary", "not a text file"),
    "tab": (TINY.replace("mup: {", "mup:\n\t{"), "line 4, column 1: not valid YAML"),
    "unclosed bracket": (TINY.replace("in_features: 8, out_features: 1}}", "in_features: 8"),
                         "not valid YAML (expected ',' or '}'"),
    "unknown key": (TINY.replace("steps: 20", "stpes: 20"), "unknown key 'train.stpes'; did you mean 'train.steps'?"),
}


@pytest.mark.parametrize("problem", BAD_CONFIGS)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_config_is_one_line(command, problem, tmp_path, capsys):
    contents, says = BAD_CONFIGS[problem]
    path = tmp_path / "bad.yaml"
    if contents == "a directory":
        path.mkdir()
    elif isinstance(contents, bytes):
        path.write_bytes(contents)
    elif contents is not None:
        path.write_text(contents)
    assert says in fails(argv(command, path, tmp_path), capsys)


def test_a_bad_override_is_one_line(config, tmp_path, capsys):
    err = fails(["inspect", str(config), "--set", "model.width=[1"], capsys)
    assert "override 'model.width=[1': the value is not valid YAML" in err


@pytest.mark.parametrize("command", ["train", "sweep", "transfer", "coord-check"])
def test_a_missing_data_set_is_one_line(command, tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise ConnectionError("no network in this test")

    monkeypatch.setattr(pooch, "retrieve", offline)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(DATA_DIR_VAR, str(tmp_path / "empty"))
    config = tmp_path / "housing.yaml"
    config.write_text(TINY.replace("name: synthetic", "name: california_housing"))
    err = fails(argv(command, config, tmp_path), capsys)
    assert "california_housing.csv (california_housing) could not be fetched" in err and "ConnectionError" in err


@pytest.mark.parametrize("command", ["train", "sweep", "transfer", "coord-check", "export"])
def test_an_unwritable_out_is_one_line_before_any_work(command, config, tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("not a directory")
    for step in ("task_from", "build_factory"):
        monkeypatch.setattr(cli, step, lambda *args: pytest.fail("work started before --out was checked"))
    err = fails(argv(command, config, tmp_path, out=tmp_path / "a_file" / "sub"), capsys)
    assert f"{tmp_path / 'a_file' / 'sub'}: Not a directory (no output can be written there)" in err


CHECKPOINTS = {  # name -> (its bytes, from the real checkpoints; what the message says)
    "other plan": (lambda real: (real / "width 32.pt").read_bytes(),
                   "was trained under another muP plan (width: saved 32, model 64)"),
    "other model": (lambda real: (real / "other model.pt").read_bytes(),
                    "does not fit this model: Error(s) in loading state_dict for MLP: size mismatch"),
    "truncated": (lambda real: (real / "good.pt").read_bytes()[: (real / "good.pt").stat().st_size // 2],
                  "cannot be loaded as a checkpoint: it is truncated, not a torch file"),
    "foreign": (lambda real: b"model: not a checkpoint\n", "cannot be loaded as a checkpoint: it is truncated"),
    "an export": (lambda real: (real / "exported.pt").read_bytes(), "is a torch file without a muP plan"),
    "missing": (None, "No such file or directory"),
}


@pytest.mark.parametrize("problem", CHECKPOINTS)
def test_export_of_a_bad_checkpoint_is_one_line(problem, config, checkpoints, tmp_path, capsys):
    contents, says = CHECKPOINTS[problem]
    path = tmp_path / "checkpoint.pt"
    if contents is not None:
        path.write_bytes(contents(checkpoints))
    err = fails(argv("export", config, tmp_path), capsys)
    assert str(path) in err and says in err


def interrupt(monkeypatch, owner, name, after=0):
    """Ctrl-C on call number ``after + 1`` of ``owner.name``."""
    real, calls = getattr(owner, name), itertools.count()

    def pressed(*args, **kwargs):
        if next(calls) == after:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, pressed)


# command -> (where Ctrl-C is pressed, after how many calls, what the message says is kept)
INTERRUPTS = {
    "inspect": ((cli, "build_factory"), 0, "nothing was written"),
    "train": ((torch.optim.Adam, "step"), 5, "the last complete checkpoint is kept at {out}/checkpoint.pt"),
    "sweep": ((torch.optim.Adam, "step"), 25, "the log line of every finished run is kept in {out}/sweep.jsonl"),
    "transfer": ((torch.optim.Adam, "step"), 25, "the log line of every finished run is kept in {out}/sweep.jsonl"),
    "coord-check": ((torch.optim.Adam, "step"), 1, "nothing was written"),
    "export": ((torch, "save"), 0, "the previous export is kept at {out}/plain.pt"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_ctrl_c_is_one_line_that_says_what_is_kept(command, config, checkpoints, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(checkpoints / "good.pt", tmp_path / "checkpoint.pt")  # what export reads
    if command == "train":  # what a finished run left, which the interrupted one must keep
        shutil.copy(checkpoints / "good.pt", out / "checkpoint.pt")
    if command == "export":
        (out / "plain.pt").write_bytes(b"the previous export")
    before = files(out)
    (owner, name), after, says = INTERRUPTS[command]
    interrupt(monkeypatch, owner, name, after)
    assert fails(argv(command, config, tmp_path), capsys) == f"ezmup-plus: interrupted; {says.format(out=out)}\n"
    assert not list(out.glob(".*.tmp")), "an interrupted write removes its temporary file"
    if command in ("sweep", "transfer"):
        assert len((out / "sweep.jsonl").read_text().splitlines()) == 1  # the run that finished
    else:
        assert files(out) == before


def files(directory):
    return {p.name: p.read_bytes() for p in directory.glob("*") if p.is_file()}


@pytest.mark.parametrize("command", COMMANDS)
def test_debug_shows_the_traceback(command, tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match="does not exist"):
        cli.main(["--debug", *argv(command, missing, tmp_path)])
    with pytest.raises(ConfigError, match="does not exist"):  # after the command too
        cli.main([command, "--debug", *argv(command, missing, tmp_path)[1:]])


def test_debug_shows_the_traceback_of_ctrl_c(config, tmp_path, monkeypatch):
    interrupt(monkeypatch, cli, "build_factory")
    with pytest.raises(KeyboardInterrupt):
        cli.main(["--debug", "inspect", str(config)])


def test_a_programming_error_keeps_its_traceback(config, monkeypatch):
    monkeypatch.setattr(cli, "build_factory", lambda cfg: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["inspect", str(config)])


def test_the_console_script_prints_one_line(tmp_path):
    result = subprocess.run(["ezmup-plus", "train", str(tmp_path / "missing.yaml")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == f"ezmup-plus: config error: config file {tmp_path / 'missing.yaml'} does not exist\n"
