"""Weight decay across training horizons: the number of steps and the batch size of the target run.

Why. AdamW's step ``w <- (1 - lr*wd) w - lr*u`` makes the weights an exponential moving average of
the recent updates ``-u/wd``, with timescale ``tau_iter = 1/(lr*wd)`` iterations (Wang & Aitchison 2024,
"How to set AdamW's weight decay as you scale model and dataset size", arXiv:2405.13698). They find the
optimal timescale, counted in epochs, roughly constant as model and data set grow, so the optimal weight
decay falls as the data set grows. In single-pass training (every step a fresh batch, the LLM case) the
run is one epoch, and ``tau_iter / T = B / (lr*wd*D)`` with ``D = T*B`` is the "AdamW timescale" of
Bergsma et al. 2025 ("Power Lines", arXiv:2505.13738), who confirm that the optimal ``wd`` grows linearly
with ``B`` at fixed model and data size (and find that the optimal timescale itself drifts as a power law in
tokens per parameter, so the rule is a first-order one). Keeping the timescale a fixed fraction of the run,
``lr' * wd' * T' = lr * wd * T``:

    wd' = wd * (T / T') * (lr / lr')          (mode "ema"; mode "constant": wd' = wd)

and a batch size changed at the same number of samples changes the steps, ``T' = T * B / B'``.

Which ``wd``. ``get_mup_optimizer(wd_mode="independent")`` (the default) gives each group the LR
``lr*m`` and the weight decay ``wd/m`` for the tensor's LR multiplier ``m``; AdamW multiplies the weights
by ``1 - group_lr*group_wd = 1 - lr*wd``: the per-step decay is the global LR (after any schedule) times
``wd``, the same for every tensor, so the timescale is ``1/(lr*wd)`` and the rule acts on
``optimizer.weight_decay`` / ``mup.hparams.weight_decay`` with the LR ratio in it. With
``wd_mode="coupled"`` the decay is ``lr*m*wd*k`` with per-tensor constants that cancel in the ratio: the
same rule. A schedule of the same shape scales ``sum_t lr_t`` by ``T'/T``: the same rule again.

Caveats. The EMA reading is for decoupled decay (AdamW, Muon, Lion: ``p *= 1 - lr*wd``), not for an L2
term added to the gradient (``torch.optim.Adam``'s or SGD's ``weight_decay``). And the two readings part
for a fixed data set trained for more epochs: Wang & Aitchison's timescale in *epochs* is kept by the
constant rule there, the fraction-of-the-run one by ``ema``. ``benchmarks/wd_horizon.py`` measures which
optimum the 4x run has on this machine; its result chose ``DEFAULT_MODE`` (see the README).
"""

from __future__ import annotations

import dataclasses
import math

MODES = ("ema", "constant")
# benchmarks/wd_horizon.py (digits, multi-epoch): at 4x steps the best wd moved +0.10 [-0.15, 1.77] octaves, not the
# rule's -2, and the rule's wd lost 0.015 in validation loss; the single-pass case was not measurable on CPU
DEFAULT_MODE = "constant"


def horizon_steps(steps: float, batch_size: float | None = None, target_batch_size: float | None = None) -> float:
    """The target's optimizer steps for the same number of samples at another batch size: ``T * B / B'``."""
    _positive("steps", steps)
    if batch_size is None or target_batch_size is None:
        return float(steps)
    _positive("batch_size", batch_size)
    _positive("target_batch_size", target_batch_size)
    return steps * batch_size / target_batch_size


def horizon_weight_decay(
    weight_decay: float,
    *,
    steps: float,
    target_steps: float | None = None,
    batch_size: float | None = None,
    target_batch_size: float | None = None,
    lr: float = 1.0,
    target_lr: float | None = None,
    mode: str = "ema",
) -> float:
    """The target run's weight decay under ``mode`` (module docstring): ``"ema"`` keeps ``lr * wd * steps``,
    ``"constant"`` keeps ``wd``.

    ``target_steps`` defaults to ``horizon_steps(steps, batch_size, target_batch_size)`` (the same samples
    at the target's batch size; the same steps without batch sizes); given, the rule counts steps only.
    ``target_lr`` defaults to ``lr`` (muP transfers the LR unchanged).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not a weight-decay horizon rule; choose one of {MODES}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay={weight_decay!r} must be a finite number >= 0")
    for name, value in (("lr", lr), ("target_lr", target_lr), ("target_steps", target_steps)):
        if value is not None:
            _positive(name, value)
    if target_steps is None:
        target_steps = horizon_steps(steps, batch_size, target_batch_size)
    else:
        horizon_steps(steps, batch_size, target_batch_size)  # the same checks on what was given
    if mode == "constant":
        return float(weight_decay)
    return weight_decay * (steps / target_steps) * (lr / (lr if target_lr is None else target_lr))


def describe(mode: str, weight_decay: float, target_weight_decay: float) -> str:
    """One line naming the rule and the weight decay it gives."""
    rule = "ema (lr*wd*steps kept)" if mode == "ema" else "constant (wd kept)"
    return f"weight decay {target_weight_decay:.6g} (rule {rule}; proxy's {weight_decay:.6g})"


def horizon_config(cfg, *, steps: int | None = None, batch_size: int | None = None, mode: str = DEFAULT_MODE):
    """(the target's config, one line saying what was applied) for ``ezmup-plus transfer``.

    The proxy's horizon is the config's ``train.steps`` and ``train.batch_size``; the target's is ``steps`` and
    ``batch_size`` (None: the config's; a batch size alone keeps the number of samples, ``T' = T*B/B'``). The LR
    is transferred unchanged, so the rule's LR ratio is 1. The weight decay is ``optimizer.weight_decay`` or
    ``mup.hparams.weight_decay`` (whichever the config sets; 0 when neither), replaced where it was set.
    """
    train = cfg.train
    target_batch = train.batch_size if batch_size is None else batch_size
    target_steps = steps if steps is not None else horizon_steps(train.steps, train.batch_size, target_batch)
    if steps is None and target_steps != int(target_steps):
        raise ValueError(f"--batch-size {target_batch} gives {train.steps}*{train.batch_size}/{target_batch} = "
                         f"{target_steps:g} steps for the same samples: give --steps too")
    target_steps = int(target_steps)
    wd = next((v for v in (cfg.optimizer.weight_decay, cfg.mup.hparams.weight_decay) if v is not None), 0.0)
    new_wd = horizon_weight_decay(wd, steps=train.steps, target_steps=target_steps, mode=mode)
    optimizer = cfg.optimizer if cfg.optimizer.weight_decay is None else \
        dataclasses.replace(cfg.optimizer, weight_decay=new_wd)
    hparams = cfg.mup.hparams if cfg.mup.hparams.weight_decay is None else \
        dataclasses.replace(cfg.mup.hparams, weight_decay=new_wd)
    target = dataclasses.replace(cfg, optimizer=optimizer, mup=dataclasses.replace(cfg.mup, hparams=hparams),
                                 train=dataclasses.replace(train, steps=target_steps, batch_size=target_batch))
    return target, (f"steps {train.steps} -> {target_steps}, batch {train.batch_size} -> {target_batch}, "
                    + describe(mode, wd, new_wd))


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r} must be a positive number")
