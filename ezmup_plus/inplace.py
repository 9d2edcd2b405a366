"""ezmup style: a model the user built at the sentinel width, re-created at a target width in place.

With one build there is one probe, so every dim that is a multiple of the sentinel is read as that
multiple of the width. Where that reading could be wrong (a dim that is a multiple of the sentinel
squared, a buffer or a float attribute derived from the width) this module refuses and points to
``wrap``, which probes several primes and is exact.
"""

from __future__ import annotations

import copy
import math
import warnings

import sympy
import torch
from torch import nn

from .build import apply_plan, init_stds
from .plan import MupPlan, make_plan
from .roles import classify
from .shapes import WIDTH
from .trace import ParamShape, ShapeTable, parameter_layout
from .usage import Use, trace_forward

WIDTH_ATTRS_HINT = "use ezmup_plus.wrap(make_model, base_width=...) instead, which probes several widths and is exact"


def rescale_in_place(
    model: nn.Module, width: int, *, sentinel: int = 47, base_width: int | None = None, parametrization: str = "mup"
) -> MupPlan:
    """Re-create every width-scaled parameter of ``model`` (built at ``sentinel``) at ``width``, muP init applied.

    Init is relative to the model as built: a tensor's std at ``width`` is its std at the sentinel
    times the rule's factor for ``width / base_width`` (``base_width`` defaults to the sentinel).
    """
    base_width = sentinel if base_width is None else base_width
    table = _table_at_sentinel(model, sentinel)
    _refuse_unsure(model, sentinel)
    plan = make_plan(table, classify(table, uses=_traced_uses(model, sentinel)), init_stds([model]), width=width,
                     base_width=base_width, parametrization=parametrization)
    _resize(model, table, plan, sentinel)
    return apply_plan(model, plan).__dict__["_ezmup_plan"]


def _table_at_sentinel(model: nn.Module, sentinel: int) -> ShapeTable:
    params = {}
    for name, (shape, module, module_type, attr, aliases) in parameter_layout(model).items():
        dims = []
        for axis, size in enumerate(shape):
            if size % (sentinel * sentinel) == 0:
                raise ValueError(f"{name} dim {axis} is {size}, a multiple of {sentinel}^2: it could be w^2 or a "
                                 f"multiple of w; {WIDTH_ATTRS_HINT}")
            dims.append(sympy.Integer(size // sentinel) * WIDTH if size % sentinel == 0 else sympy.Integer(size))
        params[name] = ParamShape(name, tuple(dims), module, module_type, attr, aliases)
    if not any(p.scaled_dims for p in params.values()):
        raise ValueError(f"no parameter of this {type(model).__name__} has a dim that is a multiple of the sentinel "
                         f"{sentinel}: build the model at width={sentinel} before passing width=... to get_mup_optimizer")
    modules = {n: type(m).__name__ for n, m in model.named_modules()}
    return ShapeTable(params, (sentinel,), modules)


def _traced_uses(model: nn.Module, sentinel: int) -> dict[str, tuple[Use, ...]] | None:
    """Parameter uses from a meta copy's forward; attention with a width-sized head dim is refused."""
    try:
        trace = trace_forward(copy.deepcopy(model).to("meta"))
    except (RuntimeError, ValueError) as exc:
        warnings.warn(f"the forward was not traced, so roles come from layer types: {exc}", stacklevel=4)
        return None
    for name, site in trace.attention.items():
        if site.head_dim % sentinel == 0:
            raise ValueError(f"{name or 'the model'} computes attention with a head dim of {site.head_dim}, a multiple "
                             f"of {sentinel}: muP's 1/d_head logit scale needs it traced at several widths; "
                             f"{WIDTH_ATTRS_HINT}")
    return trace.uses


def _refuse_unsure(model: nn.Module, sentinel: int) -> None:
    """Width-derived state that cannot be re-created from one probe."""
    for name, buf in model.named_buffers():
        if any(s % sentinel == 0 for s in buf.shape):
            raise ValueError(f"buffer {name} has shape {tuple(buf.shape)}, which depends on the width; it cannot be "
                             f"re-created in place. {WIDTH_ATTRS_HINT}")
    for module_name, module in model.named_modules():
        for attr, value in vars(module).items():
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


def _resize(model: nn.Module, table: ShapeTable, plan: MupPlan, sentinel: int) -> None:
    """Fresh tensors at the target shape with the sentinel tensor's mean and std, then width attributes."""
    modules = dict(model.named_modules(remove_duplicate=False))
    with torch.no_grad():
        for name, p in table.params.items():
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
