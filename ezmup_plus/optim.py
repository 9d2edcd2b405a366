"""``get_mup_optimizer``: a real ``torch.optim`` optimizer whose param groups carry the per-tensor LRs.

Tensors with equal (lr, wd, eps) multipliers share a group, so a transformer gets a handful of
groups, fused/foreach kernels keep working, and LR schedulers (which scale each group's own
initial LR) keep the per-tensor ratios.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable

import torch
from torch import nn

from .build import find_plan, planned_module
from .hparams import HParams, as_hparams
from .hybrid import MuonHybrid
from .inplace import rescale_in_place
from .plan import MupPlan
from .rules import DEFAULT_CONVENTIONS, FAMILIES, check_family, check_modes

OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], str]] = {
    "adam": (torch.optim.Adam, "adam"),
    "adamw": (torch.optim.AdamW, "adam"),
    "adamax": (torch.optim.Adamax, "adam"),
    "nadam": (torch.optim.NAdam, "adam"),
    "radam": (torch.optim.RAdam, "adam"),
    "sgd": (torch.optim.SGD, "sgd"),
    "adafactor": (torch.optim.Adafactor, "adafactor"),
    "muon": (MuonHybrid, "orthogonal"),
    "muon_rms": (MuonHybrid, "orthogonal_rms"),
}
"""Optimizer name -> (class, rules family). Extend with :func:`register_optimizer`."""

MUON_ADJUST_LR = {"orthogonal": "original", "orthogonal_rms": "match_rms_adamw"}
"""torch.optim.Muon's own per-shape LR adjustment that each orthogonal family's rules assume."""


def register_optimizer(name: str, cls: type[torch.optim.Optimizer], *, family: str) -> None:
    """Make ``get_mup_optimizer(model, optimizer=name)`` (or ``optimizer=cls``) use ``family``'s rules.

    E.g. ``register_optimizer("lion", Lion, family="sign")``; the families are ``rules.FAMILIES``.
    """
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
            f"ezmup_plus.register_optimizer(name, cls, family=...), family one of {sorted(FAMILIES)}"
        )
    for cls, family in OPTIMIZERS.values():
        if optimizer is cls:
            return cls, family
    raise ValueError(
        f"optimizer class {getattr(optimizer, '__name__', optimizer)} has no registered muP family; call "
        f"ezmup_plus.register_optimizer(name, cls, family=...) first, family one of {sorted(FAMILIES)}"
    )


def get_mup_optimizer(
    model: nn.Module,
    lr: float,
    optimizer: str | type[torch.optim.Optimizer] = "adamw",
    weight_decay: float | None = None,
    *,
    width: int | None = None,
    depth: int | None = None,
    wd_mode: str = "independent",
    eps_mode: str = "scaled",
    conventions: str | None = None,
    hparams: HParams | dict | None = None,
    **opt_kwargs: Any,
) -> torch.optim.Optimizer:
    """An optimizer with muP per-tensor learning rates, weight decay and eps.

    ``wd_mode="independent"`` keeps the per-step decay lr*wd of every tensor equal to the base
    model's, so weight decay transfers; ``"coupled"`` is PyTorch's lr*wd with the LR multiplier in it.
    ``eps_mode="scaled"`` uses the plan's eps multipliers, ``"fixed"`` leaves the optimizer's eps alone.
    ``conventions`` (``rules.CONVENTIONS``, e.g. ``"microsoft_mup"``) is the plan's for a model built by ``wrap``
    (given, it must match), and chooses the plan of a model rescaled here (default ``"ezmup_plus"``).
    ``optimizer="muon"`` (or ``"muon_rms"``) gives Muon on hidden matrices and AdamW elsewhere, as one optimizer.
    ``hparams`` are the knobs of a model rescaled here (for a model built by ``wrap``, given, they must be its
    plan's); ``weight_decay`` defaults to the plan's ``hparams.weight_decay``, else 0.
    """
    cls, family = resolve_optimizer(optimizer)
    check_modes(wd_mode, eps_mode)
    plan = _plan_for(model, width, depth, conventions, hparams)
    weight_decay = _weight_decay(weight_decay, plan.hparams.weight_decay)
    model = planned_module(model)  # DDP and torch.compile wrappers rename parameters; the plan uses the inner names
    settings = dict(lr=lr, weight_decay=weight_decay, wd_mode=wd_mode, eps_mode=eps_mode)
    if cls is MuonHybrid:
        # Muon takes the hidden matrices; embeddings, readout, biases, gains and kernels stay on AdamW
        is_muon = {t.name for t in plan if t.role == "hidden" and len(t.shape) == 2}.__contains__
        adamw_kwargs = {k: opt_kwargs.pop(k) for k in ("betas", "eps", "foreach", "fused") if k in opt_kwargs}
        return MuonHybrid(
            param_groups(model, plan.for_family(family), cls=torch.optim.Muon, select=is_muon, **settings),
            param_groups(model, plan.for_family("adam"), cls=torch.optim.AdamW, eps=adamw_kwargs.pop("eps", None),
                         select=lambda name: not is_muon(name), **settings),
            lr=lr, muon_kwargs={"weight_decay": weight_decay, "adjust_lr_fn": MUON_ADJUST_LR[family], **opt_kwargs},
            adamw_kwargs={"weight_decay": weight_decay, **adamw_kwargs},
        )
    groups = param_groups(model, plan.for_family(family), cls=cls, eps=opt_kwargs.pop("eps", None), **settings)
    return cls(groups, lr=lr, weight_decay=weight_decay, **opt_kwargs)


def _weight_decay(given: float | None, planned: float | None) -> float:
    if given is not None and planned is not None and given != planned:
        raise ValueError(f"weight_decay={given!r} but the plan's hparams.weight_decay={planned!r}: give one of them")
    return next((v for v in (given, planned) if v is not None), 0.0)


def _plan_for(model: nn.Module, width: int | None, depth: int | None, conventions: str | None,
              hparams: HParams | dict | None) -> MupPlan:
    plan = find_plan(model)
    if plan is not None:
        asked_hparams = None if hparams is None else as_hparams(hparams)
        for name, asked, built in (("width", width, plan.width), ("depth", depth, plan.depth),
                                   ("conventions", conventions, plan.conventions),
                                   ("hparams", asked_hparams, plan.hparams)):
            if asked is not None and asked != built:
                raise ValueError(f"the model already carries a plan for {name} {built}; got {name}={asked!r}")
        return plan
    if depth is not None:
        raise ValueError("depth cannot be changed in place (it would add blocks): build the model with "
                         "ezmup_plus.wrap(factory, base_width=..., base_depth=...)(width=..., depth=...)")
    if width is None:
        raise ValueError(
            f"this {type(model).__name__} carries no muP plan and no width was given: build it with "
            "ezmup_plus.wrap(factory, base_width=...)(width=...), or build it at the sentinel width (47) and pass "
            "width=... here. ezmup_plus never silently falls back to standard parametrization"
        )
    return rescale_in_place(model, width, conventions=conventions or DEFAULT_CONVENTIONS, hparams=hparams)


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
    select: Callable[[str], bool] = lambda name: True,
) -> list[dict[str, Any]]:
    """One group per distinct (lr, wd, eps) multiplier triple, in parameter order.

    eps is set per group only for optimizers whose eps is one number (not Adafactor's pair).
    """
    default_eps = inspect.signature(cls.__init__).parameters.get("eps")
    scales_eps = default_eps is not None and isinstance(default_eps.default, float)
    eps = default_eps.default if eps is None and scales_eps else eps
    groups: dict[tuple[float, float, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad or not select(name):
            continue
        if name not in plan.tensors:
            raise ValueError(f"{name} is not in the model's muP plan; was the model changed after it was built?")
        t = plan.tensors[name]
        # independent: lr*wd per step is the base model's whatever the family's coupled WD rule says
        wd_mult = 1.0 / t.lr_mult if wd_mode == "independent" else t.wd_mult
        eps_mult = t.eps_mult if eps_mode == "scaled" else 1.0
        key = (t.lr_mult, wd_mult, eps_mult)
        if key not in groups:
            group = {"params": [], "param_names": [], "lr": lr * t.lr_mult, "lr_mult": t.lr_mult,
                     "weight_decay": weight_decay * wd_mult}
            if scales_eps:
                group["eps"] = eps * eps_mult
            groups[key] = group
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())
