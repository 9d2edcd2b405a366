"""What the stages up to roles learn about a model family, as one plain value: the :class:`Analysis`.

Two front doors, one pipeline behind them:

* :func:`analyse_factory` probes a factory at the sentinel primes (and depths) on meta, as ``wrap`` does;
* :func:`analyse_model` reads one model the user built at the sentinel width (the ezmup style).

Both hand what they built to :func:`learn`, which runs the same stage functions in the same order
(roles, residual branches, base init, attention routes, zero-init targets). From the analysis on,
``plan.make_plan`` is pure. The value round-trips through JSON exactly (:meth:`Analysis.to_json`), so
it can be stored, compared, and reused by another process or a tuning trial without tracing again.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import sympy
import torch
from torch import nn

from .attention import AttentionSpec, attention_routes
from .branches import branches_from_globs, find_branches
from .inits import RANDOM, InitLaw, checked_laws, draws, init_laws, model_laws, recording, zero_init_targets
from .roles import Role, classify
from .shapes import WIDTH
from .constants import MODES, WidthConstant, width_constants
from .trace import ShapeTable, build_on_meta, probe, probe_depth, shape_table, smallest_width_multiple
from .usage import ForwardTrace, TraceRun, Use, example_batch, trace_anywhere, trace_run


@dataclass(frozen=True)
class AnalysisOptions:
    """The options that shaped an analysis (everything but the factory's own code and example inputs)."""

    base_width: int
    base_depth: int | None = None
    sentinels: tuple[int, ...] = (47,)
    width_multiple: int = 1
    width_arg: str = "width"
    depth_arg: str = "depth"
    roles: dict[str, str] = field(default_factory=dict)  # the user's overrides, by name or glob
    branches: tuple[str, ...] | None = None  # the user's residual-branch globs (None: found by the trace)
    zero_init: tuple[str, ...] = ()
    trace: bool = True
    width_constants: str = "correct"  # numbers that change with the width: "correct", "warn" or "error"
    fixed_kwargs: dict[str, str] = field(default_factory=dict)  # the factory's other arguments, as repr()
    source: str = "factory"  # "factory": probed at several primes; "model": one model built at the sentinel


@dataclass(frozen=True)
class Analysis:
    """Everything learned about a model family; what ``make_plan`` turns into numbers for a target."""

    options: AnalysisOptions
    table: ShapeTable
    uses: dict[str, tuple[Use, ...]] | None  # per parameter (2+ dims) from the meta forward; None: not traced
    roles: dict[str, Role]  # each with where it came from (trace, convention, shape, override)
    branches: dict[str, str]  # residual-branch module templates -> "fold" or "hook"
    attention: dict[str, AttentionSpec]  # attention module templates whose head dim grows -> their route
    zeroed: frozenset[str]  # parameter templates that start at zero (zero_init)
    width_numbers: tuple[str, ...]  # numbers outside attention that change with the width, left as they are
    inits: dict[str, InitLaw]  # parameter templates -> the factory's init law in width and depth
    init_builds: int  # seeded CPU builds at base that checked (or measured) the laws; 0: the user's own model
    forward: TraceRun = TraceRun("meta")  # where the traced forwards ran (meta, or CPU where meta failed)
    width_constants: tuple[WidthConstant, ...] = ()  # numbers that change with the width, held at their base value
    notes: tuple[str, ...] = ()  # what the analysis warned about (said again when it is read from a cache)

    def to_json(self) -> str:
        return json.dumps(plain(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Analysis:
        return _typed(cls, json.loads(text))

    def __str__(self) -> str:
        o, t = self.options, self.table
        lines = [f"Analysis of a {o.source} at base width {o.base_width}"
                 + (f", base depth {o.base_depth}" if o.base_depth is not None else "")
                 + f", probed at widths {list(t.widths)}, forward {self.forward}"
                 + (f" ({self.forward.reason})" if self.forward.reason else "")]
        lines += [f"  stack {s.template}: {s.per_depth}*depth{s.offset:+d} blocks" for s in t.stacks]
        for name, p in t.params.items():
            r, law = self.roles[name], self.inits[t.template(name)]
            lines.append(f"  {name}  ({', '.join(map(str, p.dims))})  {r.role} from {r.source}, fan-in "
                         f"{r.fan_in(p.dims)}, init {law.kind}: {law.how}"
                         + (f", tied readout {r.tied_readout}" if r.tied_readout else "")
                         + (", starts at zero" if t.template(name) in self.zeroed else ""))
        lines += [f"  residual branch {m}: {kind}" for m, kind in self.branches.items()]
        lines += [f"  attention {m}: head dim {a.head_dim}, route {a.via}" + (f" via {a.query}" if a.query else "")
                  for m, a in self.attention.items()]
        lines += [f"  width-dependent number: {n}" for n in self.width_numbers]
        lines += [f"  width-dependent number held at base: {c.note}, on {c.module} ({c.how})"
                  for c in self.width_constants]
        lines.append(f"  init laws checked on {self.init_builds} seeded build(s) at base")
        return "\n".join(lines)


def _noting(analyse: Callable[..., Analysis]) -> Callable[..., Analysis]:
    """The analysis keeps its warnings as notes, and says them (again, when read from a cache: :func:`say`)."""
    @functools.wraps(analyse)
    def run(*args, **kwargs) -> Analysis:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = analyse(*args, **kwargs)
        ours = [w for w in caught if w.category is UserWarning]
        for w in caught:
            if w.category is not UserWarning:  # third-party deprecations and the like: passed on as they came
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        found = dataclasses.replace(found, notes=tuple(dict.fromkeys(str(w.message) for w in ours)))
        say(found)
        return found
    return run


def say(analysis: Analysis) -> None:
    for note in analysis.notes:
        warnings.warn(note, UserWarning, stacklevel=4)


@_noting
def analyse_factory(factory: Callable[..., nn.Module], options: AnalysisOptions,
                    fixed_kwargs: Mapping[str, Any] | None = None, example_inputs: Any = None) -> Analysis:
    """Probe ``factory`` at the sentinel primes (times ``width_multiple``) and learn everything from those builds."""
    o, fixed = options, dict(fixed_kwargs or {})

    def kwargs(width: int | None, depth: int | None = o.base_depth) -> dict[str, Any]:
        return {**fixed, **({} if depth is None else {o.depth_arg: depth}),
                **({} if width is None else {o.width_arg: width})}

    try:
        table, models, seen, first_depth = _probes(factory, o, kwargs)
        depths = () if first_depth is None else tuple(range(first_depth, first_depth + 3))
        width_draws, depth_draws = seen[:len(o.sentinels)], [seen[0], *seen[len(o.sentinels):]] if depths else ()
        laws = init_laws(table, width_draws, depths, depth_draws)
        on_cpu = [lambda w=w: factory(**kwargs(w, first_depth)) for w in table.widths]
        traces = _traces(models, on_cpu, example_inputs, o, table)
    except RuntimeError as exc:  # the factory or its forward failed at a sentinel width
        hint = width_multiple_hint(factory, o, kwargs(None), example_inputs)
        if hint is None:
            raise
        raise RuntimeError(hint) from exc
    checks = dict.fromkeys([(_check_width(o), first_depth), (o.base_width, o.base_depth)])
    laws, builds = checked_laws(factory, laws, table, [(kwargs(w, d), (w, d)) for w, d in checks])
    return learn(table, models[0], traces, o, laws, builds)


def _probes(factory: Callable[..., nn.Module], o: AnalysisOptions, kwargs: Callable[..., dict]):
    """(shape table, meta models at the probe widths, each probe build's init draws, the first probe depth).

    In depth, the factory is probed at depths 1, 2, 3 where it builds there (every block of a stack is used
    and drawn as its first, so one block tells what all of them would, for a fraction of the cost of the base
    depth); else at the base depth and the two after it.
    """
    if o.base_depth not in (None, 1):
        try:
            return _probes_from(factory, o, kwargs, 1)
        except Exception:  # the user's factory may refuse one block: probe at the base depth instead
            pass
    return _probes_from(factory, o, kwargs, o.base_depth)


def _probes_from(factory: Callable[..., nn.Module], o: AnalysisOptions, kwargs: Callable[..., dict],
                 first_depth: int | None):
    with recording() as recorder:
        table, models = probe(factory, width_arg=o.width_arg, sentinels=o.sentinels, width_multiple=o.width_multiple,
                              fixed_kwargs=kwargs(None, first_depth))
        deeper = []
        if first_depth is not None:
            table, deeper = probe_depth(factory, table, models[0], depth_arg=o.depth_arg, base_depth=o.base_depth,
                                        first_depth=first_depth, fixed_kwargs=kwargs(table.widths[0], first_depth))
    return table, models, [draws(m, recorder) for m in (*models, *deeper)], first_depth


def _check_width(o: AnalysisOptions) -> int:
    """The smallest width the factory must build (a multiple of width_multiple) with some 32 entries per row."""
    return min(o.base_width, o.width_multiple * -(-32 // o.width_multiple))


def width_multiple_hint(factory: Callable[..., nn.Module], options: AnalysisOptions, kwargs: Mapping[str, Any],
                        example_inputs: Any) -> str | None:
    """One line naming the smallest width_multiple at which the factory builds and runs its forward at every sentinel,
    when divisibility is what stops it (a sentinel width fails, the base width does not); None otherwise.

    An error rather than a silent change of the probes: the user passes the value once, and any target width
    then has to be a multiple of it too.
    """
    o = options

    def failure(width: int) -> Exception | None:
        try:
            model = build_on_meta(factory, {**kwargs, o.width_arg: width})
            if o.trace:
                model.eval()
                with torch.no_grad():
                    model(*example_batch(model, example_inputs))
        except Exception as exc:  # the user's factory and forward: any failure counts
            return exc
        return None

    failed = next(((p * o.width_multiple, e) for p in o.sentinels if (e := failure(p * o.width_multiple))), None)
    if failed is None or failure(o.base_width) is not None:
        return None
    multiple = smallest_width_multiple(lambda width: failure(width) is not None, o.sentinels, o.width_multiple)
    if multiple is None:
        return None
    width, exc = failed
    cause = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, whatever the factory's message
    line = f"the factory fails at the sentinel width {width} ({cause}) but builds and runs at every sentinel with " \
           f"width_multiple={multiple}"
    if o.base_width % multiple:
        return (f"{line}, which does not divide base_width={o.base_width}: choose a base_width that is a multiple of "
                f"{multiple} and pass width_multiple={multiple} to ezmup_plus.wrap")
    return f"{line}: pass width_multiple={multiple} to ezmup_plus.wrap"


@_noting
def analyse_model(model: nn.Module, options: AnalysisOptions) -> Analysis:
    """Read ``model``, built at the sentinel width, as the one probe: a dim that is a multiple of the sentinel is
    that multiple of ``w``. Its own tensors are the base init (one draw)."""
    meta = copy.deepcopy(model).to("meta")
    table = shape_table([meta], options.sentinels[:1])
    if not any(p.scaled_dims for p in table.params.values()):
        raise ValueError(f"no parameter of this {type(model).__name__} has a dim that is a multiple of the sentinel "
                         f"{options.sentinels[0]}: build the model at width={options.sentinels[0]} before passing "
                         "width=... to get_mup_optimizer")
    try:
        traces = _traces([meta], [lambda: copy.deepcopy(model).cpu()], None, options, table)
    except (RuntimeError, ValueError) as exc:  # get_mup_optimizer takes no example inputs: fall back, say so
        warnings.warn(f"the forward was not traced, so roles come from layer types: {exc}", stacklevel=4)
        traces = []
    return learn(table, meta, traces, options, model_laws(table, model), 0)


def learn(table: ShapeTable, meta_model: nn.Module, traces: Sequence[ForwardTrace], options: AnalysisOptions,
          inits: dict[str, InitLaw], init_builds: int) -> Analysis:
    """The stages after the probes, the same for both front doors: roles, branches, attention, zero-init,
    width-dependent numbers.

    ``traces[i]`` ran at ``table.widths[i]`` (with ``trace=False``, at most one, for the residual adds only);
    ``meta_model`` is the first probe's build; ``inits`` are the init laws by parameter template, checked on
    ``init_builds`` seeded builds.
    """
    adds = traces[0].adds if traces else ()
    traces = traces if options.trace else []
    uses = traces[0].uses if traces else None
    roles = classify(table, options.roles, uses)
    branches = _branches([n for n, _ in meta_model.named_modules()], table, options.branches, adds)
    drawn = {t for t, law in inits.items() if law.kind in (*RANDOM, "unread")}
    attention = attention_routes(table, [t.attention for t in traces], drawn)
    zeroed = zero_init_targets(table, roles, options.zero_init, traces[0].attention if traces else None)
    constants, numbers = _width_constants(traces, table, drawn, options.width_constants)
    return Analysis(options, table, uses, roles, branches, attention, zeroed, numbers, inits, init_builds,
                    trace_run(traces), constants)


def _width_constants(traces: Sequence[ForwardTrace], table: ShapeTable, drawn: set[str],
                     mode: str) -> tuple[tuple[WidthConstant, ...], tuple[str, ...]]:
    """The corrections (under "correct") and the numbers left as they are, each warned about ("error": refused)."""
    if mode not in MODES:
        raise ValueError(f"width_constants={mode!r} is unknown; choose one of {MODES}")
    corrections, notes = ((), ()) if len(traces) < 2 else width_constants(
        traces[0], traces[1], table.widths[:2], table, drawn, correct=mode == "correct")
    if notes and mode == "error":
        raise ValueError("numbers that change with the width (width_constants='error'):\n  " + "\n  ".join(notes))
    for note in notes:
        warnings.warn(f"{note}: a number that changes with the width, which muP does not account for"
                      + (" and which ezmup_plus cannot hold at its base value here" if mode == "correct" else "")
                      + ". Make it a constant in the factory, or check the transfer with a coordinate check",
                      stacklevel=5)
    return corrections, notes


def _traces(models: Sequence[nn.Module], on_cpu: Sequence[Callable[[], nn.Module]], example_inputs: Any,
            options: AnalysisOptions, table: ShapeTable) -> list[ForwardTrace]:
    """Parameter uses, attention and residual adds from a forward at each probe width ([] when not traced).

    Uses are the same at every width, so they are followed once; a second width shows which numbers
    change with the width, and the third is traced only to fit the head dims of attention, if any. Each
    runs on meta, or on CPU once meta has failed (``on_cpu[i]`` builds the model at ``table.widths[i]``).
    With ``trace=False`` one forward still finds the residual branches of a depth-repeated stack, unless
    they are named.
    """
    if not options.trace:
        warnings.warn("trace=False: roles come from layer types and conventions, tied weights from aliasing, and "
                      "attention logits keep the factory's 1/sqrt(d)", stacklevel=4)
        if not table.stacks or options.branches is not None:
            return []
        return [trace_anywhere(models[0], on_cpu[0], follow_params=False)]
    traces = [trace_anywhere(models[0], on_cpu[0], example_inputs)]
    more = len(models) if traces[0].attention else 2
    for model, build in list(zip(models, on_cpu))[1:more]:
        traces.append(trace_anywhere(model, build, example_inputs, follow_params=False,
                                     on_meta=traces[0].device == "meta"))
    return traces


def _branches(modules: Sequence[str], table: ShapeTable, globs: Sequence[str] | None,
              adds: Sequence[str]) -> dict[str, str]:
    """Residual-branch output modules of the repeated blocks (templates -> "fold" or "hook")."""
    if not table.stacks:
        return {}
    if globs is not None:
        return branches_from_globs(modules, table, globs)
    return find_branches(adds, table)


# --- exact JSON: plain types out, the dataclass field types say how to read them back ------------

def plain(value: Any) -> Any:
    """Plain JSON types: dataclasses as dicts, sympy as strings, frozensets sorted."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, sympy.Basic):
        return str(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, frozenset):
        return sorted(plain(v) for v in value)
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return value


@functools.lru_cache(maxsize=1024)
def _expression(text: str) -> sympy.Expr:
    """A dim read back: the same few expressions (w, 4*w, 65) recur in every block."""
    return sympy.sympify(text, locals={"w": WIDTH})


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """A dataclass's resolved field types, once per class (resolving them is most of a cache load)."""
    return typing.get_type_hints(cls)


def _typed(hint: Any, data: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if data is None:
            return None
        return _typed(next(a for a in args if a is not type(None)), data)
    if dataclasses.is_dataclass(hint):
        hints = _field_types(hint)
        return hint(**{k: _typed(hints[k], v) for k, v in data.items()})
    if hint is sympy.Expr:
        return _expression(data)
    if origin is tuple:
        items = args[:1] * len(data) if len(args) == 2 and args[1] is Ellipsis else args
        return tuple(_typed(a, v) for a, v in zip(items, data))
    if origin in (dict, Mapping):
        return {k: _typed(args[1], v) for k, v in data.items()}
    if origin is frozenset:
        return frozenset(_typed(args[0], v) for v in data)
    if hint is float and data is not None:
        return float(data)
    return data
