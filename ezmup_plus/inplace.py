"""ezmup style: a model the user built at the sentinel width, re-created at a target width in place.

The model is analysed like a factory (``analysis.analyse_model``: the same stages, one probe) and
planned by the same ``make_plan``; what is particular to an existing module is here: fresh tensors
at the target shapes, width attributes brought along, and refusals where one build cannot tell what
a value becomes at another width (a buffer or a float attribute derived from the width).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from .analysis import Analysis, AnalysisOptions, analyse_model
from .build import PLAN_ATTR, apply_plan
from .hparams import HParams
from .plan import MupPlan, make_plan
from .rules import DEFAULT_CONVENTIONS
from .shapes import WIDTH
from .usage import SCALE_ATTR

WIDTH_ATTRS_HINT = "use ezmup_plus.wrap(make_model, base_width=...) instead, which probes several widths and is exact"


def rescale_in_place(
    model: nn.Module, width: int, *, sentinel: int = 47, base_width: int | None = None, parametrization: str = "mup",
    conventions: str = DEFAULT_CONVENTIONS, hparams: HParams | Mapping[str, float] | None = None,
) -> MupPlan:
    """Re-create every width-scaled parameter of ``model`` (built at ``sentinel``) at ``width``, muP init applied.

    Init is relative to the model as built: a tensor's std at ``width`` is its std at the sentinel
    times the rule's factor for ``width / base_width`` (``base_width`` defaults to the sentinel).
    """
    analysis = analyse_model(model, AnalysisOptions(base_width=sentinel if base_width is None else base_width,
                                                    sentinels=(sentinel,), source="model"))
    scales = _attention_scales(model, analysis, width)
    _refuse_unsure(model, sentinel, set(scales))
    plan = make_plan(analysis, width=width, parametrization=parametrization, conventions=conventions, hparams=hparams)
    _resize(model, analysis, plan, sentinel)
    for name, value in scales.items():
        setattr(model.get_submodule(name), SCALE_ATTR, value)
    return apply_plan(model, plan).__dict__[PLAN_ATTR]


def _attention_scales(model: nn.Module, analysis: Analysis, width: int) -> dict[str, float]:
    """The factory's own logit scale at ``width`` for attention that passes its ``scaling`` attribute to the kernel.

    Built once, the attribute holds the sentinel's 1/sqrt(d_head); the one law it can be read as is that
    one, so any other value is refused. ``apply_plan`` then applies muP's factor to it, as for a fresh build.
    """
    scales = {}
    for name, spec in analysis.attention.items():
        if spec.via != "scaling":
            continue
        value = getattr(model.get_submodule(name), SCALE_ATTR)
        head_dim = int(spec.head_dim.subs(WIDTH, analysis.table.widths[0]))
        if not math.isclose(value, head_dim**-0.5, rel_tol=1e-12):
            raise ValueError(f"{name}.{SCALE_ATTR} = {value!r} is not 1/sqrt(d_head) = {head_dim**-0.5!r} of its head "
                             f"dim {head_dim}, so one build cannot tell what it becomes at width {width}; "
                             f"{WIDTH_ATTRS_HINT}")
        scales[name] = int(spec.head_dim.subs(WIDTH, width)) ** -0.5
    return scales


def _refuse_unsure(model: nn.Module, sentinel: int, known: set[str]) -> None:
    """Width-derived state that cannot be re-created from one probe (``known``: attention scales accounted for)."""
    for name, buf in model.named_buffers():
        if any(s % sentinel == 0 for s in buf.shape):
            raise ValueError(f"buffer {name} has shape {tuple(buf.shape)}, which depends on the width; it cannot be "
                             f"re-created in place. {WIDTH_ATTRS_HINT}")
    for module_name, module in model.named_modules():
        for attr, value in vars(module).items():
            if module_name in known and attr == SCALE_ATTR:
                continue
            if isinstance(value, float) and _looks_width_derived(value, sentinel):
                raise ValueError(f"{module_name or 'model'}.{attr} = {value!r} looks derived from the width "
                                 f"{sentinel} (e.g. a 1/sqrt(d) scale); in place it would keep its old value. "
                                 f"{WIDTH_ATTRS_HINT}")


def _looks_width_derived(value: float, sentinel: int) -> bool:
    """value == k * sentinel**e for e in (+-1/2, +-1) with a whole k or 1/k below the sentinel (so not 1.0)."""
    if value == 0.0 or not math.isfinite(value):
        return False
    for e in (-1.0, -0.5, 0.5, 1.0):
        c = abs(value) / sentinel**e
        for k in (c, 1.0 / c):
            if 1.0 <= k < sentinel and abs(k - round(k)) < 1e-9 * k:
                return True
    return False


def _resize(model: nn.Module, analysis: Analysis, plan: MupPlan, sentinel: int) -> None:
    """Fresh tensors at the target shape with the sentinel tensor's mean and std, then width attributes."""
    modules = dict(model.named_modules(remove_duplicate=False))
    with torch.no_grad():
        for name, p in analysis.table.params.items():
            if not p.scaled_dims:
                continue
            old = modules[p.module]._parameters[p.attr]
            new = nn.Parameter(_redraw(old, plan[name].shape), requires_grad=old.requires_grad)
            for full_name in (name, *p.aliases):
                owner, _, attr = full_name.rpartition(".")
                modules[owner]._parameters[attr] = new
    for module in model.modules():
        for attr, value in list(vars(module).items()):
            if attr.startswith("_"):
                continue
            if isinstance(value, int) and not isinstance(value, bool) and value and value % sentinel == 0:
                setattr(module, attr, value // sentinel * plan.width)
            elif isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
                setattr(module, attr, tuple(v // sentinel * plan.width if v and v % sentinel == 0 else v for v in value))


def _redraw(old: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    x = old.detach().float()
    if x.numel() < 2 or bool((x == x.flatten()[0]).all()):
        return torch.full(shape, float(x.flatten()[0]), dtype=old.dtype, device=old.device)
    fresh = torch.randn(shape, device=old.device) * x.std() + x.mean()
    return fresh.to(old.dtype)
