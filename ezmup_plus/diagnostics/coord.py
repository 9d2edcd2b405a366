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
from ..build import MupFactory, find_plan
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
class ReadoutTerms:
    """A readout's change in output after the last step, split (RMS of each): its update on its initial input
    (dW.x0, which muP keeps at order 1 through the readout's own init and LR), its initial weight on its input's
    change (W0.dx, as large as the readout starts) and the product of the two changes (dW.dx)."""

    module: str
    width: int
    dw_x0: float
    w0_dx: float
    dw_dx: float


@dataclass(frozen=True)
class CoordCheck:
    rows: tuple[CoordRow, ...]
    tolerance: float
    readout: tuple[ReadoutTerms, ...] = ()  # the muP readouts' change split, per width

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
        return "\n".join(lines + [hint for hint in map(self._readout_hint, self.modules) if hint])

    def _readout_hint(self, module: str) -> str:
        """Why a failing readout fails, where its change is led by its initial weight rather than its update."""
        terms = sorted((t for t in self.readout if t.module == module), key=lambda t: t.width)
        if not terms or self.passed(module) or terms[0].w0_dx <= terms[0].dw_x0:
            return ""
        t = terms[0]
        start = sorted((r.width, r.rms) for r in self.rows if r.module == module and r.step == 0)
        return (f"{module}: its change is led by W0.dx (its initial weight times its input's change), {t.w0_dx:.3g} "
                f"against its own update dW.x0 {t.dw_x0:.3g} at width {t.width}: the readout starts large (output "
                f"RMS {start[0][1]:.3g} at init at width {start[0][0]}, {start[-1][1]:.3g} at {start[-1][0]}, as muP's "
                "readout init shrinks it), so each width starts from another function. Start it at zero "
                "(zero_init=['readout']) or small (hparams init_output; init_input for a readout tied to the "
                "embedding), as Tensor Programs V advises")

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
    build, moves one seed's slope by a few tenths either way. For a muP factory each watched readout's change
    is also split (``CoordCheck.readout``), and a failing readout led by W0.dx is named with the way out.
    """
    if len(widths) < 2:
        raise ValueError(f"widths={list(widths)}: the slope needs at least two widths")
    x, y = data
    rows, readout = [], []
    for width in widths:
        runs = [_run(factory, width, optimizer, lr, s, x, y, loss_fn, steps, modules) for s in range(seed, seed + seeds)]
        for (module, step), _ in runs[0][0].items():
            rms, delta = (sum(r[module, step][i] for r, _ in runs) / seeds for i in (0, 1))
            rows.append(CoordRow(module, width, step, rms, delta))
        for module in runs[0][1]:
            readout.append(ReadoutTerms(module, width, *(sum(t[module][i] for _, t in runs) / seeds for i in range(3))))
    return CoordCheck(tuple(rows), tolerance, tuple(readout))


def _run(factory, width, optimizer, lr, seed, x, y, loss_fn, steps, modules) -> tuple[dict, dict]:
    """(module, step) -> (RMS of its output, RMS of its change since init), and readout -> (dW.x0, W0.dx,
    dW.dx) after the last step, for one seeded build."""
    model, opt = build_and_optimizer(factory, width, optimizer, lr, seed)
    watched = [(n, m) for n, m in model.named_modules()
               if (modules(n, m) if modules else any(True for _ in m.parameters(recurse=False)))]
    readout_names = _readouts(model)
    readouts = [(n, m) for n, m in watched if n in readout_names]
    weights0 = {n: m.weight.detach().float().clone() for n, m in readouts}
    init, inputs0 = _outputs(model, watched, x, readouts)
    out, now, inputs = {}, init, inputs0
    for step in range(steps + 1):
        if step:
            now, inputs = _outputs(model, watched, x, readouts)
        out.update({(n, step): (_rms(now[n]), _rms(now[n] - init[n])) for n, _ in watched if n in init})
        if step < steps:
            opt.zero_grad()
            loss_fn(_call(model, x), y).backward()
            opt.step()
    terms = {n: _split(m, inputs0[n], inputs[n], weights0[n], now[n]) for n, m in readouts if n in inputs}
    return out, terms


def _readouts(model: nn.Module) -> set[str]:
    """The muP plan's readouts: Linear modules whose weight is output-like or an embedding's (tied)."""
    plan = find_plan(model)
    if plan is None:
        return set()
    output = {id(p) for n, p in model.named_parameters() if n in plan.tensors and plan.tensors[n].role == "output"}
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m.weight) in output | tied}


def _split(module: nn.Linear, x0: torch.Tensor, x1: torch.Tensor, w0: torch.Tensor,
           y1: torch.Tensor) -> tuple[float, float, float]:
    """(dW.x0, W0.dx, dW.dx) of a Linear whose output is c * x W^T + b, with the multiplier c (a readout's 1/m_w,
    on its input or its output) read from its output after the steps (a zero-init readout has none at init)."""
    linear = nn.functional.linear
    w1 = module.weight.detach().float()
    plain = linear(x1, w1)
    bias = 0.0 if module.bias is None else module.bias.detach().float()
    c = float(((y1 - bias) * plain).sum() / plain.square().sum().clamp_min(1e-30))
    dx, dw = x1 - x0, w1 - w0
    return _rms(c * linear(x0, dw)), _rms(c * linear(dx, w0)), _rms(c * linear(dx, dw))


def build_and_optimizer(factory: Callable[..., nn.Module], width: int, optimizer: str, lr: float,
                        seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model at ``width`` from a seed, with the muP optimizer for a wrapped factory, the plain one otherwise."""
    torch.manual_seed(seed)
    model = factory(width=width)
    if isinstance(factory, MupFactory):
        return model, get_mup_optimizer(model, lr=lr, optimizer=optimizer)
    return model, resolve_optimizer(optimizer)[0](model.parameters(), lr=lr)


def _outputs(model: nn.Module, watched: list[tuple[str, nn.Module]], x: torch.Tensor,
             inputs_of: Sequence[tuple[str, nn.Module]] = ()) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The first output of each watched module on ``x`` (its first call), and the input of each of ``inputs_of``.

    Every observation draws from the same seed, so dropout masks are the same at init and after the steps and
    a module's change is the change of its function, not of its mask; the caller's RNG is left as it was."""
    captured: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}
    reading = {n for n, _ in inputs_of}

    def hook(name):
        def record(module, args, out) -> None:  # returns None: a returned value would replace the module's output
            if name not in captured and name in reading:
                inputs[name] = _first_tensor(args)
            captured.setdefault(name, _first_tensor(out))
        return record

    hooks = [m.register_forward_hook(hook(n)) for n, m in watched]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            _call(model, x)
    finally:
        for h in hooks:
            h.remove()
    return captured, inputs


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
