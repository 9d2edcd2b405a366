"""The spectral check (Yang, Simon, Bernstein 2023): after a short run, do weights and features move
by amounts that do not depend on the width?

Per weight matrix the relative change in spectral norm ||W - W0||_2 / ||W0||_2, per module the relative
feature change ||h - h0|| / ||h0||, and for the readout the alignment ||dW h|| / (||dW||_2 ||h||) of its
update with its input. Under muP the first two stay roughly flat in width; under SP with Adam the
hidden weights' relative change grows like the width. The readout's own feature change is reported
but not judged: its output at init shrinks with width under muP, so the ratio grows while the change
itself is flat (the coordinate check covers it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .figures import pyplot, save
from .coord import DEFAULT_TOLERANCE, CoordCheck, CoordRow, _outputs, build_and_optimizer


@dataclass(frozen=True)
class SpectralCheck:
    """Rows per quantity ("weight", "feature", "alignment"); verdicts from log-log slopes against width."""

    rows: tuple[tuple[str, str, int, float], ...]  # (quantity, name, width, value)
    readout: str
    tolerance: float = DEFAULT_TOLERANCE

    def slope(self, quantity: str, name: str) -> float:
        rows = tuple(CoordRow(n, w, 1, v, v) for q, n, w, v in self.rows if q == quantity and n == name)
        return CoordCheck(rows, self.tolerance).slope(name, 1)

    def judged(self) -> list[tuple[str, str]]:
        names = dict.fromkeys((q, n) for q, n, _, _ in self.rows if q != "alignment")
        return [(q, n) for q, n in names if not (q == "feature" and n == self.readout)]

    @property
    def ok(self) -> bool:
        return all(abs(self.slope(q, n)) <= self.tolerance for q, n in self.judged())

    def __str__(self) -> str:
        lines = [f"spectral check: |slope| of log2 value vs log2 width must be <= {self.tolerance}"]
        for q, n in self.judged():
            verdict = "pass" if abs(self.slope(q, n)) <= self.tolerance else "FAIL"
            lines.append(f"{q:8s} {n}: slope {self.slope(q, n):+.2f}  {verdict}")
        align = [f"{w}: {v:.3f}" for q, _, w, v in self.rows if q == "alignment"]
        lines.append(f"readout alignment ||dW h||/(||dW||_2 ||h||) by width: {', '.join(align)}")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """One panel per quantity, value against width, log-log."""
        plt = pyplot()
        quantities = list(dict.fromkeys(q for q, *_ in self.rows))
        fig, axes = plt.subplots(1, len(quantities), figsize=(4 * len(quantities), 3.2), squeeze=False)
        for ax, quantity in zip(axes[0], quantities):
            for name in dict.fromkeys(n for q, n, _, _ in self.rows if q == quantity):
                pts = sorted((w, v) for q, n, w, v in self.rows if q == quantity and n == name)
                ax.plot(*zip(*pts), marker=".", label=name)
            ax.set(xscale="log", yscale="log", xlabel="width", title=quantity)
            ax.legend(fontsize=6)
        return save(fig, path)


def spectral_check(
    factory: Callable[..., nn.Module],
    widths: Sequence[int],
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.mse_loss,
    steps: int = 10,
    optimizer: str = "adam",
    lr: float = 1e-2,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
) -> SpectralCheck:
    """Train ``factory(width=w)`` for ``steps`` on one batch; measure how far weights and features moved."""
    x, y = data
    rows: list[tuple[str, str, int, float]] = []
    readout = ""
    for width in widths:
        model, opt = build_and_optimizer(factory, width, optimizer, lr, seed)
        watched = [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
        readout_name, readout_module = watched[-1]
        readout = readout_name
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        h0 = _outputs(model, watched, x)[0]
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        h1 = _outputs(model, watched, x)[0]
        for name, p in model.named_parameters():
            if p.dim() >= 2 and start[name].norm() > 0:
                w0, dw = _matrix(start[name]), _matrix(p.detach() - start[name])
                rows.append(("weight", name, width, float(_spectral(dw) / _spectral(w0))))
        rows += [("feature", n, width, float((h1[n] - h0[n]).norm() / h0[n].norm())) for n, _ in watched]
        features = _readout_input(model, readout_module, x)
        dw = readout_module.weight.detach() - start[f"{readout_name}.weight"]
        rows.append(("alignment", readout_name, width,
                     float((features @ dw.T).norm() / (_spectral(dw) * features.norm()))))
    return SpectralCheck(tuple(rows), readout, tolerance)


def _matrix(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).float()


def _spectral(m: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(m, ord=2)


def _readout_input(model: nn.Module, readout: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = readout.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().float()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1])
