"""``get_mup_optimizer``: a real ``torch.optim`` optimizer whose param groups carry the per-tensor LRs.

Tensors with equal (lr, wd, eps) multipliers share a group, so a transformer gets a handful of
groups, fused/foreach kernels keep working, and LR schedulers (which scale each group's own
initial LR) keep the per-tensor ratios.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import torch
from torch import nn

from .build import find_plan
from .plan import MupPlan

OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], str]] = {
    "adam": (torch.optim.Adam, "adam"),
    "adamw": (torch.optim.AdamW, "adam"),
    "sgd": (torch.optim.SGD, "sgd"),
}
"""Optimizer name -> (class, rules family). Extend with :func:`register_optimizer`."""

WD_MODES = ("independent", "coupled")


def register_optimizer(name: str, cls: type[torch.optim.Optimizer], *, family: str) -> None:
    """Make ``get_mup_optimizer(model, optimizer=name)`` (or ``optimizer=cls``) use ``family``'s rules."""
    from .rules import check_family

    check_family(family)
    OPTIMIZERS[name.lower()] = (cls, family)


def resolve_optimizer(optimizer: str | type[torch.optim.Optimizer]) -> tuple[type[torch.optim.Optimizer], str]:
    """Optimizer class and rules family from a name or a class; unknown ones get a helpful error."""
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key in OPTIMIZERS:
            return OPTIMIZERS[key]
        close = difflib.get_close_matches(key, OPTIMIZERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"optimizer={optimizer!r} is unknown.{hint} Known: {sorted(OPTIMIZERS)}. Add your own with "
            "ezmup_plus.register_optimizer(name, cls, family=...)"
        )
    for cls, family in OPTIMIZERS.values():
        if optimizer is cls:
            return cls, family
    raise ValueError(
        f"optimizer class {getattr(optimizer, '__name__', optimizer)} has no registered muP family; call "
        "ezmup_plus.register_optimizer(name, cls, family=...) first"
    )


def get_mup_optimizer(
    model: nn.Module,
    lr: float,
    optimizer: str | type[torch.optim.Optimizer] = "adamw",
    weight_decay: float = 0.0,
    *,
    width: int | None = None,
    wd_mode: str = "independent",
    eps_mode: str = "scaled",
    **opt_kwargs: Any,
) -> torch.optim.Optimizer:
    """An optimizer with muP per-tensor learning rates, weight decay and eps.

    ``wd_mode="independent"`` keeps the per-step decay lr*wd of every tensor equal to the base
    model's, so weight decay transfers; ``"coupled"`` is PyTorch's lr*wd with the LR multiplier in it.
    ``eps_mode="scaled"`` scales Adam's eps with the gradient size, ``"fixed"`` leaves it alone.
    """
    cls, family = resolve_optimizer(optimizer)
    if wd_mode not in WD_MODES:
        raise ValueError(f"wd_mode={wd_mode!r} is unknown; choose one of {WD_MODES}")
    if eps_mode not in ("scaled", "fixed"):
        raise ValueError(f"eps_mode={eps_mode!r} is unknown; choose 'scaled' or 'fixed'")
    plan = _plan_for(model, width)
    groups = param_groups(model, plan.for_family(family), lr=lr, weight_decay=weight_decay, cls=cls,
                          wd_mode=wd_mode, eps_mode=eps_mode, eps=opt_kwargs.pop("eps", None))
    return cls(groups, lr=lr, weight_decay=weight_decay, **opt_kwargs)


def _plan_for(model: nn.Module, width: int | None) -> MupPlan:
    plan = find_plan(model)
    if width is not None:
        if plan is not None and plan.width != width:
            raise ValueError(f"the model already carries a plan for width {plan.width}; got width={width}")
        if plan is None:
            from .inplace import rescale_in_place

            plan = rescale_in_place(model, width)
    if plan is None:
        raise ValueError(
            f"this {type(model).__name__} carries no muP plan and no width was given: build it with "
            "ezmup_plus.wrap(factory, base_width=...)(width=...), or build it at the sentinel width (47) and pass "
            "width=... here. ezmup_plus never silently falls back to standard parametrization"
        )
    return plan


def param_groups(
    model: nn.Module,
    plan: MupPlan,
    *,
    lr: float,
    weight_decay: float,
    cls: type[torch.optim.Optimizer],
    wd_mode: str = "independent",
    eps_mode: str = "scaled",
    eps: float | None = None,
) -> list[dict[str, Any]]:
    """One group per distinct (lr, wd, eps) multiplier triple, in parameter order."""
    has_eps = "eps" in inspect.signature(cls.__init__).parameters
    if eps is None and has_eps:
        eps = inspect.signature(cls.__init__).parameters["eps"].default
    groups: dict[tuple[float, float, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name not in plan.tensors:
            raise ValueError(f"{name} is not in the model's muP plan; was the model changed after it was built?")
        t = plan.tensors[name]
        wd_mult = t.wd_mult / t.lr_mult if wd_mode == "independent" else t.wd_mult
        eps_mult = t.eps_mult if eps_mode == "scaled" else 1.0
        key = (t.lr_mult, wd_mult, eps_mult)
        if key not in groups:
            group = {"params": [], "param_names": [], "lr": lr * t.lr_mult, "lr_mult": t.lr_mult,
                     "weight_decay": weight_decay * wd_mult}
            if has_eps:
                group["eps"] = eps * eps_mult
            groups[key] = group
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())
