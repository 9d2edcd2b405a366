"""The factory's own init, which muP's init is relative to: read as a law in width and depth.

During the meta builds at the probe widths and depths, :class:`InitRecorder` watches every init
call (``nn.init.*``, ``Tensor.normal_``/``uniform_``/``fill_``..., ``torch.randn(...) * c`` wrapped
in a Parameter) and works out the expected variance of each parameter's entries there, exactly, with
no values drawn. Fitted across the probes, that is the tensor's :class:`InitLaw`: the factory's
expected std at any width and depth. So the build can bring every tensor to its planned std with a
deterministic factor (planned std over the factory's own std at the target), whatever the init law
(PyTorch's default bias init, ``d**-0.5`` embeddings, GPT-2's ``1/sqrt(2L)``, xavier, orthogonal).

One seeded CPU build at the base width checks each law against real draws. A tensor whose init could
not be read (or whose law the check refutes) is an ``"unread"`` law: its base std is measured on
pooled builds, and the plan rescales it by the rule's factor relative to whatever the factory draws.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .attention import query_params
from .roles import Role
from .trace import ShapeTable
from .usage import AttentionSite

ZERO_INITS = ("readout", "query")
RANDOM = ("random", "orthogonal")  # law kinds with an expected std


@dataclass(frozen=True)
class Draw:
    """How one build drew one tensor: the kind of init and the expected variance of an entry."""

    kind: str  # "random", "orthogonal", "constant", "structured" (identity, partial) or "unread"
    var: float = 0.0  # of a random draw
    how: str = ""  # the init that drew it, for the plan and for messages
    value: float = 0.0  # of a constant
    low: float = 0.0  # the bounds of a uniform draw, for trunc-normal written as uniform_ + erfinv_
    high: float = 0.0


UNREAD = Draw("unread", how="no init seen")


@dataclass(frozen=True)
class InitLaw:
    """One tensor's init as a function of width and depth (variances of an entry at the probes)."""

    kind: str  # as :class:`Draw`
    how: str
    widths: tuple[int, ...] = ()
    width_vars: tuple[float, ...] = ()  # at each probe width, base depth
    depths: tuple[int, ...] = ()
    depth_vars: tuple[float, ...] = ()  # at each probe depth, first probe width
    base_std: float | None = None  # measured at base on CPU builds ("unread" laws only)

    def std(self, width: int, depth: int | None = None) -> float | None:
        """The factory's expected std of an entry at ``width`` (and ``depth``); None where not a random law."""
        if self.kind not in RANDOM:
            return None
        var = _fit(self.widths, self.width_vars)(width)
        if depth is not None and self.depths:
            var *= _fit(self.depths, self.depth_vars)(depth) / self.depth_vars[0]
        return math.sqrt(var)


# --- reading init calls on meta tensors ------------------------------------------------------

F = torch.Tensor
CONSTANTS = {F.zero_: lambda a, k: 0.0, F.fill_: lambda a, k: float(a[1])}
SCALES = {F.mul_: 1, F.__imul__: 1, F.div_: -1, F.__itruediv__: -1, F.mul: 1, F.__mul__: 1, F.__rmul__: 1,
          torch.mul: 1, F.div: -1, F.__truediv__: -1, torch.div: -1}
SHIFTS = {F.add_: 1, F.__iadd__: 1, F.add: 1, F.__add__: 1, F.__radd__: 1, torch.add: 1,
          F.sub_: -1, F.__isub__: -1, F.sub: -1, F.__sub__: -1, torch.sub: -1}
DESCRIPTORS = (F.data, F.T, F.mT)  # p.data, p.T: the same entries
ALIASES = {F.view, F.view_as, F.reshape, F.t, F.transpose, F.permute, F.flatten, F.unflatten,
           F.squeeze, F.unsqueeze, F.contiguous, F.detach, F.to, F.float, F.double, F.half, F.bfloat16, F.type_as}
PIECES = {F.__getitem__, F.narrow, F.select, F.split, F.chunk, F.unbind}
COPIES = {F.clone, torch.clone}
IN_PLACE_KEEP = {F.requires_grad_, F.clamp_, F.clamp}  # clamp_ ends a trunc-normal written out by hand
PATCHED = ("trunc_normal_", "orthogonal_", "sparse_")  # no torch-function dispatch, and no-ops on meta


class InitRecorder(TorchFunctionMode):
    """Follows every tensor created during a build to the draw it ends with (by object, kept alive)."""

    def __init__(self):
        super().__init__()
        self.draws: dict[int, Draw] = {}
        self.roots: dict[int, tuple[int, float]] = {}  # a view -> (its root tensor, its share of the entries)
        self.keep: list[torch.Tensor] = []

    def draw_of(self, t: torch.Tensor) -> Draw:
        root, _ = self.roots.get(id(t), (id(t), 1.0))
        return self.draws.get(root, UNREAD)

    def set(self, t: torch.Tensor, draw: Draw) -> None:
        root, share = self.roots.get(id(t), (id(t), 1.0))
        if share < 1.0:  # an init of part of the tensor (an embedding's padding row set to zero)
            whole = self.draws.get(root, UNREAD)
            draw = (replace(whole, var=whole.var * (1.0 - share)) if draw.kind == "constant" and draw.value == 0.0
                    and whole.kind == "random" else Draw("structured", how=f"{draw.how} on part of it"))
        self.draws[root] = draw
        self.keep.append(t)

    def link(self, new: Any, old: Any, share: float = 1.0) -> None:
        if isinstance(new, torch.Tensor) and isinstance(old, torch.Tensor):
            root, old_share = self.roots.get(id(old), (id(old), 1.0))
            self.roots[id(new)] = (root, old_share * share)
            self.keep += [new, old]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self.record(func, args, kwargs, out)
        except (TypeError, ValueError, IndexError, ZeroDivisionError, RuntimeError):
            pass  # an init this reader cannot follow leaves its tensor "unread", never a failed build
        return out

    def record(self, func, args, kwargs, out) -> None:
        init = getattr(nn.init, getattr(func, "__name__", ""), None)
        if init is func:  # nn.init.normal_/uniform_/constant_/kaiming_uniform_ dispatch here
            tensor = kwargs.get("tensor", args[0] if args else None)
            self.set(tensor, init_draw(func.__name__, tensor, args[1:], kwargs))
        elif func in CONSTANTS:
            self.set(args[0], Draw("constant", value=CONSTANTS[func](args, kwargs), how=func.__name__))
        elif func in (F.normal_, F.uniform_):
            self.set(args[0], tensor_draw(func.__name__, args[1:], kwargs))
        elif func is F.erfinv_:
            self.set(args[0], _erfinv(self.draw_of(args[0])))
        elif func is F.copy_:
            self.set(args[0], self.draw_of(args[1]) if isinstance(args[1], torch.Tensor) else UNREAD)
        elif func in SCALES or func in SHIFTS:
            self._arithmetic(func, args, out)
        elif func in ALIASES or getattr(func, "__self__", None) in DESCRIPTORS:
            self.link(out, args[0])
        elif func in PIECES:
            for piece in out if isinstance(out, (tuple, list)) else [out]:
                self.link(piece, args[0], piece.numel() / max(1, args[0].numel()))
        elif func in COPIES:
            self.draws[id(out)] = self.draw_of(args[0])
            self.keep.append(out)
        elif func in CREATIONS and isinstance(kwargs.get("out"), torch.Tensor):  # torch.eye(n, out=weight)
            self.set(kwargs["out"], CREATIONS[func](args, kwargs))
        elif isinstance(out, torch.Tensor) and func in CREATIONS:
            self.draws[id(out)] = CREATIONS[func](args, kwargs)
            self.keep.append(out)
        elif func is F.__setitem__ and id(args[0]) in self._known():
            self.set(args[0], Draw("structured", how="entries assigned by index"))
        elif _in_place(func) and args and isinstance(args[0], torch.Tensor) and id(args[0]) in self._known():
            self.set(args[0], Draw("unread", how=f"{func.__name__} (not read)"))

    def _known(self) -> set[int]:
        return set(self.draws) | set(self.roots)

    def _arithmetic(self, func, args, out) -> None:
        """A draw times, over, plus or minus a number; in place or as a new tensor."""
        tensor, number = args[0], args[1] if len(args) > 1 else None
        if func is F.__rmul__ or not isinstance(tensor, torch.Tensor):
            tensor, number = (args[1], args[0]) if isinstance(args[1], torch.Tensor) else (tensor, number)
        if not isinstance(number, (int, float)) or id(tensor) not in self._known() and id(tensor) not in self.draws:
            return
        d = self.draw_of(tensor)
        if func in SCALES:
            c = float(number) ** SCALES[func]
            d = replace(d, var=d.var * c * c, value=d.value * c)
            d = replace(d, how=f"{d.how} x {c:.4g}")
        elif d.kind == "constant":
            d = replace(d, value=d.value + SHIFTS[func] * float(number))
        if func.__name__.endswith("_") or func.__name__.startswith("__i"):
            self.set(tensor, d)
        elif isinstance(out, torch.Tensor):
            self.draws[id(out)] = d
            self.keep.append(out)


def _in_place(func) -> bool:
    """An in-place tensor method this reader does not follow (it leaves the tensor "unread")."""
    name = getattr(func, "__name__", "")
    return name.endswith("_") and not name.startswith("_") and func not in IN_PLACE_KEEP


def _constant(value: float) -> Callable[[tuple, dict], Draw]:
    return lambda args, kwargs: Draw("constant", value=value, how="constant")


def _normal_creation(args, kwargs) -> Draw:
    std = kwargs.get("std", args[1] if len(args) > 1 and isinstance(args[1], (int, float)) else 1.0)
    return Draw("random", float(std) ** 2, how="torch.normal")


CREATIONS = {
    torch.randn: lambda a, k: Draw("random", 1.0, how="torch.randn"),
    torch.rand: lambda a, k: Draw("random", 1.0 / 12, how="torch.rand", low=0.0, high=1.0),
    torch.zeros: _constant(0.0), torch.ones: _constant(1.0),
    torch.full: lambda a, k: Draw("constant", value=float(k.get("fill_value", a[1] if len(a) > 1 else 0.0)),
                                  how="full"),
    torch.empty: lambda a, k: UNREAD, torch.normal: _normal_creation,
    torch.eye: lambda a, k: Draw("structured", how="torch.eye"),
}


def tensor_draw(name: str, args: Sequence, kwargs: Mapping) -> Draw:
    """``Tensor.normal_(mean, std)`` / ``Tensor.uniform_(from, to)``."""
    if name == "normal_":
        std = kwargs.get("std", args[1] if len(args) > 1 else 1.0)
        return Draw("random", float(std) ** 2, how=f"normal_(std={float(std):.4g})")
    low, high = kwargs.get("from", args[0] if args else 0.0), kwargs.get("to", args[1] if len(args) > 1 else 1.0)
    return _uniform(float(low), float(high))


def _uniform(low: float, high: float) -> Draw:
    return Draw("random", (high - low) ** 2 / 12, how=f"uniform_({low:.4g}, {high:.4g})", low=low, high=high)


def init_draw(name: str, tensor: torch.Tensor, args: Sequence, kwargs: Mapping) -> Draw:
    """The draw of one ``torch.nn.init`` function, with the std it computes from the tensor's shape."""
    get = lambda key, i, default: kwargs.get(key, args[i] if len(args) > i else default)  # noqa: E731
    if name == "normal_":
        std = float(get("std", 1, 1.0))
        return Draw("random", std**2, how=f"normal_(std={std:.4g})")
    if name == "uniform_":
        return _uniform(float(get("a", 0, 0.0)), float(get("b", 1, 1.0)))
    if name in ("constant_", "zeros_", "ones_"):
        return Draw("constant", value={"zeros_": 0.0, "ones_": 1.0}.get(name, float(get("val", 0, 0.0))), how=name)
    if name in ("kaiming_uniform_", "kaiming_normal_"):
        a, mode, nonlinearity = get("a", 0, 0.0), get("mode", 1, "fan_in"), get("nonlinearity", 2, "leaky_relu")
        std = nn.init.calculate_gain(nonlinearity, a) / math.sqrt(nn.init._calculate_correct_fan(tensor, mode))
        return Draw("random", std**2, how=name)
    if name in ("xavier_uniform_", "xavier_normal_"):
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(tensor)
        return Draw("random", float(get("gain", 0, 1.0)) ** 2 * 2.0 / (fan_in + fan_out), how=name)
    if name == "trunc_normal_":
        mean, std = float(get("mean", 0, 0.0)), float(get("std", 1, 1.0))
        low, high = float(get("a", 2, -2.0)), float(get("b", 3, 2.0))
        return Draw("random", std**2 * _truncated_var((low - mean) / std, (high - mean) / std), how=name)
    if name == "orthogonal_":
        rows = tensor.shape[0]
        return Draw("orthogonal", float(get("gain", 0, 1.0)) ** 2 / max(rows, tensor.numel() // rows), how=name)
    return Draw("structured", how=name)  # eye_, dirac_, sparse_: kept as built


def _truncated_var(alpha: float, beta: float) -> float:
    """Variance of a standard normal truncated to [alpha, beta]."""
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: (1 + math.erf(x / math.sqrt(2))) / 2  # noqa: E731
    mass = cdf(beta) - cdf(alpha)
    mean = (pdf(alpha) - pdf(beta)) / mass
    return 1 + (alpha * pdf(alpha) - beta * pdf(beta)) / mass - mean * mean


def _erfinv(d: Draw) -> Draw:
    """erfinv of U(low, high) on (-1, 1) is a normal truncated at sqrt(2) erfinv(bounds), scaled by 1/sqrt(2)."""
    if not (d.how.startswith("uniform_") and -1 < d.low < d.high < 1):
        return Draw("unread", how="erfinv_ of an unread draw")
    alpha, beta = (math.sqrt(2) * float(torch.special.erfinv(torch.tensor(x, dtype=torch.float64))) for x in (
        d.low, d.high))
    return Draw("random", _truncated_var(alpha, beta) / 2, how="trunc-normal (uniform_, erfinv_)")


@contextlib.contextmanager
def recording() -> Iterator[InitRecorder]:
    """Record the inits of every build inside the block (on any device; meta draws nothing)."""
    recorder = InitRecorder()
    new_parameter = nn.Parameter.__new__

    def parameter(cls, data=None, requires_grad=True):
        p = new_parameter(cls, data, requires_grad)
        recorder.link(p, data)
        return p

    try:
        nn.Parameter.__new__ = staticmethod(parameter)
        with watching(recorder):
            yield recorder
    finally:
        nn.Parameter.__new__ = staticmethod(new_parameter)


@contextlib.contextmanager
def watching(recorder: InitRecorder) -> Iterator[None]:
    """``recorder`` active, with the init functions it cannot see otherwise wrapped where they are looked up
    at call time: ``torch.nn.init``, and Hugging Face's own table of them (if imported by now)."""
    tables = [vars(nn.init)]
    if "transformers.initialization" in sys.modules:
        tables.append(sys.modules["transformers.initialization"].TORCH_INIT_FUNCTIONS)
    saved = [(table, name, table[name]) for table in tables for name in PATCHED if name in table]

    def watched(name: str, original: Callable) -> Callable:
        def call(tensor, *args, **kwargs):
            recorder.set(tensor, init_draw(name, tensor, args, kwargs))
            return original(tensor, *args, **kwargs)
        return call

    try:
        for table, name, original in saved:
            table[name] = watched(name, original)
        with recorder:
            yield
    finally:
        for table, name, original in saved:
            table[name] = original


def draws(model: nn.Module, recorder: InitRecorder) -> dict[str, Draw]:
    """Each parameter's draw in a build made under ``recorder`` (Hugging Face models skip their own init on
    meta, so it is run here, where it draws nothing)."""
    if "transformers" in sys.modules and isinstance(model, sys.modules["transformers"].PreTrainedModel):
        with watching(recorder):
            model.initialize_weights()
    return {name: recorder.draw_of(p) for name, p in model.named_parameters()}


# --- laws from the draws at the probes -------------------------------------------------------

def init_laws(table: ShapeTable, by_width: Sequence[Mapping[str, Draw]], depths: Sequence[int] = (),
              by_depth: Sequence[Mapping[str, Draw]] = ()) -> dict[str, InitLaw]:
    """A law per parameter template, from its draws at the probe widths (base depth) and depths (first width).

    Blocks of a stack share their template's law; their variances are pooled at each probe. A law is
    kept only where every probe agrees on the kind and the variances fit one law on every probe.
    """
    laws = {}
    widths = table.widths[:len(by_width)]
    for template in dict.fromkeys(table.template(n) for n in table.params):
        seen = [_pooled(table, template, d) for d in by_width]
        deep = [_pooled(table, template, d) for d in by_depth]
        kinds = {d.kind for d in seen + deep}
        first = seen[0]
        if len(kinds) > 1:
            laws[template] = InitLaw("unread", f"{first.how}, not the same init at every width and depth")
        elif first.kind not in RANDOM:
            laws[template] = InitLaw(first.kind, first.how)
        else:
            law = InitLaw(first.kind, first.how, tuple(widths), tuple(d.var for d in seen), tuple(depths),
                          tuple(d.var for d in deep))
            fits = _fits(law.widths, law.width_vars) and (not deep or _fits(law.depths, law.depth_vars))
            laws[template] = law if fits else InitLaw("unread", f"{first.how}, no law in width and depth")
    return laws


def _pooled(table: ShapeTable, template: str, draws: Mapping[str, Draw]) -> Draw:
    found = [d for name, d in draws.items() if table.template(name) == template]
    if not found:
        return UNREAD
    if len({(d.kind, d.how.split(" x ")[0]) for d in found}) > 1 or found[0].kind not in RANDOM:
        return found[0] if len({d.kind for d in found}) == 1 else replace(UNREAD, how="different inits per block")
    return replace(found[0], var=sum(d.var for d in found) / len(found))


def _fit(xs: Sequence[int], ys: Sequence[float]) -> Callable[[float], float]:
    """The law through the first two probes: 1/var affine in x (constant, 1/fan_in, xavier), else a power of x."""
    if len(xs) < 2 or ys[0] == ys[1]:
        return lambda x: ys[0]
    slope = (1 / ys[1] - 1 / ys[0]) / (xs[1] - xs[0])
    affine = lambda x: 1 / (1 / ys[0] + slope * (x - xs[0]))  # noqa: E731
    if len(xs) < 3 or math.isclose(affine(xs[2]), ys[2], rel_tol=1e-6):
        return affine
    power = math.log(ys[1] / ys[0]) / math.log(xs[1] / xs[0])
    return lambda x: ys[0] * (x / xs[0]) ** power


def _fits(xs: Sequence[int], ys: Sequence[float]) -> bool:
    law = _fit(xs, ys)
    return all(y > 0 and math.isclose(law(x), y, rel_tol=1e-6) for x, y in zip(xs, ys))


# --- the check against real draws, and what is measured instead ------------------------------

def checked_laws(factory: Callable[..., nn.Module], laws: Mapping[str, InitLaw], table: ShapeTable,
                 builds: Sequence[tuple[Mapping, tuple[int, int | None]]]) -> tuple[dict[str, InitLaw], int]:
    """Each law against one seeded CPU draw: a law the draw refutes is "unread"; unread laws get a base std
    measured on pooled builds. Returns the laws and how many builds that took.

    ``builds`` are (factory kwargs, (width, depth)) to check at, cheapest first (a small width and one block
    cost a fraction of the base model and test the law off the probes too); the last is the base, where an
    unread law is measured. The plan is a function of the factory alone: the caller's RNG is left as it was.
    """
    checked = dict(laws)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        (kwargs, at), drawn = _first_that_builds(factory, builds)
        for template, (count, std) in _pooled_stds(table, drawn).items():
            law = laws[template]
            if law.kind in RANDOM and _refutation(count, std, law.std(*at)):
                warnings.warn(f"{template}: drawn with std {std:.4g} at width {at[0]}, not the {law.std(*at):.4g} its "
                              f"init ({law.how}) was read as; it is rescaled relative to the factory's own draw",
                              stacklevel=5)
                checked[template] = InitLaw("unread", f"{law.how} (refuted by a real draw)")
        unread = {t for t, law in checked.items() if law.kind == "unread"}
        names = {n for n in table.params if table.template(n) in unread}
        if not names:
            return checked, 1
        base_kwargs = builds[-1][0]
        first = drawn if kwargs is base_kwargs else _cpu_build(factory, base_kwargs)
        count = draws_needed(first, names)  # ~1% on the std of a small tensor
        stds = init_stds(itertools.chain([first], (_cpu_build(factory, base_kwargs) for _ in range(count - 1))))
    for template in unread:
        pooled = [stds[n] for n in names if table.template(n) == template]
        std = None if None in pooled else math.sqrt(sum(x * x for x in pooled) / len(pooled))
        checked[template] = replace(checked[template], kind="unread" if std else "constant", base_std=std)
    return checked, count + (kwargs is not base_kwargs)


def _cpu_build(factory: Callable[..., nn.Module], kwargs: Mapping) -> nn.Module:
    with torch.device("cpu"):
        return factory(**kwargs)


def _first_that_builds(factory: Callable[..., nn.Module], builds: Sequence[tuple[Mapping, Any]]):
    """The first of ``builds`` the factory makes (the user's factory may refuse a small width or one block)."""
    for kwargs, at in builds[:-1]:
        try:
            return (kwargs, at), _cpu_build(factory, kwargs)
        except Exception:  # the user's factory: any refusal means "not this one"
            continue
    return builds[-1], _cpu_build(factory, builds[-1][0])


def _pooled_stds(table: ShapeTable, model: nn.Module) -> dict[str, tuple[int, float]]:
    """Per parameter template: (entries, std) of the model's tensors, pooled over the blocks of a stack."""
    sums: dict[str, tuple[int, float]] = {}
    for name, p in model.named_parameters():
        n, var = p.numel(), float(p.detach().float().var()) if p.numel() > 1 else 0.0
        total, pooled = sums.get(table.template(name), (0, 0.0))
        sums[table.template(name)] = (total + n, pooled + n * var)
    return {t: (n, math.sqrt(v / n)) for t, (n, v) in sums.items()}


def model_laws(table: ShapeTable, model: nn.Module) -> dict[str, InitLaw]:
    """The laws of a model the user built at the sentinel: its own tensors, taken as drawn the same at any
    width (a re-created tensor is drawn with the built one's std); a single number is a constant."""
    laws = {}
    for template, (count, std) in _pooled_stds(table, model).items():
        laws[template] = (InitLaw("random", "as built", table.widths[:1], (std * std,)) if count > 1 and std > 0
                          else InitLaw("constant", "as built"))
    return laws


def _refutation(count: int, std: float, expected: float) -> bool:
    """A sample std too far from ``expected`` for sampling error (6 sigma, plus 2%); too few entries never are."""
    return count >= 8 and abs(std / expected - 1) > 6 * 0.71 / math.sqrt(count) + 0.02


def init_stds(builds: Iterable[nn.Module]) -> dict[str, float | None]:
    """Each tensor's init std, pooled over independent builds; None for constants (zeros, ones, ...)."""
    variances: dict[str, list[float]] = {}
    constant: dict[str, bool] = {}
    for model in builds:
        for name, p in model.named_parameters():
            x = p.detach().float().flatten()
            constant[name] = constant.get(name, True) and (x.numel() < 2 or bool((x == x[0]).all()))
            variances.setdefault(name, []).append(float(x.var()) if x.numel() > 1 else 0.0)
    return {name: None if constant[name] else math.sqrt(sum(v) / len(v)) for name, v in variances.items()}


def draws_needed(model: nn.Module, names: set[str], samples: int = 1 << 14, most: int = 16) -> int:
    """How many builds give each of ``names`` at least ``samples`` values (at most ``most`` builds)."""
    smallest = min((p.numel() for n, p in model.named_parameters() if n in names), default=samples)
    return max(1, min(most, -(-samples // smallest)))


def zero_init_targets(table: ShapeTable, roles: Mapping[str, Role], zero_init: Sequence[str],
                      sites: Mapping[str, AttentionSite] | None) -> frozenset[str]:
    """Parameter templates that ``zero_init`` starts at zero (TP5: the readout, the query projection).

    ``sites`` are the attention computations of the traced forward (None: the forward was not traced).
    """
    names: set[str] = set()
    if "readout" in zero_init:
        readout = {n for n, r in roles.items() if r.role == "output" and len(table.params[n].dims) >= 2}
        if not readout:
            raise ValueError("zero_init=['readout']: no untied readout matrix found (a readout tied to the input "
                             "embedding cannot start at zero)")
        names |= readout
    if "query" in zero_init:
        if sites is None:
            raise ValueError("zero_init=['query'] needs a forward pass on meta: pass example_inputs=... to wrap")
        names |= query_params(table, sites)
    return frozenset(table.template(n) for n in names)
