"""One small training loop shared by the sweeps, the coordinate check, the demo and the benchmarks."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class RunResult:
    """Losses of one run; ``diverged`` when the loss went non-finite or ended above where it started."""

    initial_loss: float
    train_losses: tuple[float, ...]
    val_loss: float

    @property
    def diverged(self) -> bool:
        last = self.train_losses[-1] if self.train_losses else self.initial_loss
        return not (math.isfinite(last) and math.isfinite(self.val_loss)) or last > self.initial_loss

    @property
    def min_train_loss(self) -> float:
        return min(self.train_losses, default=math.inf)


def random_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> Iterator[Batch]:
    """Endless shuffled minibatches, reproducible from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            yield x[idx], y[idx]


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    val: Batch,
    on_eval: Callable[[int, float], None] | None = None,
    eval_every: int = 0,
) -> RunResult:
    """Train for ``steps`` and stop early once the loss is non-finite (that run has diverged).

    ``on_eval(step, val_loss)``, every ``eval_every`` steps before the last, lets a tuner prune a bad run early:
    whatever it raises ends the run and propagates.
    """
    def evaluate() -> float:
        model.eval()
        with torch.no_grad():
            loss = float(loss_fn(model(val[0]), val[1]))
        model.train()
        return loss

    initial = evaluate()
    losses = []
    for step, (x, y) in zip(range(1, steps + 1), batches):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
        if on_eval is not None and step % eval_every == 0 and step < steps:
            on_eval(step, evaluate())
    return RunResult(initial, tuple(losses), evaluate())
