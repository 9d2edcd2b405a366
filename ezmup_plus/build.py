"""Build a model at a target width from a factory and a plan: init rescaled, multipliers installed.

The model stays a plain ``nn.Module``; the plan rides along as an attribute (so it survives
``deepcopy``, pickling and wrappers) and forward multipliers are picklable forward hooks.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings
from functools import cached_property, lru_cache
from typing import Any, Callable, Iterable, Mapping, Sequence

import sympy
import torch
from torch import nn

from . import rules
from .branches import branches_from_globs, find_branches
from .plan import MupPlan, make_plan
from .roles import IN_OUT_TYPES, Role, classify
from .shapes import WIDTH, fit_dim, scales
from .trace import DEFAULT_SENTINELS, ShapeTable, build_on_meta, probe, probe_depth
from .usage import SCALE_ATTR, AttentionSite, attention_sites

PLAN_ATTR = "_ezmup_plan"
ATTN_SCALES = ("auto", "1/d", "1/sqrt(d)")


class OutputScale:
    """Forward hook multiplying a module's output by a constant (a muP forward multiplier)."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"a muP output multiplier needs a tensor output, got {type(output).__name__}")
        return output * self.scale

    def __repr__(self) -> str:
        return f"OutputScale({self.scale:g})"


def init_stds(builds: Iterable[nn.Module]) -> dict[str, float | None]:
    """Each tensor's init std, pooled over independent builds; None for constants (zeros, ones, ...).

    Pooling matters for small base tensors (a readout of 16 weights): their std sets the scale of
    the same tensor at every target width, so it is measured on enough draws to be ~1% accurate.
    """
    variances: dict[str, list[float]] = {}
    constant: dict[str, bool] = {}
    for model in builds:
        for name, p in model.named_parameters():
            x = p.detach().float().flatten()
            constant[name] = constant.get(name, True) and (x.numel() < 2 or bool((x == x[0]).all()))
            variances.setdefault(name, []).append(float(x.var()) if x.numel() > 1 else 0.0)
    return {name: None if constant[name] else math.sqrt(sum(v) / len(v)) for name, v in variances.items()}


def draws_needed(model: nn.Module, names: set[str], samples: int = 1 << 16, most: int = 256) -> int:
    """How many builds give each of ``names`` at least ``samples`` values (at most ``most`` builds)."""
    smallest = min((p.numel() for n, p in model.named_parameters() if n in names), default=samples)
    return max(1, min(most, -(-samples // smallest)))


def apply_plan(model: nn.Module, plan: MupPlan) -> nn.Module:
    """Rescale init to the plan's stds, set attention scales, install forward multipliers, attach the plan.

    On the meta device there are no values to rescale: materialize the model, run its own init,
    then call :func:`rescale_init`.
    """
    params = dict(model.named_parameters())
    missing = sorted(set(plan.tensors) - set(params))
    extra = sorted(set(params) - set(plan.tensors))
    if missing or extra:
        raise ValueError(
            f"the model does not match its plan: in the plan only {missing[:5]}, in the model only {extra[:5]}"
        )
    for t in plan:
        if tuple(params[t.name].shape) != t.shape:
            raise ValueError(f"{t.name}: built with shape {tuple(params[t.name].shape)} but the plan expects {t.shape}")
    if not any(p.is_meta for p in params.values()):
        rescale_init(model, plan)
    modules = dict(model.named_modules())
    for module_name, factor in plan.attention.items():
        module = modules[module_name]
        if not isinstance(getattr(module, SCALE_ATTR, None), float):
            raise ValueError(
                f"{module_name} computes attention with a head dim that grows with the width, so muP scales its "
                f"logits by 1/d; it has no float '{SCALE_ATTR}' attribute to adjust. Give it one (passed as "
                "scale= to scaled_dot_product_attention), or pass attn_scale='1/sqrt(d)' to wrap to keep 1/sqrt(d)"
            )
        setattr(module, SCALE_ATTR, getattr(module, SCALE_ATTR) * factor)
    for module_name, scale in plan.multipliers.items():
        modules[module_name].register_forward_hook(OutputScale(scale))
    setattr(model, PLAN_ATTR, plan)
    return model


def rescale_init(model: nn.Module, plan: MupPlan | None = None) -> nn.Module:
    """Bring freshly initialised parameters (the factory's own init at the target) to the plan's stds.

    Statistics are taken in fp32 whatever the parameter dtype.
    """
    plan = plan_of(model) if plan is None else plan
    params = dict(model.named_parameters())
    with torch.no_grad():
        for t in plan:
            p = params[t.name]
            if t.init_std == 0.0:
                p.zero_()
                continue
            if t.init_std is None or t.init_factor == 1.0:
                continue
            current = float(p.detach().float().std())
            if current == 0.0:
                raise ValueError(f"{t.name}: the factory built it constant at width {plan.width} but not at base")
            p.mul_(t.init_std / current)
    return model


def plan_of(model: nn.Module) -> MupPlan:
    """The plan a model carries (looks through DDP's ``.module`` and ``torch.compile``'s ``._orig_mod``)."""
    plan = find_plan(model)
    if plan is None:
        raise LookupError(
            f"this {type(model).__name__} carries no muP plan: build it with ezmup_plus.wrap(factory, ...)(width=...) "
            "or pass width=... to get_mup_optimizer for a model built at the sentinel width"
        )
    return plan


def find_plan(model: nn.Module) -> MupPlan | None:
    planned = planned_module(model)
    return None if planned is None else planned.__dict__[PLAN_ATTR]


def planned_module(model: nn.Module) -> nn.Module | None:
    """The module that carries the plan, inside DDP's ``.module`` or ``torch.compile``'s ``._orig_mod``.

    Its parameter names are the plan's (DDP's wrapper would prefix them with ``module.``).
    """
    while PLAN_ATTR not in model.__dict__:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return None
        model = inner
    return model


class MupFactory:
    """A model factory that builds muP models at any width and depth.

    ``wrap(make_model, base_width=256, base_depth=4)(width=2048, depth=24)``. Everything it learns
    about the factory (shapes on meta, roles, branches, base init) is computed once and cached.
    With ``base_depth``, ``"mup"`` and ``"spectral"`` scale depth as CompleteP (branch x m_L^-1) unless
    ``depth_alpha`` says otherwise; ``"depth_mup"`` is alpha=1/2; ``"sp"`` scales nothing.
    """

    def __init__(
        self,
        factory: Callable[..., nn.Module],
        *,
        base_width: int,
        base_depth: int | None = None,
        sentinel: int = DEFAULT_SENTINELS[0],
        sentinels: tuple[int, ...] | None = None,
        width_arg: str = "width",
        depth_arg: str = "depth",
        width_multiple: int = 1,
        parametrization: str = "mup",
        depth_alpha: float | None = None,
        roles: Mapping[str, str] | None = None,
        branches: Sequence[str] | None = None,
        example_inputs: Any = None,
        attn_scale: str = "auto",
        zero_init: Sequence[str] = (),
        **fixed_kwargs: Any,
    ):
        rules.check_parametrization(parametrization)
        if attn_scale not in ATTN_SCALES:
            raise ValueError(f"attn_scale={attn_scale!r} is unknown; choose one of {ATTN_SCALES}")
        rules.depth_alpha(parametrization, depth_alpha)  # validates the exponent now, not at first use
        if base_width % width_multiple:
            raise ValueError(f"base_width={base_width} is not a multiple of width_multiple={width_multiple}")
        for arg in (width_arg, depth_arg if base_depth is not None else None):
            if arg in fixed_kwargs:
                raise ValueError(f"'{arg}' is set per build (f(width=..., depth=...)); do not also pass it to wrap")
        self.factory = factory
        self.base_width = base_width
        self.base_depth = base_depth
        self.sentinels = tuple(sentinels) if sentinels else _sentinels_from(sentinel)
        self.width_arg = width_arg
        self.depth_arg = depth_arg
        self.width_multiple = width_multiple
        self.parametrization = parametrization
        self.depth_alpha = depth_alpha
        self.role_overrides = dict(roles or {})
        self.branch_globs = tuple(branches) if branches is not None else None
        self.example_inputs = example_inputs
        self.attn_scale = attn_scale
        unknown = set(zero_init) - {"readout", "query"}
        if unknown:
            raise ValueError(f"zero_init={list(zero_init)}: {sorted(unknown)} unknown; choose from 'readout', 'query'")
        self.zero_init = tuple(zero_init)
        self.fixed_kwargs = fixed_kwargs

    def kwargs(self, width: int, depth: int | None = None) -> dict[str, Any]:
        """The factory's keyword arguments for one build."""
        kwargs = {**self.fixed_kwargs, self.width_arg: width}
        if self.base_depth is not None:
            kwargs[self.depth_arg] = self.base_depth if depth is None else depth
        return kwargs

    @cached_property
    def table(self) -> ShapeTable:
        """The symbolic shapes, probed on meta at the sentinel widths (and three depths)."""
        depth_kwargs = self.kwargs(self.base_width)
        del depth_kwargs[self.width_arg]
        table = probe(self.factory, width_arg=self.width_arg, sentinels=self.sentinels,
                      width_multiple=self.width_multiple, fixed_kwargs=depth_kwargs)
        if self.base_depth is None:
            return table
        return probe_depth(self.factory, table, depth_arg=self.depth_arg, base_depth=self.base_depth,
                           fixed_kwargs=self.kwargs(self.sentinels[0] * self.width_multiple))

    @cached_property
    def roles(self) -> dict[str, Role]:
        return classify(self.table, self.role_overrides)

    @cached_property
    def branches(self) -> dict[str, str]:
        """Residual-branch output modules of the repeated blocks (templates -> "fold" or "hook")."""
        if not self.table.stacks:
            return {}
        model = build_on_meta(self.factory, self.kwargs(self.sentinels[0] * self.width_multiple))
        if self.branch_globs is not None:
            return branches_from_globs(model, self.table, self.branch_globs)
        return find_branches(model, self.table, self.example_inputs)

    @cached_property
    def attention_traces(self) -> list[dict[str, AttentionSite]]:
        """Attention seen in a meta forward at each sentinel width ([] when the forward cannot run)."""
        widths = [p * self.width_multiple for p in self.sentinels]
        try:
            return [attention_sites(build_on_meta(self.factory, self.kwargs(w)), self.example_inputs) for w in widths]
        except (RuntimeError, ValueError) as exc:
            if self.example_inputs is not None:
                raise
            warnings.warn(f"attention was not traced, so its logits keep 1/sqrt(d_head): {exc}", stacklevel=2)
            return []

    @cached_property
    def attention(self) -> dict[str, sympy.Expr]:
        """Attention modules (templates) whose head dim grows with the width -> that head dim in ``w``.

        Empty under ``attn_scale="1/sqrt(d)"`` or SP: their logits keep the factory's scale.
        """
        traces = self.attention_traces
        if self.attn_scale == "1/sqrt(d)" or self.parametrization == "sp" or not traces:
            return {}
        widths = [p * self.width_multiple for p in self.sentinels]
        found = {}
        for name in traces[0]:
            head_dim = fit_dim(widths, [t[name].head_dim for t in traces])
            if scales(head_dim):
                found[self.table.template(name)] = head_dim
        return found

    @cached_property
    def zeroed(self) -> frozenset[str]:
        """Parameter templates that ``zero_init`` starts at zero (TP5: the readout, the query projection)."""
        names: set[str] = set()
        if "readout" in self.zero_init:
            readout = {n for n, r in self.roles.items() if r.role == "output" and len(self.table.params[n].dims) >= 2}
            if not readout:
                raise ValueError("zero_init=['readout']: no untied readout matrix found (a readout tied to the input "
                                 "embedding cannot start at zero)")
            names |= readout
        if "query" in self.zero_init:
            if not self.attention_traces:
                raise ValueError("zero_init=['query'] needs a forward pass on meta: pass example_inputs=... to wrap")
            for attention, site in self.attention_traces[0].items():
                names |= self._query_params(attention, site)
        return frozenset(self.table.template(n) for n in names)

    def _query_params(self, attention: str, site: AttentionSite) -> set[str]:
        weight = f"{site.query_source}.weight"
        p = self.table.params.get(weight)
        width = self.sentinels[0] * self.width_multiple
        out_dim = None if p is None else int(p.dims[1 if p.module_type in IN_OUT_TYPES else 0].subs(WIDTH, width))
        if out_dim != site.query_width:
            raise ValueError(
                f"zero_init=['query']: the queries of {attention} come from {site.query_source}, which also produces "
                "other things (a fused QKV projection); only an unfused query projection can start at zero"
            )
        return {n for n in (weight, f"{site.query_source}.bias") if n in self.table.params}

    @cached_property
    def base_stds(self) -> dict[str, float | None]:
        """The factory's own init at base width and depth, pooled over throwaway CPU builds; the RNG is left as it was."""
        kwargs = self.kwargs(self.base_width)
        with torch.random.fork_rng(devices=[]), torch.device("cpu"):
            torch.manual_seed(0)  # the plan is a function of the factory alone, not of the caller's RNG state
            first = self.factory(**kwargs)
            rescaled = {n for n, r in self.roles.items() if r.role in ("hidden", "output")}
            more = (self.factory(**kwargs) for _ in range(draws_needed(first, rescaled) - 1))
            return init_stds(itertools.chain([first], more))

    def plan(self, width: int, depth: int | None = None, family: str = "adam") -> MupPlan:
        """The per-tensor plan at ``width`` (and ``depth``); nothing is built."""
        return _plan(self, width, depth, family)

    def __call__(self, width: int, depth: int | None = None, *, device: Any = None,
                 dtype: torch.dtype | None = None) -> nn.Module:
        """Build at the target directly on ``device``; init is rescaled in the factory's dtype, then cast."""
        plan = self.plan(width, depth)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = self.factory(**self.kwargs(width, depth))
        apply_plan(model, plan)
        return model if dtype is None else model.to(dtype)

    def __repr__(self) -> str:
        name = getattr(self.factory, "__qualname__", repr(self.factory))
        return (f"MupFactory({name}, base_width={self.base_width}, base_depth={self.base_depth}, "
                f"parametrization={self.parametrization!r})")


@lru_cache(maxsize=64)
def _plan(f: MupFactory, width: int, depth: int | None, family: str) -> MupPlan:
    return make_plan(f.table, f.roles, f.base_stds, width=width, base_width=f.base_width, depth=depth,
                     parametrization=f.parametrization, family=family, depth_alpha=f.depth_alpha,
                     branches=f.branches, attention=f.attention, zeroed=f.zeroed)


def _sentinels_from(sentinel: int) -> tuple[int, ...]:
    """The user's sentinel first, then the next default primes that differ from it."""
    return (sentinel, *[p for p in (*DEFAULT_SENTINELS, 61, 67) if p != sentinel][:2])


def wrap(factory: Callable[..., nn.Module], *, base_width: int, **options: Any) -> MupFactory:
    """Turn ``factory(width=..., **kwargs) -> nn.Module`` into a muP factory tuned at ``base_width``."""
    return MupFactory(factory, base_width=base_width, **options)
