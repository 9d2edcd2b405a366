"""Learning-rate sweeps across widths (and depths): the evidence that hyperparameters transfer.

A sweep is a grid of runs; each finished run is one JSON line, so an interrupted sweep resumes
where it stopped (a line cut short by a kill mid-write is dropped, and that run done again). The
analysis works on the rows alone, so it is the same for a fresh sweep and for a file read back: per
width, the optimum LR off the grid (``optimum``: median over seeds, parabola vertex) with a
bootstrap interval over seeds; the drift of the optima across widths with its interval and a
verdict; divergences; the regret of using the base width's best LR everywhere.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm.auto import tqdm

from ..atomic import atomic_write
from .figures import pyplot, save
from .optimum import LEVEL, RESAMPLES, Curve, bootstrap_optima, interval, quantile, seeds_for_width, spread
from .train import RunResult


@dataclass(frozen=True)
class Run:
    """One finished run of the grid."""

    parametrization: str
    width: int
    depth: int | None
    lr: float
    seed: int
    min_train_loss: float
    val_loss: float
    diverged: bool

    @property
    def key(self) -> tuple:
        return (self.parametrization, self.width, self.depth, self.lr, self.seed)

    @property
    def score(self) -> float:
        """What the best LR minimises: validation loss, infinite for a diverged run."""
        return math.inf if self.diverged else self.val_loss


def geometric_lrs(low: float, high: float, per_octave: int = 1) -> list[float]:
    """low, low*2^(1/k), ..., high: the grid of TP5's Figure 1."""
    n = round(math.log2(high / low) * per_octave)
    return [low * 2 ** (i / per_octave) for i in range(n + 1)]


def lr_sweep(
    train_fn: Callable[[str, int, int | None, float, int], RunResult],
    *,
    widths: Sequence[int],
    lrs: Sequence[float],
    seeds: Sequence[int] = (0,),
    parametrizations: Sequence[str] = ("sp", "mup"),
    depths: Sequence[int | None] = (None,),
    jsonl_path: str | Path | None = None,
    progress: bool = True,
) -> list[Run]:
    """Run ``train_fn(parametrization, width, depth, lr, seed)`` over the grid; skip runs already in the file."""
    done = {}
    if jsonl_path and Path(jsonl_path).exists():
        kept = read_runs(jsonl_path)
        with atomic_write(jsonl_path) as fh:  # the good lines only, so the next record starts on a fresh line
            fh.writelines(map(_line, kept))
        done = {r.key: r for r in kept}
    grid = list(itertools.product(parametrizations, widths, depths, lrs, seeds))
    runs = []
    with tqdm(grid, desc="lr sweep", disable=not progress, leave=False) as bar:  # closed even on Ctrl-C
        for p, w, d, lr, seed in bar:
            key = (p, w, d, lr, seed)
            if key not in done:
                result = train_fn(p, w, d, lr, seed)
                done[key] = Run(p, w, d, lr, seed, result.min_train_loss, result.val_loss, result.diverged)
                if jsonl_path:
                    with open(jsonl_path, "a") as fh:
                        fh.write(_line(done[key]))
            runs.append(done[key])
    return runs


def _line(run: Run) -> str:
    return json.dumps(asdict(run)) + "\n"


def read_runs(path: str | Path) -> list[Run]:
    """The runs of a sweep log. An unfinished last line (a kill mid-write) is dropped with a warning; a bad
    line anywhere else is damage, a ``ValueError`` naming it."""
    lines = Path(path).read_text().split("\n")  # the last item is "" unless the last write was cut short
    runs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            runs.append(Run(**json.loads(line)))
        except (ValueError, TypeError) as exc:
            if number < len(lines):
                raise ValueError(f"{path}, line {number}: not a sweep record ({exc}); fix or delete that line "
                                 "to resume") from exc
            warnings.warn(f"{path}: its last line is an unfinished record (a run stopped while writing it); it is "
                          "left out and that run is done again", stacklevel=2)
    return runs


@dataclass(frozen=True)
class Optimum:
    """One scale's best LR, off the grid, in octaves (log2 LR), with its bootstrap interval over seeds."""

    log2_lr: float  # NaN when every run at this scale diverged
    interval: tuple[float, float] | None  # None with one seed
    at_edge: bool  # best at the end of the grid: the true optimum may lie beyond it
    best_loss: float  # median loss over seeds at the best grid LR
    divergences: int
    seeds: int

    @property
    def lr(self) -> float:
        return 2**self.log2_lr

    def describe(self) -> str:
        """The optimum on one line: the LR, its log2 with the interval, the seed count, the edge flag."""
        if math.isnan(self.log2_lr):
            return "undefined (every run diverged)"
        seeds = f"{self.seeds} seeds" if self.interval else _no_interval(self.seeds)
        edge = ", at grid edge" if self.at_edge else ""
        return f"{self.lr:.4g} (log2 {_with_interval(self.log2_lr, self.interval, 2)}, {seeds}{edge})"


@dataclass(frozen=True)
class Transfer:
    """Best LR per width (or depth) for one parametrization, its drift across scales, and the base LR's regret.

    ``drift`` is the max minus the min of the per-scale optima, in octaves: the goal is 0. It cannot be
    negative, so noise pushes it up, and its percentile interval with it (an interval of a range
    rarely reaches 0 exactly). The verdict is therefore "within noise" when the interval's lower end
    is at most ``tolerance``, half a grid step: a drift the grid cannot tell from 0.
    """

    parametrization: str
    axis: str
    optima: dict[int, Optimum]
    drift: float  # NaN when a scale has no optimum
    drift_interval: tuple[float, float] | None
    regret: dict[int, float]  # scale -> median loss at the base scale's best grid LR minus the best there
    seeds: int
    grid_step: float  # octaves between neighbouring grid LRs

    @property
    def best_lr(self) -> dict[int, float]:
        return {s: o.lr for s, o in self.optima.items()}

    @property
    def best_loss(self) -> dict[int, float]:
        return {s: o.best_loss for s, o in self.optima.items()}

    @property
    def divergences(self) -> int:
        return sum(o.divergences for o in self.optima.values())

    @property
    def tolerance(self) -> float:
        return self.grid_step / 2

    @property
    def verdict(self) -> str:
        undefined = [s for s, o in self.optima.items() if math.isnan(o.log2_lr)]
        if undefined:
            return f"undefined: every run diverged at {self.axis} {_join(undefined)}"
        if self.drift_interval is None:
            verdict = _no_interval(self.seeds)
        else:
            verdict = "within noise" if self.drift_interval[0] <= self.tolerance else "drifts"
        edges = [s for s, o in self.optima.items() if o.at_edge]
        return f"{verdict}; at grid edge: {self.axis} {_join(edges)}" if edges else verdict

    @property
    def seeds_for_one_step(self) -> int | None:
        """Seeds at which the drift interval would be narrower than one grid step (1/sqrt(n) scaling)."""
        if self.drift_interval is None:
            return None
        low, high = self.drift_interval
        return seeds_for_width(self.seeds, high - low, self.grid_step)

    def to_dict(self) -> dict:
        """Plain JSON (NaN and infinities as null)."""
        scales = {str(s): {"optimum_log2": o.log2_lr, "best_lr": o.lr, "interval": o.interval, "at_edge": o.at_edge,
                           "best_loss": o.best_loss, "divergences": o.divergences, "seeds": o.seeds,
                           "regret": self.regret[s]}
                  for s, o in self.optima.items()}
        return _json_safe({"axis": self.axis, "seeds": self.seeds, "grid_step": self.grid_step,
                           "tolerance": self.tolerance, "scales": scales, "drift_log2": self.drift,
                           "drift_interval": self.drift_interval, "verdict": self.verdict,
                           "seeds_for_one_step": self.seeds_for_one_step, "divergences": self.divergences})


def _no_interval(seeds: int) -> str:
    return "1 seed: no interval" if seeds == 1 else "no interval"


def _join(scales: Iterable) -> str:
    return ", ".join(map(str, scales))


def _json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def curves(runs: Iterable[Run], parametrization: str, axis: str = "width") -> dict[int, Curve]:
    """Each scale's grid with every seed's score, from the runs of one parametrization."""
    points: dict[int, dict[float, dict[int, float]]] = {}
    for r in runs:
        if r.parametrization == parametrization:
            points.setdefault(getattr(r, axis), {}).setdefault(r.lr, {})[r.seed] = r.score
    if not points:
        raise ValueError(f"no runs with parametrization={parametrization!r}")
    return {scale: Curve(tuple(math.log2(lr) for lr in sorted(grid)), tuple(grid[lr] for lr in sorted(grid)))
            for scale, grid in sorted(points.items())}


def analyse(runs: Iterable[Run], parametrization: str, axis: str = "width", *, resamples: int = RESAMPLES,
            seed: int = 0) -> Transfer:
    """Optimum per scale and the drift, each with a bootstrap interval over seeds; the smallest scale is the base."""
    by_scale = curves(runs, parametrization, axis)
    seeds = len({label for c in by_scale.values() for label in c.seeds})
    replicates = bootstrap_optima(by_scale, resamples, seed) if seeds > 1 else []
    optima = {s: _optimum(c, [r[s] for r in replicates]) for s, c in by_scale.items()}
    steps = [b - a for c in by_scale.values() for a, b in zip(c.log2_lrs, c.log2_lrs[1:])]
    return Transfer(parametrization, axis, optima, spread({s: o.log2_lr for s, o in optima.items()}),
                    interval([spread(r) for r in replicates]), _regret(by_scale), seeds, min(steps, default=0.0))


def _optimum(curve: Curve, replicates: list[float]) -> Optimum:
    fit = curve.fit()
    return Optimum(fit.log2_lr, interval(replicates), fit.at_edge, min(curve.medians()), curve.divergences,
                   len(curve.seeds))


def _regret(by_scale: dict[int, Curve]) -> dict[int, float]:
    """Per scale: the median loss at the base scale's best grid LR minus the best median loss there."""
    base = by_scale[min(by_scale)]
    best = base.fit().best_index
    base_lr = None if best is None else base.log2_lrs[best]
    regret = {}
    for scale, curve in by_scale.items():
        medians = dict(zip(curve.log2_lrs, curve.medians()))
        regret[scale] = medians.get(base_lr, math.inf) - min(medians.values())
    return regret


def transfer_table(transfers: Sequence[Transfer], axis: str = "width") -> str:
    """A plain-text table: the optimum per scale and the drift with their intervals, divergences, worst regret."""
    scales = sorted({s for t in transfers for s in t.optima})
    head = (["param", "seeds"] + [f"{axis} {s}" for s in scales]
            + ["drift (octaves)", "diverged", "max regret", "verdict"])
    rows = [head] + [[t.parametrization, str(t.seeds)] + [_optimum_cell(t.optima.get(s)) for s in scales]
                     + [_with_interval(t.drift, t.drift_interval, 2), str(t.divergences), _max_regret(t), t.verdict]
                     for t in transfers]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines + _table_notes(transfers))


def _optimum_cell(o: Optimum | None) -> str:
    if o is None:
        return "-"
    if math.isnan(o.log2_lr):
        return "all diverged"
    return _with_interval(o.log2_lr, o.interval, 1) + (" edge" if o.at_edge else "")


def _with_interval(value: float, bounds: tuple[float, float] | None, digits: int) -> str:
    text = f"{value:.{digits}f}"
    return text if bounds is None else f"{text} [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def _max_regret(t: Transfer) -> str:
    return f"{max((r for r in t.regret.values() if not math.isnan(r)), default=math.nan):.4f}"


def _table_notes(transfers: Sequence[Transfer]) -> list[str]:
    """What the numbers are, and how many seeds would narrow each drift interval below one grid step."""
    step = min(t.grid_step for t in transfers)
    notes = ["optimum: log2 LR, vertex of the parabola through the median loss over seeds at the best grid LR and "
             "its neighbours (edge: best at the end of the grid, not fitted)"]
    if any(t.drift_interval for t in transfers):
        notes.append(f"[{LEVEL:.0%} bootstrap interval over seeds]; within noise: the drift interval starts at or "
                     f"below {step / 2:g} octave (half a grid step)")
    proposals = [f"{t.parametrization} {t.seeds_for_one_step} (now {t.seeds})" if t.seeds_for_one_step > t.seeds
                 else f"{t.parametrization} already at {t.seeds}" for t in transfers if t.seeds_for_one_step]
    if proposals:
        notes.append(f"seeds for a drift interval narrower than one grid step ({_plural(step, 'octave')}, "
                     f"from width ~ 1/sqrt(seeds)): {', '.join(proposals)}")
    return notes


def _plural(count: float, noun: str) -> str:
    return f"{count:g} {noun}" + ("" if count == 1 else "s")


def plot_sweep(runs: Sequence[Run], path: str | Path, axis: str = "width", title: str = "",
               transfers: Sequence[Transfer] | None = None) -> Path:
    """Loss vs LR, one panel per parametrization, one curve per width (TP5 Figure 1), each optimum with its interval.

    Points are the median over seeds with interquartile bars; a diamond marks each scale's optimum at the
    best median loss, its horizontal bar the bootstrap interval. Pass ``transfers`` to reuse an analysis.
    """
    plt = pyplot()
    params = sorted({r.parametrization for r in runs}, key=lambda p: (p != "sp", p))
    found = {t.parametrization: t for t in transfers or ()}
    fig, axes = plt.subplots(1, len(params), figsize=(5 * len(params), 4), sharey=True, squeeze=False)
    finite = [r.score for r in runs if math.isfinite(r.score)]
    for ax, p in zip(axes[0], params):
        transfer = found.get(p) or analyse(runs, p, axis=axis)
        for scale, curve in curves(runs, p, axis).items():
            line = _plot_curve(ax, curve, f"{axis} {scale}")
            _plot_optimum(ax, transfer.optima[scale], line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate")
        drift = _with_interval(transfer.drift, transfer.drift_interval, 2)
        ax.set_title(f"{p}: drift {drift} octaves\n{transfer.verdict}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("validation loss")
    fig.suptitle(f"{title + ': ' if title else ''}median over seeds with interquartile bars; diamond: each "
                 f"optimum with its {LEVEL:.0%} bootstrap interval", fontsize=9)
    if finite:
        low = min(finite)
        axes[0][0].set_ylim(low * 0.95, min(max(finite), low * 3))
    return save(fig, path)


def _plot_curve(ax, curve: Curve, label: str):
    """Median over seeds per grid LR with interquartile bars; +inf (diverged) points are left out."""
    lrs = [2**x for x in curve.log2_lrs]
    quartiles = [[quantile(list(point.values()), q) for q in (0.25, 0.5, 0.75)] for point in curve.scores]
    low, mid, high = ([v if math.isfinite(v) else math.nan for v in column] for column in zip(*quartiles))
    bars = [[m - lo for m, lo in zip(mid, low)], [hi - m for m, hi in zip(mid, high)]]
    return ax.errorbar(lrs, mid, yerr=bars, marker="o", markersize=3, capsize=2, label=label).lines[0]


def _plot_optimum(ax, optimum: Optimum, color) -> None:
    if math.isnan(optimum.log2_lr):
        return
    low, high = optimum.interval or (optimum.log2_lr, optimum.log2_lr)
    ax.errorbar([optimum.lr], [optimum.best_loss], xerr=[[optimum.lr - 2**low], [2**high - optimum.lr]], fmt="D",
                color=color, markeredgecolor="black", markersize=5, elinewidth=2, capsize=3, zorder=3)
