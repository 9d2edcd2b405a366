"""LR sweeps: resume from JSONL, divergence counting, the optimum and its interval, drift and regret, the plot."""

import json
import math
import random

import pytest
import torch

from ezmup_plus.diagnostics import Run, RunResult, analyse, geometric_lrs, lr_sweep, plot_sweep, read_runs, transfer_table
from ezmup_plus.diagnostics.optimum import median, seeds_for_width, vertex
from ezmup_plus.diagnostics.train import random_batches, train

GRID = range(-10, -1)  # log2 LR: 2^-10 ... 2^-2


def parabola_runs(optima, seeds, *, noise=0.0, rng=None, outlier=None):
    """Loss 1 + (log2 lr - optimum)^2 / 20 (+ gaussian noise) per width; seed 0 scores ``outlier`` at the top LR.

    A non-finite outlier is a diverged run, as ``RunResult`` would call it.
    """
    rows = []
    for seed in range(seeds):
        for width, best in optima.items():
            for x in GRID:
                loss = 1 + (x - best) ** 2 / 20 + (rng.gauss(0, noise) if noise else 0.0)
                if outlier is not None and seed == 0 and x == GRID[-1]:
                    loss = outlier
                rows.append(Run("mup", width, None, 2.0**x, seed, loss, loss, not math.isfinite(loss)))
    return rows


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
    assert "drift (octaves)" in table and "2.00" in table and "0.00" in table


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
    """Error bars over three seeds, one of which has an infinite loss at the top LR."""
    runs = parabola_runs({1: -6.3, 2: -5.0}, 3, noise=0.01, rng=random.Random(0), outlier=math.inf)
    path = plot_sweep(runs, tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyse_without_runs_names_the_parametrization():
    with pytest.raises(ValueError, match="no runs with parametrization='completep'"):
        analyse([Run("sp", 8, None, 0.1, 0, 1.0, 1.0, False)], "completep")


def test_vertex_of_three_points_by_hand():
    # y = 4/3 x^2 - 2/3 x + 1 passes through (-1, 3), (0, 1), (2, 5); its vertex is at 2/3 / (2 * 4/3) = 1/4
    assert vertex((-1, 0, 2), (3, 1, 5)) == pytest.approx(0.25)
    assert vertex((0, 1, 2), (1, 2, 1)) == 1  # opens downward: the grid point
    assert vertex((0, 1, 2), (1, 1, 1)) == 1  # flat
    assert vertex((0, 1, 2), (2, 1, math.inf)) == 1  # a diverged neighbour: nothing to fit


def test_median_ranks_a_divergence_last():
    assert median([1.0, 9.0, 2.0]) == 2.0
    assert median([1.0, 2.0, math.inf]) == 2.0  # a minority of divergences leaves it alone
    assert median([1.0, math.inf]) == math.inf  # half the seeds diverged: never the optimum
    assert median([]) == math.inf


def test_optimum_off_the_grid_is_the_parabola_vertex():
    # noise-free: the parabola through any three points of the loss curve is the curve itself
    t = analyse(parabola_runs({1: -6.3, 2: -4.8}, 3), "mup", resamples=50)
    assert t.optima[1].log2_lr == pytest.approx(-6.3) and t.optima[2].log2_lr == pytest.approx(-4.8)
    assert t.best_lr[1] == pytest.approx(2**-6.3) and t.drift == pytest.approx(1.5)
    assert t.optima[1].interval == pytest.approx((-6.3, -6.3))  # every resample is the same curve


@pytest.mark.parametrize("diverged", [False, True])
def test_an_outlier_seed_at_the_top_lr_does_not_move_the_median_optimum(diverged):
    # best grid point -3, its neighbour -2 is the top of the grid where seed 0 blows up
    t = analyse(parabola_runs({1: -3.3}, 5, outlier=math.inf if diverged else 50.0), "mup", resamples=200)
    assert t.optima[1].log2_lr == pytest.approx(-3.3) and t.divergences == int(diverged)
    low, high = t.optima[1].interval
    assert low <= -3.3 <= high


def test_interval_covers_the_true_optimum_and_drift_in_most_seeded_repeats():
    truth = {1: -6.3, 2: -4.8}  # drift 1.5 octaves
    covered, drift_covered, widths = 0, 0, []
    for repeat in range(20):
        rng = random.Random(repeat)
        t = analyse(parabola_runs(truth, 5, noise=0.01, rng=rng, outlier=8.0), "mup", resamples=100, seed=repeat)
        covered += all(t.optima[w].interval[0] <= x <= t.optima[w].interval[1] for w, x in truth.items())
        drift_covered += t.drift_interval[0] <= 1.5 <= t.drift_interval[1]
        widths.append(t.drift_interval[1] - t.drift_interval[0])
    assert covered >= 14 and drift_covered >= 14
    assert sum(widths) / len(widths) < 1.0  # and the intervals are narrower than a grid step


def test_no_drift_is_within_noise_and_a_real_one_is_not():
    verdicts = {0.0: [], 1.5: []}
    for repeat in range(10):
        for shift in verdicts:
            rng = random.Random(repeat)
            t = analyse(parabola_runs({1: -6.3, 2: -6.3 + shift}, 5, noise=0.01, rng=rng), "mup", resamples=100)
            verdicts[shift].append(t.verdict)
    assert verdicts[0.0].count("within noise") >= 7 and verdicts[1.5].count("drifts") >= 7


def test_every_run_diverged_at_one_width():
    blown = [Run("mup", 2, None, 2.0**x, s, math.nan, math.nan, True) for x in GRID for s in range(2)]
    t = analyse(parabola_runs({1: -6.3}, 2) + blown, "mup", resamples=50)
    assert math.isnan(t.optima[2].log2_lr) and math.isnan(t.drift) and t.optima[2].divergences == 18
    assert t.verdict == "undefined: every run diverged at width 2"
    assert "all diverged" in transfer_table([t])
    results = json.loads(json.dumps(t.to_dict(), allow_nan=False))  # strict JSON: NaN is null
    assert results["scales"]["2"]["optimum_log2"] is None and results["drift_log2"] is None


def test_best_lr_at_the_grid_edge_is_flagged_not_extrapolated():
    t = analyse(parabola_runs({1: -6.0, 2: -0.5}, 2), "mup", resamples=50)  # width 2's optimum is above the grid
    assert t.optima[2].log2_lr == GRID[-1] and t.optima[2].at_edge and not t.optima[1].at_edge
    assert t.verdict.endswith("; at grid edge: width 2") and f"{GRID[-1]:.1f} [" in transfer_table([t])
    one_lr = analyse([Run("mup", 1, None, 0.01, s, 1.0 + s, 1.0 + s, False) for s in range(2)], "mup", resamples=10)
    assert one_lr.optima[1].at_edge and one_lr.best_lr[1] == pytest.approx(0.01) and one_lr.seeds_for_one_step == 2


def test_one_seed_has_no_interval():
    t = analyse(parabola_runs({1: -6.3, 2: -5.0}, 1), "mup")
    assert t.drift_interval is None and t.optima[1].interval is None and t.seeds_for_one_step is None
    assert t.verdict == "1 seed: no interval" and "1 seed: no interval" in t.optima[1].describe()
    assert "[" not in transfer_table([t]).splitlines()[1]


def test_seeds_for_a_narrower_interval():
    assert seeds_for_width(2, 2.0, 1.0) == 8  # width ~ 1/sqrt(n): half the width takes four times the seeds
    assert seeds_for_width(5, 0.5, 1.0) == 5  # already narrow enough
    narrow = analyse(parabola_runs({1: -6.3, 2: -5.0}, 3, noise=0.001, rng=random.Random(0)), "mup", resamples=100)
    assert narrow.seeds_for_one_step == 3 and "mup already at 3" in transfer_table([narrow])
    t = analyse(parabola_runs({1: -6.3, 2: -5.0}, 3, noise=0.03, rng=random.Random(0)), "mup", resamples=100)
    width = t.drift_interval[1] - t.drift_interval[0]
    assert t.seeds_for_one_step == max(3, math.ceil(3 * width**2))
    assert t.seeds_for_one_step > 3 and f"mup {t.seeds_for_one_step} (now 3)" in transfer_table([t])


def noisy_train(p, width, depth, lr, seed):
    """A parabola in log2(lr) with noise drawn from the run's own key: the same run gives the same loss."""
    loss = 1 + (math.log2(lr) + 6) ** 2 / 20 + random.Random(f"{p} {width} {lr} {seed}").gauss(0, 0.01)
    return RunResult(initial_loss=5.0, train_losses=(loss,), val_loss=loss)


def test_resumed_sweep_gives_the_same_numbers(tmp_path):
    path = tmp_path / "sweep.jsonl"
    grid = dict(widths=[1, 2], lrs=geometric_lrs(2**-9, 2**-3), parametrizations=("mup",), progress=False)
    fresh = analyse(lr_sweep(noisy_train, seeds=[0, 1, 2], **grid), "mup", resamples=100)
    lr_sweep(noisy_train, seeds=[0, 1], jsonl_path=path, **grid)  # interrupted after two seeds
    resumed = lr_sweep(noisy_train, seeds=[0, 1, 2], jsonl_path=path, **grid)
    assert analyse(resumed, "mup", resamples=100) == analyse(read_runs(path), "mup", resamples=100) == fresh
    assert fresh.drift_interval is not None


def test_bootstrap_is_deterministic():
    runs = parabola_runs({1: -6.3, 2: -5.0}, 4, noise=0.02, rng=random.Random(1))
    first = analyse(runs, "mup", resamples=100)
    assert analyse(runs, "mup", resamples=100) == first
    assert analyse(runs, "mup", resamples=100, seed=1).drift_interval != first.drift_interval  # its own seed
