"""LR sweeps: resume from JSONL, divergence counting, best-LR/drift/regret arithmetic, the plot."""

import math

import pytest
import torch

from ezmup_plus.diagnostics import Run, RunResult, analyse, geometric_lrs, lr_sweep, plot_sweep, read_runs, transfer_table
from ezmup_plus.diagnostics.train import random_batches, train


def fake_train(calls):
    """Loss is a parabola in log2(lr) with its minimum at 2^-6 for sp at width 1, moving one octave per doubling."""

    def run(p, width, depth, lr, seed):
        calls.append((p, width, lr, seed))
        best = -6 - (math.log2(width) if p == "sp" else 0)
        loss = 1 + (math.log2(lr) - best) ** 2 / 10
        return RunResult(initial_loss=5.0, train_losses=(loss,), val_loss=loss)

    return run


def test_geometric_grid():
    assert geometric_lrs(2**-4, 2**-1) == [2**-4, 2**-3, 2**-2, 2**-1]
    assert len(geometric_lrs(1e-3, 1e-1, per_octave=2)) == round(2 * math.log2(100)) + 1


def test_sweep_resumes_where_it_stopped(tmp_path):
    path = tmp_path / "sweep.jsonl"
    calls = []
    grid = dict(widths=[1, 2, 4], lrs=geometric_lrs(2**-9, 2**-3), seeds=[0, 1], progress=False)
    lr_sweep(fake_train(calls), parametrizations=("sp",), jsonl_path=path, **grid)  # an "interrupted" sweep
    assert len(calls) == 3 * 7 * 2
    calls.clear()
    runs = lr_sweep(fake_train(calls), parametrizations=("sp", "mup"), jsonl_path=path, **grid)
    assert len(calls) == 3 * 7 * 2 and {c[0] for c in calls} == {"mup"}  # only the missing runs
    assert len(runs) == len(read_runs(path)) == 2 * 3 * 7 * 2


def test_best_lr_drift_and_regret_by_hand():
    runs = lr_sweep(fake_train([]), widths=[1, 2, 4], lrs=geometric_lrs(2**-9, 2**-3), progress=False)
    sp, mup = analyse(runs, "sp"), analyse(runs, "mup")
    assert sp.best_lr == {1: 2**-6, 2: 2**-7, 4: 2**-8}
    assert mup.best_lr == {1: 2**-6, 2: 2**-6, 4: 2**-6}
    assert (sp.drift, mup.drift) == (2.0, 0.0)
    # at width 4 the base LR 2^-6 is two octaves off: loss 1 + 4/10 against the best 1.0
    assert sp.regret[4] == pytest.approx(0.4) and mup.regret[4] == 0.0
    table = transfer_table([sp, mup])
    assert "drift (log2)" in table and "2.00" in table and "0.00" in table


def test_divergence_is_counted_and_never_best():
    blown = RunResult(initial_loss=2.0, train_losses=(1.0, float("nan")), val_loss=float("nan"))
    worse = RunResult(initial_loss=2.0, train_losses=(2.5,), val_loss=2.4)
    fine = RunResult(initial_loss=2.0, train_losses=(1.0,), val_loss=1.1)
    assert blown.diverged and worse.diverged and not fine.diverged
    results = {0.1: blown, 0.01: worse, 0.001: fine}
    runs = lr_sweep(lambda p, w, d, lr, s: results[lr], widths=[8], lrs=[0.001, 0.01, 0.1], parametrizations=("mup",),
                    progress=False)
    t = analyse(runs, "mup")
    assert t.divergences == 2 and t.best_lr == {8: 0.001}


def test_train_stops_on_nan_and_reports_divergence():
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e6)
    result = train(model, opt, random_batches(x, y, 8, 0), torch.nn.functional.mse_loss, 200, (x, y))
    assert result.diverged and len(result.train_losses) < 200


def test_plot_is_written(tmp_path):
    runs = lr_sweep(fake_train([]), widths=[1, 2], lrs=[2**-7, 2**-6, 2**-5], progress=False)
    path = plot_sweep(runs, tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyse_without_runs_names_the_parametrization():
    with pytest.raises(ValueError, match="no runs with parametrization='completep'"):
        analyse([Run("sp", 8, None, 0.1, 0, 1.0, 1.0, False)], "completep")
