"""Build a model at a target width from a factory and a plan: init rescaled, multipliers installed.

The model stays a plain ``nn.Module``; the plan rides along as an attribute (so it survives
``deepcopy``, pickling and wrappers) and forward multipliers are picklable forward hooks.
"""

from __future__ import annotations

import contextlib
import copy
import json
from functools import cached_property, lru_cache
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from . import rules
from .analysis import Analysis, AnalysisOptions, analyse_factory, plain, say
from .cache import analysis_key, cache_dir, load, store
from .constants import MODES as WIDTH_CONSTANT_MODES
from .hparams import HParams, as_hparams
from .inits import ZERO_INITS
from .plan import MupPlan, make_plan
from .trace import DEFAULT_SENTINELS, ShapeTable
from .usage import SCALE_ATTR, RowBlocks

PLAN_ATTR = "_ezmup_plan"
ATTN_SCALES = ("auto", "1/d", "1/sqrt(d)")


def row_scale(scale: float, rows: RowBlocks, like: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """A multiplier broadcasting along ``dim`` of ``like``: ``scale`` on ``rows``, 1 elsewhere."""
    vector = torch.ones(like.shape[dim], dtype=like.dtype, device=like.device)
    vector[rows.index()] = scale
    return vector.view(-1, *(1,) * (like.dim() - 1 - dim % like.dim()))


class OutputScale:
    """Forward hook multiplying a module's output by a constant (a muP forward multiplier); with ``rows``,
    only those rows of the output's last dim (the queries of a fused QKV projection)."""

    def __init__(self, scale: float, rows: RowBlocks | None = None):
        self.scale = scale
        self.rows = rows

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"a muP output multiplier needs a tensor output, got {type(output).__name__}")
        if self.rows is None or self.rows == RowBlocks(0, output.shape[-1]):
            return output * self.scale
        return output * row_scale(self.scale, self.rows, output)

    def __repr__(self) -> str:
        return f"OutputScale({self.scale:g}" + ("" if self.rows is None else f", rows={self.rows}") + ")"


class InputScale:
    """Forward pre-hook multiplying a module's first input by a constant: MuReadout's ``x / width_mult``, so the
    readout's bias is added after the multiplier, not scaled by it."""

    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0] * self.scale, *args[1:])

    def __repr__(self) -> str:
        return f"InputScale({self.scale:g})"


class WeightRowScale:
    """Forward pre-hook scaling rows of a module's own weight and bias for the forward: the query rows of
    ``nn.MultiheadAttention``'s ``in_proj_weight``, which its kernel uses internally. The scaled tensors shadow
    the parameters in the module's ``__dict__`` until :meth:`restore` (its forward hook) removes them."""

    NAMES = ("in_proj_weight", "in_proj_bias")

    def __init__(self, scale: float, rows: RowBlocks):
        self.scale = scale
        self.rows = rows

    def __call__(self, module: nn.Module, args: tuple) -> None:
        for name in self.NAMES:
            p = module._parameters.get(name)
            if p is not None:
                module.__dict__[name] = p * row_scale(self.scale, self.rows, p, dim=0)

    def restore(self, module: nn.Module, args: tuple, output: Any) -> None:
        for name in self.NAMES:
            module.__dict__.pop(name, None)

    def __repr__(self) -> str:
        return f"WeightRowScale({self.scale:g}, rows={self.rows})"


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
            modules[a.query].register_forward_hook(OutputScale(a.factor, a.rows))
        elif a.via == "weight":
            scale = WeightRowScale(a.factor, a.rows)
            modules[a.query].register_forward_pre_hook(scale)
            modules[a.query].register_forward_hook(scale.restore)
    for module_name, scale in plan.multipliers.items():
        modules[module_name].register_forward_hook(OutputScale(scale))
    for module_name, scale in plan.input_multipliers.items():
        modules[module_name].register_forward_pre_hook(InputScale(scale))
    setattr(model, PLAN_ATTR, plan)
    return model


def rescale_init(model: nn.Module, plan: MupPlan | None = None) -> nn.Module:
    """Bring freshly initialised parameters (the factory's own init at the target) to the plan's stds.

    The factor is deterministic: the planned std over the factory's own expected std at the target (its
    init law), or the rule's factor where that law was not read; so at the base width nothing changes.
    """
    plan = plan_of(model) if plan is None else plan
    params = dict(model.named_parameters())
    with torch.no_grad():
        for t in plan:
            if t.init == "zero":
                params[t.name].zero_()
            elif t.init != "keep":
                factor = t.init_std / t.drawn_std if t.init == "law" else t.init_factor
                if factor != 1.0:
                    params[t.name].mul_(factor)
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

    ``wrap(make_model, base_width=256, base_depth=4)(width=2048, depth=24)``. What it learns about the
    factory is one :class:`~ezmup_plus.analysis.Analysis`, computed once on first use and cached;
    plans and builds are made from it. With ``base_depth``, ``"mup"`` and ``"spectral"`` scale depth as
    CompleteP (branch x m_L^-1) unless ``depth_alpha`` says otherwise; ``"depth_mup"`` is alpha=1/2;
    ``"sp"`` scales nothing. ``conventions="microsoft_mup"`` reproduces microsoft/mup 1.0 (``rules.CONVENTIONS``).
    ``hparams`` (:class:`~ezmup_plus.hparams.HParams` or a mapping of its knobs) are defined at base and carried
    to every build by the plan; :meth:`with_hparams` changes them without analysing the factory again.
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
        cache: bool | str | None = None,
        conventions: str = rules.DEFAULT_CONVENTIONS,
        width_constants: str = "correct",
        hparams: HParams | Mapping[str, float] | None = None,
        **fixed_kwargs: Any,
    ):
        rules.check_parametrization(parametrization)
        rules.conventions(conventions)  # validates the name now, not at first use
        if attn_scale not in ATTN_SCALES:
            raise ValueError(f"attn_scale={attn_scale!r} is unknown; choose one of {ATTN_SCALES}")
        rules.depth_alpha(parametrization, depth_alpha)  # validates the exponent now, not at first use
        if base_width % width_multiple:
            raise ValueError(f"base_width={base_width} is not a multiple of width_multiple={width_multiple}")
        for arg in (width_arg, depth_arg if base_depth is not None else None):
            if arg in fixed_kwargs:
                raise ValueError(f"'{arg}' is set per build (f(width=..., depth=...)); do not also pass it to wrap")
        if width_constants not in WIDTH_CONSTANT_MODES:
            raise ValueError(f"width_constants={width_constants!r} is unknown; choose one of {WIDTH_CONSTANT_MODES}")
        unknown = set(zero_init) - set(ZERO_INITS)
        if unknown:
            raise ValueError(f"zero_init={list(zero_init)}: {sorted(unknown)} unknown; choose from 'readout', 'query'")
        self.factory = factory
        self.options = AnalysisOptions(
            base_width=base_width, base_depth=base_depth,
            sentinels=tuple(sentinels) if sentinels else _sentinels_from(sentinel), width_multiple=width_multiple,
            width_arg=width_arg, depth_arg=depth_arg, roles=dict(roles or {}),
            branches=tuple(branches) if branches is not None else None, zero_init=tuple(zero_init), trace=trace,
            width_constants=width_constants, fixed_kwargs={k: repr(v) for k, v in fixed_kwargs.items()})
        self.parametrization = parametrization
        self.depth_alpha = depth_alpha
        self.attn_scale = attn_scale
        self.conventions = conventions
        self.example_inputs = example_inputs
        self.fixed_kwargs = fixed_kwargs
        self.cache = cache
        self.hparams = as_hparams(hparams)

    def with_hparams(self, hparams: HParams | Mapping[str, float] | None) -> MupFactory:
        """The same factory with other knobs, sharing this one's analysis (learned now if not yet): a tuning
        trial plans and builds, it never traces."""
        self.analysis  # noqa: B018 -- computed once here, so the copy shares it
        other = copy.copy(self)
        other.hparams = as_hparams(hparams)
        return other

    @property
    def base_width(self) -> int:
        return self.options.base_width

    @property
    def base_depth(self) -> int | None:
        return self.options.base_depth

    def kwargs(self, width: int, depth: int | None = None) -> dict[str, Any]:
        """The factory's keyword arguments for one build."""
        kwargs = {**self.fixed_kwargs, self.options.width_arg: width}
        if self.base_depth is not None:
            kwargs[self.options.depth_arg] = self.base_depth if depth is None else depth
        return kwargs

    @cached_property
    def analysis(self) -> Analysis:
        """Everything learned about the factory: probed at the sentinel primes on meta, traced, init laws read;
        from the disk cache when this factory was analysed before (``cache=False`` or ``EZMUP_PLUS_CACHE=off``:
        never)."""
        directory = cache_dir(self.cache)
        key = None if directory is None else analysis_key(self.factory, json.dumps(plain(self.options)),
                                                          self.example_inputs)
        found = None if key is None else load(directory, key)
        if found is not None:
            say(found)
            return found
        found = analyse_factory(self.factory, self.options, self.fixed_kwargs, self.example_inputs)
        if key is not None:
            store(directory, key, found)
        return found

    @property
    def table(self) -> ShapeTable:
        return self.analysis.table

    @property
    def branches(self) -> dict[str, str]:
        return self.analysis.branches

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
                f"parametrization={self.parametrization!r}, conventions={self.conventions!r})")


@lru_cache(maxsize=64)
def _plan(f: MupFactory, width: int, depth: int | None, family: str) -> MupPlan:
    return make_plan(f.analysis, width=width, depth=depth, parametrization=f.parametrization, family=family,
                     depth_alpha=f.depth_alpha, attn_scale=f.attn_scale, conventions=f.conventions, hparams=f.hparams)


def _sentinels_from(sentinel: int) -> tuple[int, ...]:
    """The user's sentinel first, then the next default primes that differ from it."""
    return (sentinel, *[p for p in (*DEFAULT_SENTINELS, 61, 67) if p != sentinel][:2])


def wrap(factory: Callable[..., nn.Module], *, base_width: int, **options: Any) -> MupFactory:
    """Turn ``factory(width=..., **kwargs) -> nn.Module`` into a muP factory tuned at ``base_width``."""
    return MupFactory(factory, base_width=base_width, **options)
