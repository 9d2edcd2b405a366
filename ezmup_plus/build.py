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

import torch
from torch import nn

from . import rules
from .branches import branches_from_globs, find_branches
from .plan import AttentionSpec, MupPlan, make_plan
from .roles import IN_OUT_TYPES, Role, classify
from .shapes import WIDTH, fit_dim, scales
from .trace import DEFAULT_SENTINELS, ShapeTable, build_on_meta, probe, probe_depth
from .usage import SCALE_ATTR, ForwardTrace, trace_forward, width_dependent_numbers

PLAN_ATTR = "_ezmup_plan"
ATTN_SCALES = ("auto", "1/d", "1/sqrt(d)")


class OutputScale:
    """Forward hook multiplying a module's output by a constant (a muP forward multiplier); with ``rows``,
    only those rows of the output's last dim (the queries of a fused QKV projection)."""

    def __init__(self, scale: float, rows: tuple[int, int] | None = None):
        self.scale = scale
        self.rows = rows

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"a muP output multiplier needs a tensor output, got {type(output).__name__}")
        if self.rows is None or self.rows == (0, output.shape[-1]):
            return output * self.scale
        start, stop = self.rows
        return torch.cat([output[..., :start], output[..., start:stop] * self.scale, output[..., stop:]], dim=-1)

    def __repr__(self) -> str:
        return f"OutputScale({self.scale:g}" + ("" if self.rows is None else f", rows={self.rows}") + ")"


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
    for module_name, a in plan.attention.items():  # "fold" is in the query projection's init and LR already
        if a.via == "scaling":
            setattr(modules[module_name], SCALE_ATTR, getattr(modules[module_name], SCALE_ATTR) * a.factor)
        elif a.via == "query":
            modules[a.query].register_forward_hook(OutputScale(a.factor, (a.start, a.stop)))
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
        trace: bool = True,
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
        self.trace = trace
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
        uses = self.forward_traces[0].uses if self.forward_traces else None
        return classify(self.table, self.role_overrides, uses)

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
    def forward_traces(self) -> list[ForwardTrace]:
        """Parameter uses and attention, from a meta forward at each sentinel width ([] when it cannot run).

        Uses are the same at every width, so they are followed once; a second width shows which numbers
        change with the width (each a warning: muP does not account for Gemma's sqrt(w) embedding scale),
        and the third is traced only to fit the head dims of attention, if any.
        """
        if not self.trace:
            warnings.warn("trace=False: roles come from layer types and conventions, tied weights from aliasing, and "
                          "attention logits keep the factory's 1/sqrt(d_head)", stacklevel=2)
            return []
        widths = [p * self.width_multiple for p in self.sentinels]
        traces = [trace_forward(build_on_meta(self.factory, self.kwargs(widths[0])), self.example_inputs)]
        for w in widths[1:] if traces[0].attention else widths[1:2]:
            traces.append(trace_forward(build_on_meta(self.factory, self.kwargs(w)), self.example_inputs,
                                        follow_params=False))
        for note in width_dependent_numbers(traces[0], traces[1], (widths[0], widths[1])):
            warnings.warn(f"{note}: a number that changes with the width, which muP does not account for. Make it "
                          "a constant in the factory, or check the transfer with a coordinate check", stacklevel=2)
        return traces

    @cached_property
    def attention(self) -> dict[str, AttentionSpec]:
        """Attention modules (templates) whose head dim grows with the width, and how to rescale their logits.

        Through the module's own ``scaling`` attribute where the kernel was given it; else folded into
        the init and LR of an unfused query projection (a weight matrix making only the queries); else
        through a forward hook on the rows of the module output the queries are a linear function of.
        Empty under ``attn_scale="1/sqrt(d)"`` or SP: logits keep the factory's scale.
        """
        traces = self.forward_traces
        if self.attn_scale == "1/sqrt(d)" or self.parametrization == "sp" or not traces:
            return {}
        widths = [p * self.width_multiple for p in self.sentinels]
        found = {}
        for name, site in traces[0].attention.items():
            sites = [t.attention[name] for t in traces]
            head_dim = fit_dim(widths, [s.head_dim for s in sites])
            if not scales(head_dim):
                continue
            rows = None if any(s.query_rows is None for s in sites) else [
                fit_dim(widths, list(r)) for r in zip(*(s.query_rows for s in sites))]
            query = None if site.query_source is None else self.table.template(site.query_source)
            if site.scaled_by_attribute:
                found[self.table.template(name)] = AttentionSpec(head_dim, "scaling", query, *(rows or ()))
            elif rows is not None:
                via = "fold" if self._foldable(site.query_source, site.query_rows) else "query"
                found[self.table.template(name)] = AttentionSpec(head_dim, via, query, *rows)
            else:
                raise ValueError(
                    f"{name or 'the root module'} computes attention with a head dim that grows with the width "
                    f"(d_head = {head_dim}), so muP scales its logits by 1/d, but there is no way to do it here: its "
                    f"kernel is not given a float '{SCALE_ATTR}' attribute of the module, and its queries are not rows "
                    "of one module output apart from the keys (they are not for a per-head fused QKV, a norm applied "
                    "outside a module, or nn.MultiheadAttention's internal projection). Give the module a float "
                    f"'{SCALE_ATTR}' attribute passed to the kernel as its scale, keep the head dim fixed (heads grow "
                    "with the width), or pass attn_scale='1/sqrt(d)' to wrap to keep 1/sqrt(d)")
        return found

    def _foldable(self, module: str, rows: tuple[int, int]) -> bool:
        """A multiplier folds exactly into a module making only the queries from a randomly drawn matrix
        (plus a bias): init x factor is then the same function, LR and eps follow (``rules.fold``)."""
        own = {n.rpartition(".")[2] for n in self.table.params if n.rpartition(".")[0] == module}
        return (own <= {"weight", "bias"} and self._makes_only(module, rows)
                and self.base_stds.get(f"{module}.weight") is not None)

    def _makes_only(self, module: str | None, rows: tuple[int, int] | None) -> bool:
        """The rows are all of ``module``'s output: a weight matrix makes the queries and nothing else."""
        weight = self.table.params.get(f"{module}.weight")
        if weight is None or len(weight.dims) < 2 or rows is None:
            return False
        out_dim = weight.dims[1 if weight.module_type in IN_OUT_TYPES else 0]
        return rows == (0, int(out_dim.subs(WIDTH, self.sentinels[0] * self.width_multiple)))

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
            if not self.forward_traces:
                raise ValueError("zero_init=['query'] needs a forward pass on meta: pass example_inputs=... to wrap")
            for attention, site in self.forward_traces[0].attention.items():
                names |= self._query_params(attention, site.query_source, site.query_rows)
        return frozenset(self.table.template(n) for n in names)

    def _query_params(self, attention: str, source: str | None, rows: tuple[int, int] | None) -> set[str]:
        if not self._makes_only(source, rows):
            raise ValueError(
                f"zero_init=['query']: the queries of {attention} come from {source}, which is not a projection "
                "making only them (a fused QKV projection?); only an unfused query projection can start at zero")
        return {n for n in (f"{source}.weight", f"{source}.bias") if n in self.table.params}

    @cached_property
    def base_stds(self) -> dict[str, float | None]:
        """The factory's own init at base width and depth, pooled over throwaway CPU builds; the RNG is kept."""
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
