"""Writes that cannot lose work: a real process killed mid-write leaves the previous checkpoint, and a sweep log
whose last line it cut short resumes from the good lines."""

import functools
import json
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from test_sweep import fake_train

import ezmup_plus as ezp
from ezmup_plus.atomic import atomic_write
from ezmup_plus.diagnostics import lr_sweep, read_runs
from ezmup_plus.models.mlp import MLP

TESTS = Path(__file__).parent
GRID = dict(widths=[1, 2], lrs=[2**-7, 2**-6, 2**-5], parametrizations=("sp",), progress=False)


@functools.cache
def tiny_factory():
    return ezp.wrap(MLP, base_width=16, in_features=8, out_features=1)


def tiny_model():
    return tiny_factory()(width=32)


def run_child(tmp_path, script, *args):
    """Run ``script`` in a fresh Python; it must die by SIGKILL, as a crash or the OOM killer would end it."""
    (tmp_path / "child.py").write_text(script)
    result = subprocess.run([sys.executable, tmp_path / "child.py", TESTS, *map(str, args)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr


KILLED_MID_SAVE = """
import io, os, signal, sys
import torch
sys.path.insert(0, sys.argv[1])
from test_writes import tiny_model
import ezmup_plus as ezp

path, first = sys.argv[2:]
model = tiny_model()
ezp.save_checkpoint(path, model)  # the good checkpoint
torch.save(model.state_dict(), first)  # what it holds, for the test to compare
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)
real_save = torch.save

def save_half_then_die(obj, f, **kwargs):
    buffer = io.BytesIO()
    real_save(obj, buffer, **kwargs)
    f = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_half_then_die
ezp.save_checkpoint(path, model)  # the next one, killed halfway through
"""


def test_a_save_killed_halfway_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    run_child(tmp_path, KILLED_MID_SAVE, path, tmp_path / "first.pt")
    model = tiny_model()
    ezp.load_checkpoint(path, model)
    torch.testing.assert_close(model.state_dict(), torch.load(tmp_path / "first.pt"), rtol=0, atol=0)
    leftover, = tmp_path.glob(".checkpoint.pt.*.tmp")  # the half-written file, under a name nothing reads
    assert 0 < leftover.stat().st_size < path.stat().st_size
    with pytest.raises(ValueError, match="cannot be loaded as a checkpoint: it is truncated"):
        ezp.load_checkpoint(leftover, model)


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ezp.save_checkpoint(path, tiny_model())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{path} cannot be loaded as a checkpoint: it is truncated"):
        ezp.load_checkpoint(path, tiny_model())


KILLED_MID_LINE = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from test_sweep import fake_train
from test_writes import GRID
from ezmup_plus.diagnostics import sweep

appends = 0

def open_log(path, mode="r", **kwargs):
    '''The sweep log, whose third record is cut short by a kill halfway through writing it.'''
    global appends
    fh = open(path, mode, **kwargs)
    appends += mode == "a"
    if appends == 3:
        def write_half_then_die(text):
            type(fh).write(fh, text[: len(text) // 2])
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        fh.write = write_half_then_die
    return fh

sweep.open = open_log
sweep.lr_sweep(fake_train([]), jsonl_path=sys.argv[2], **GRID)
"""


def test_a_sweep_killed_mid_line_resumes_from_the_good_lines(tmp_path):
    path = tmp_path / "sweep.jsonl"
    run_child(tmp_path, KILLED_MID_LINE, path)
    *whole, cut = path.read_text().split("\n")
    assert len(whole) == 2 and cut and not cut.endswith("}"), "two whole lines and the start of a third"
    with pytest.warns(UserWarning, match="last line is an unfinished record"):
        assert len(read_runs(path)) == 2
    calls = []
    with pytest.warns(UserWarning, match="last line is an unfinished record"):
        runs = lr_sweep(fake_train(calls), jsonl_path=path, **GRID)
    assert runs == lr_sweep(fake_train([]), **GRID)  # what an uninterrupted sweep gives
    assert len(calls) == len(runs) - 2  # only the runs without a whole line are done again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_runs(path) == runs
    assert path.read_text().count("\n") == len(runs)  # the cut line is gone, not glued to the next record


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "sweep.jsonl"
    lr_sweep(fake_train([]), jsonl_path=path, **{**GRID, "widths": [1]})
    path.write_text(path.read_text().rstrip("\n"))
    calls = []
    runs = lr_sweep(fake_train(calls), jsonl_path=path, **GRID)
    assert len(calls) == 3 and read_runs(path) == runs and path.read_text().count("\n") == 6


def test_a_damaged_line_before_the_last_names_the_file_and_line(tmp_path):
    path = tmp_path / "sweep.jsonl"
    lr_sweep(fake_train([]), jsonl_path=path, **GRID)
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:20] + "\n"
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match=f"{path}, line 2: not a sweep record"):
        read_runs(path)
    with pytest.raises(ValueError, match="line 2"):
        lr_sweep(fake_train([]), jsonl_path=path, **GRID)
    assert path.read_text() == "".join(lines), "a damaged log is left for the user to look at"


def test_a_write_that_raises_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "loss.json"
    path.write_text(json.dumps({"old": 1}))
    with pytest.raises(KeyboardInterrupt), atomic_write(path) as fh:
        fh.write('{"new": ')
        raise KeyboardInterrupt
    assert json.loads(path.read_text()) == {"old": 1} and list(tmp_path.iterdir()) == [path]
