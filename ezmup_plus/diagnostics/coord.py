"""The coordinate check: activation size per module after a few steps, as a function of width.

Under muP every module's output RMS (and its change since init) stays flat in width; under SP the
readout and the hidden features grow. The verdict is the log-log slope against width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .figures import pyplot, save
from ..build import MupFactory
from ..optim import get_mup_optimizer, resolve_optimizer

DEFAULT_TOLERANCE = 0.2  # slope of log2 RMS vs log2 width: a factor 1.74 over 16x width


@dataclass(frozen=True)
class CoordRow:
    module: str
    width: int
    step: int
    rms: float  # RMS of the module's output on a fixed batch
    delta_rms: float  # RMS of its change since init


@dataclass(frozen=True)
class CoordCheck:
    rows: tuple[CoordRow, ...]
    tolerance: float

    def slope(self, module: str, step: int, field: str = "rms") -> float:
        """Least-squares slope of log2(field) against log2(width)."""
        pts = [(math.log2(r.width), math.log2(max(getattr(r, field), 1e-30)))
               for r in self.rows if r.module == module and r.step == step]
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        var = sum((x - mx) ** 2 for x, _ in pts)
        return sum((x - mx) * (y - my) for x, y in pts) / var

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys(r.module for r in self.rows))

    @property
    def steps(self) -> list[int]:
        return sorted({r.step for r in self.rows})

    def spread(self, module: str, field: str = "rms", step: int | None = None) -> float:
        """The largest over the smallest ``field`` across the widths at ``step`` (default: the last): the
        factor by which a module's activations (or, ``delta_rms``, their change since init) move over the widths."""
        step = max(self.steps) if step is None else step
        values = [getattr(r, field) for r in self.rows if r.module == module and r.step == step]
        return max(values) / max(min(values), 1e-30)

    def worst_slope(self, module: str) -> float:
        """The worst slope after init: growth of the activations, or growth or decay of their change.

        Under muP a readout's output at init shrinks with width (that is fine), but every module's
        change since init must neither blow up nor vanish.
        """
        return max(max(self.slope(module, s), abs(self.slope(module, s, "delta_rms"))) for s in self.steps if s > 0)

    def passed(self, module: str) -> bool:
        return self.worst_slope(module) <= self.tolerance

    @property
    def ok(self) -> bool:
        return all(self.passed(m) for m in self.modules)

    def __str__(self) -> str:
        lines = [f"coordinate check: slope of log2 RMS vs log2 width, activations (act) and their change since "
                 f"init (delta); act must not grow and delta must stay within +-{self.tolerance}"]
        width = max(len(m) for m in self.modules)
        for m in self.modules:
            slopes = "  ".join(f"step {s}: act {self.slope(m, s):+.2f} delta {self.slope(m, s, 'delta_rms'):+.2f}"
                               for s in self.steps if s > 0)
            lines.append(f"{m.ljust(width)}  {slopes}  {'pass' if self.passed(m) else 'FAIL'}")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """The classic figure: one panel per step, RMS vs width per module, log-log."""
        plt = pyplot()
        fig, axes = plt.subplots(1, len(self.steps), figsize=(3.2 * len(self.steps), 3), sharey=True, squeeze=False)
        for ax, step in zip(axes[0], self.steps):
            for m in self.modules:
                pts = sorted((r.width, r.rms) for r in self.rows if r.module == m and r.step == step)
                ax.plot(*zip(*pts), marker=".", label=m)
            ax.set(xscale="log", yscale="log", title=f"step {step}", xlabel="width")
        axes[0][0].set_ylabel("activation RMS")
        axes[0][-1].legend(fontsize=6)
        return save(fig, path)


def coord_check(
    factory: Callable[..., nn.Module],
    widths: Sequence[int],
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.mse_loss,
    steps: int = 3,
    optimizer: str = "adam",
    lr: float = 1e-2,
    seed: int = 0,
    seeds: int = 1,
    modules: Callable[[str, nn.Module], bool] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> CoordCheck:
    """Train ``factory(width=w)`` for ``steps`` on one fixed batch and record each module's output RMS.

    ``factory`` is an ``ezp.wrap`` factory (muP) or any ``width -> nn.Module`` (then plain PyTorch
    optimizer, i.e. SP, for comparison). ``modules`` picks which modules to watch (default: every
    module that owns parameters; one whose forward never runs, its weight used functionally as Mamba-2
    uses its ``conv1d``, has no output to watch and is left out). RMS values are averaged over ``seeds`` builds (seeds ``seed``,
    ``seed + 1``, ...): a width-independent random offset, such as a readout bias drawn once per
    build, moves one seed's slope by a few tenths either way.
    """
    if len(widths) < 2:
        raise ValueError(f"widths={list(widths)}: the slope needs at least two widths")
    x, y = data
    rows = []
    for width in widths:
        runs = [_run(factory, width, optimizer, lr, s, x, y, loss_fn, steps, modules) for s in range(seed, seed + seeds)]
        for (module, step), _ in runs[0].items():
            rms, delta = (sum(r[module, step][i] for r in runs) / seeds for i in (0, 1))
            rows.append(CoordRow(module, width, step, rms, delta))
    return CoordCheck(tuple(rows), tolerance)


def _run(factory, width, optimizer, lr, seed, x, y, loss_fn, steps, modules) -> dict[tuple[str, int], tuple]:
    """(module, step) -> (RMS of its output, RMS of its change since init), for one seeded build."""
    model, opt = build_and_optimizer(factory, width, optimizer, lr, seed)
    watched = [(n, m) for n, m in model.named_modules()
               if (modules(n, m) if modules else any(True for _ in m.parameters(recurse=False)))]
    init = _outputs(model, watched, x)
    out = {}
    for step in range(steps + 1):
        now = init if step == 0 else _outputs(model, watched, x)
        out.update({(n, step): (_rms(now[n]), _rms(now[n] - init[n])) for n, _ in watched if n in init})
        if step < steps:
            opt.zero_grad()
            loss_fn(_call(model, x), y).backward()
            opt.step()
    return out


def build_and_optimizer(factory: Callable[..., nn.Module], width: int, optimizer: str, lr: float,
                        seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model at ``width`` from a seed, with the muP optimizer for a wrapped factory, the plain one otherwise."""
    torch.manual_seed(seed)
    model = factory(width=width)
    if isinstance(factory, MupFactory):
        return model, get_mup_optimizer(model, lr=lr, optimizer=optimizer)
    return model, resolve_optimizer(optimizer)[0](model.parameters(), lr=lr)


def _outputs(model: nn.Module, watched: list[tuple[str, nn.Module]], x: torch.Tensor) -> dict[str, torch.Tensor]:
    captured: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args, out) -> None:  # returns None: a returned value would replace the module's output
            captured.setdefault(name, _first_tensor(out))
        return record

    hooks = [m.register_forward_hook(hook(n)) for n, m in watched]
    try:
        with torch.no_grad():
            _call(model, x)
    finally:
        for h in hooks:
            h.remove()
    return captured


def _call(model: nn.Module, x) -> Any:
    """``x`` is the input, or a tuple of positional inputs (an encoder-decoder's ids and decoder ids)."""
    return model(*x) if isinstance(x, tuple) else model(x)


def _first_tensor(out) -> torch.Tensor:
    """Modules such as Hugging Face blocks return tuples; their first element is the hidden state."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().float()


def _rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt())
