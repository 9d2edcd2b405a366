"""The best learning rate of a sweep, robust to an outlier seed, and how sure we are of it.

Pure Python, plain data in and out (no torch): ``sweep`` turns its runs into one ``Curve`` per scale.

* Per grid LR the loss is the **median over seeds**. A diverged run scores +inf: it ranks below
  every finished run and is never averaged in, so a minority of blow-ups leaves the median alone,
  and a point where half the seeds or more diverged is +inf and never the optimum.
* The **optimum** is the vertex of the parabola in log2(LR) through the best grid point and its two
  neighbours. The best point is the lowest of the three, so the vertex lies between the neighbours
  and is never extrapolated. A best point at the end of the grid is reported there and flagged;
  next to a +inf neighbour it stays on its grid point.
* The **interval** is a percentile bootstrap over seeds: a seed is resampled whole, with its runs at
  every LR and every scale (one seed fixes the batch order at every width), and the optimum is found
  again on each resample. It uses its own ``random.Random(seed)``: the same runs give the same interval.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

LEVEL = 0.95  # two-sided coverage of the bootstrap intervals
RESAMPLES = 2000  # enough for stable 2.5% and 97.5% percentiles, and fast for small grids


@dataclass(frozen=True)
class Fit:
    """Where one median loss curve is lowest: log2 LR (NaN when every point is +inf) and the grid point."""

    log2_lr: float
    best_index: int | None
    at_edge: bool


@dataclass(frozen=True)
class Curve:
    """One scale of a sweep: the grid in log2 LR (ascending) and, per grid point, each seed's score."""

    log2_lrs: tuple[float, ...]
    scores: tuple[Mapping[Hashable, float], ...]  # per grid point: seed -> score, +inf when it diverged

    @property
    def seeds(self) -> list:
        return sorted({s for point in self.scores for s in point})

    @property
    def divergences(self) -> int:
        return sum(math.isinf(score) for point in self.scores for score in point.values())

    def medians(self, draw: Sequence | None = None) -> list[float]:
        """Median score per grid point over the drawn seeds (a seed drawn twice counts twice)."""
        if draw is None:
            return [median(list(point.values())) for point in self.scores]
        return [median([point[s] for s in draw if s in point]) for point in self.scores]

    def fit(self, draw: Sequence | None = None) -> Fit:
        return fit_optimum(self.log2_lrs, self.medians(draw))


def median(values: list[float]) -> float:
    """The median; +inf for no values (a grid point with no finished run)."""
    return quantile(values, 0.5) if values else math.inf


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of values (+inf allowed: it stays +inf, never NaN)."""
    values = sorted(values)
    pos = q * (len(values) - 1)
    low, high = values[math.floor(pos)], values[math.ceil(pos)]
    return low if low == high else low + (high - low) * (pos - math.floor(pos))


def vertex(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The vertex of the parabola through three points; the middle x where they do not bend upward."""
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    if not (math.isfinite(y0) and math.isfinite(y2)):
        return x1
    if (y2 - y1) / (x2 - x1) - (y1 - y0) / (x1 - x0) <= 0:  # flat or opening downward
        return x1
    left, right = (x1 - x0) * (y1 - y2), (x1 - x2) * (y1 - y0)
    return x1 - ((x1 - x0) * left - (x1 - x2) * right) / (2 * (left - right))


def fit_optimum(log2_lrs: Sequence[float], losses: Sequence[float]) -> Fit:
    """The best grid point refined by a parabola through it and its neighbours (module docstring)."""
    finite = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
    if not finite:
        return Fit(math.nan, None, False)
    best = min(finite, key=lambda i: losses[i])
    if best in (0, len(losses) - 1):
        return Fit(log2_lrs[best], best, True)
    return Fit(vertex(log2_lrs[best - 1 : best + 2], losses[best - 1 : best + 2]), best, False)


def bootstrap_optima(curves: Mapping[Hashable, Curve], resamples: int = RESAMPLES,
                     seed: int = 0) -> list[dict[Hashable, float]]:
    """The optimum of every scale on each resample of the seeds (drawn once per resample for all scales)."""
    rng = random.Random(seed)
    labels = sorted({s for curve in curves.values() for s in curve.seeds})
    draws = (rng.choices(labels, k=len(labels)) for _ in range(resamples))
    return [{scale: curve.fit(draw).log2_lr for scale, curve in curves.items()} for draw in draws]


def interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float] | None:
    """The central percentile interval of the finite values; None when there are none."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    tail = (1 - level) / 2
    return quantile(finite, tail), quantile(finite, 1 - tail)


def spread(optima: Mapping[Hashable, float]) -> float:
    """Max minus min of the optima (the drift, in octaves); NaN when one of them is undefined."""
    values = list(optima.values())
    if any(math.isnan(v) for v in values):
        return math.nan
    return max(values) - min(values)


def seeds_for_width(seeds: int, width: float, target: float) -> int:
    """Seeds at which an interval now ``width`` wide at ``seeds`` seeds narrows to ``target`` (width ~ 1/sqrt(n))."""
    if width <= target:
        return seeds
    return math.ceil(seeds * (width / target) ** 2)
