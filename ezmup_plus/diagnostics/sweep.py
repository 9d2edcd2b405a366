"""Learning-rate sweeps across widths (and depths): the evidence that hyperparameters transfer.

A sweep is a grid of runs; each finished run is one JSON line, so an interrupted sweep resumes
where it stopped (a line cut short by a kill mid-write is dropped, and that run done again). The
analysis (best LR per width, drift, divergences, regret) works on the rows alone, so it is the same
for a fresh sweep and for a file read back.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm.auto import tqdm

from ..atomic import atomic_write
from .figures import pyplot, save
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
class Transfer:
    """Best LR per width (or depth) for one parametrization, and how well the base one transfers."""

    parametrization: str
    best_lr: dict[int, float]  # scale (width or depth) -> best LR (mean over seeds)
    best_loss: dict[int, float]
    divergences: int
    regret: dict[int, float]  # scale -> loss at the base scale's best LR minus the best loss there

    @property
    def drift(self) -> float:
        """Spread of the best log2 LR across scales: 0 is perfect transfer, 1 is one octave."""
        logs = [math.log2(lr) for lr in self.best_lr.values()]
        return max(logs) - min(logs)


def analyse(runs: Iterable[Run], parametrization: str, axis: str = "width") -> Transfer:
    """Best LR per scale from the mean score over seeds; the smallest scale is the base."""
    rows = [r for r in runs if r.parametrization == parametrization]
    if not rows:
        raise ValueError(f"no runs with parametrization={parametrization!r}")
    mean: dict[int, dict[float, float]] = {}
    for (scale, lr), group in itertools.groupby(
        sorted(rows, key=lambda r: (getattr(r, axis), r.lr)), key=lambda r: (getattr(r, axis), r.lr)
    ):
        mean.setdefault(scale, {})[lr] = statistics.fmean(r.score for r in group)
    best_lr = {s: min(curve, key=curve.get) for s, curve in mean.items()}
    base = min(mean)
    return Transfer(
        parametrization,
        best_lr,
        {s: mean[s][best_lr[s]] for s in mean},
        sum(r.diverged for r in rows),
        {s: mean[s].get(best_lr[base], math.inf) - mean[s][best_lr[s]] for s in mean},
    )


def transfer_table(transfers: Sequence[Transfer], axis: str = "width") -> str:
    """A plain-text table: best LR per scale, drift in octaves, divergences, worst regret."""
    scales = sorted({s for t in transfers for s in t.best_lr})
    head = ["param"] + [f"{axis} {s}" for s in scales] + ["drift (log2)", "diverged", "max regret"]
    rows = [head]
    for t in transfers:
        rows.append([t.parametrization] + [f"{t.best_lr[s]:.3g}" if s in t.best_lr else "-" for s in scales]
                    + [f"{t.drift:.2f}", str(t.divergences), f"{max(t.regret.values()):.4f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def plot_sweep(runs: Sequence[Run], path: str | Path, axis: str = "width", title: str = "") -> Path:
    """Loss vs LR, one panel per parametrization, one curve per width (TP5 Figure 1)."""
    plt = pyplot()
    params = sorted({r.parametrization for r in runs}, key=lambda p: (p != "sp", p))
    fig, axes = plt.subplots(1, len(params), figsize=(5 * len(params), 4), sharey=True, squeeze=False)
    finite = [r.score for r in runs if math.isfinite(r.score)]
    for ax, p in zip(axes[0], params):
        rows = [r for r in runs if r.parametrization == p]
        for scale in sorted({getattr(r, axis) for r in rows}):
            curve: dict[float, list[float]] = {}
            for r in rows:
                if getattr(r, axis) == scale:
                    curve.setdefault(r.lr, []).append(r.score)
            lrs = sorted(curve)
            ax.plot(lrs, [statistics.fmean(curve[lr]) for lr in lrs], marker="o", label=f"{axis} {scale}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate")
        ax.set_title(f"{p} {title}".strip())
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("validation loss")
    if finite:
        low = min(finite)
        axes[0][0].set_ylim(low * 0.95, min(max(finite), low * 3))
    return save(fig, path)
