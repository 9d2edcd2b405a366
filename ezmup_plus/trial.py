"""What a config trains on and one seeded run of it: the trial that ``sweep``, ``transfer`` and ``tune`` repeat."""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import torch

from .config import Config, ConfigError, build_optimizer
from .data import digits, lm_batches, lm_loss, load_california_housing, load_cifar10, load_shakespeare_chars
from .diagnostics import RunResult, random_batches, train


@dataclasses.dataclass(frozen=True)
class Task:
    """What a config trains on: endless batches, a fixed validation batch and the loss."""

    batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]  # seed -> batches
    val: tuple[torch.Tensor, torch.Tensor]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def task_from(cfg: Config) -> Task:
    d, batch = cfg.data, cfg.train.batch_size
    held = slice(d.val_size)  # the first val_size held-out examples, all of them for None
    if d.augment and d.name != "cifar10":
        raise ConfigError(f"data.augment is for images (data.name: cifar10), not data.name={d.name!r}")
    if d.name == "tinyshakespeare":
        train_ids, val_ids, _ = load_shakespeare_chars(d.path)
        return Task(lambda s: lm_batches(train_ids, d.block_size, batch, s),
                    next(lm_batches(val_ids, d.block_size, d.val_size or 64, 1234)), lm_loss)
    if d.name in ("california_housing", "digits", "synthetic"):
        if d.name == "california_housing":
            x, y, xv, yv = load_california_housing(d.path)
        elif d.name == "digits":
            x, y, xv, yv = digits()
        else:
            x, y, xv, yv = _synthetic(cfg.model.kwargs.get("in_features", 8), cfg.model.kwargs.get("out_features", 1))
        loss = torch.nn.functional.cross_entropy if d.name == "digits" else torch.nn.functional.mse_loss
        return Task(lambda s: random_batches(x, y, batch, s), (xv[held], yv[held]), loss)
    if d.name == "cifar10":
        cifar = load_cifar10(d.path)
        print(cifar.described)
        return Task(lambda s: cifar.batches(batch, s, augment=d.augment), (cifar.x_test[held], cifar.y_test[held]),
                    torch.nn.functional.cross_entropy)
    raise ConfigError(f"data.name={d.name!r} is unknown; choose synthetic, digits, california_housing, "
                      "tinyshakespeare or cifar10")


def _synthetic(n_in: int, n_out: int, n: int = 2048) -> tuple[torch.Tensor, ...]:
    """A fixed random teacher: y = tanh(x A) B, so runs need no data files."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, n_in, generator=g)
    y = torch.tanh(x @ torch.randn(n_in, 32, generator=g)) @ torch.randn(32, n_out, generator=g) / 32**0.5
    cut = n * 3 // 4
    return x[:cut], y[:cut], x[cut:], y[cut:]


def run_trial(factory: Callable[..., torch.nn.Module], cfg: Config, task: Task, width: int, depth: int | None,
              seed: int, on_eval: Callable[[int, float], None] | None = None, eval_every: int = 0) -> RunResult:
    """Build ``factory`` at (width, depth) from ``seed``, train it with ``cfg``'s optimizer for ``train.steps``.

    One function for every caller, so an LR sweep and a tuning trial of the same numbers are the same run.
    """
    torch.manual_seed(seed)
    model = factory(width=width, depth=depth)
    opt = build_optimizer(model, cfg)
    return train(model, opt, task.batches(seed), task.loss, cfg.train.steps, task.val, on_eval, eval_every)
