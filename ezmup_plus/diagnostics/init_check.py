"""The plan checks itself: does every tensor of a built model have the init std its plan prints?

Each tensor whose plan promises a std (init "law") is measured and compared within sampling error;
a zero-init tensor must be zero; a tensor too small to measure, or one rescaled relative to an init
that was not read, is reported as such rather than passed or failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..build import plan_of, planned_module


@dataclass(frozen=True)
class InitRow:
    name: str
    planned: float | None
    measured: float
    tolerance: float  # relative
    verdict: str  # "ok", "FAIL", "too small to measure", "not promised" (relative or kept)


@dataclass(frozen=True)
class InitCheck:
    rows: tuple[InitRow, ...]

    @property
    def ok(self) -> bool:
        return all(r.verdict != "FAIL" for r in self.rows)

    def __str__(self) -> str:
        width = max(len(r.name) for r in self.rows)
        lines = ["init check: measured std against the plan's (relative tolerance: 6 sigma of sampling error + 1%)"]
        for r in self.rows:
            planned = "-" if r.planned is None else f"{r.planned:.4g}"
            lines.append(f"{r.name.ljust(width)}  planned {planned:>9}  measured {r.measured:.4g}  {r.verdict}")
        return "\n".join(lines)


def check_init(model: nn.Module, smallest: int = 8) -> InitCheck:
    """Measure every tensor of a freshly built muP model against its plan (``smallest``: fewer entries than
    this are too few to measure a std)."""
    plan, params = plan_of(model), dict(planned_module(model).named_parameters())
    rows = []
    for t in plan:
        x = params[t.name].detach().float().flatten()
        measured = float(x.std()) if x.numel() > 1 else 0.0
        tolerance = 6 * 0.71 / math.sqrt(max(1, x.numel())) + 0.01
        if t.init == "zero":
            verdict = "ok" if bool((x == 0).all()) else "FAIL"
        elif t.init != "law":
            verdict = "not promised"
        elif x.numel() < smallest:
            verdict = "too small to measure"
        else:
            verdict = "ok" if abs(measured / t.init_std - 1) <= tolerance else "FAIL"
        rows.append(InitRow(t.name, t.init_std if t.init in ("law", "zero") else None, measured, tolerance, verdict))
    return InitCheck(tuple(rows))
