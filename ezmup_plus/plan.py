"""Per-tensor numbers for one target (width, depth): the :class:`MupPlan`.

A plan is plain data: printable as a table, round-trips through YAML, and is what the builder
and the optimizer read. It is computed from the shape table, the roles, the rules and the
factory's own init stds at base; it never touches a model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Mapping

import sympy
import yaml

from . import rules
from .analysis import Analysis
from .attention import AttentionSpec, unroutable_error
from .shapes import WIDTH, evaluate
from .trace import ShapeTable
from .usage import RowBlocks


@dataclass(frozen=True)
class TensorPlan:
    """What happens to one tensor. Multipliers are relative to the base model (1 at base)."""

    name: str
    shape_expr: tuple[sympy.Expr, ...]
    shape: tuple[int, ...]
    role: str
    fan_in: sympy.Expr
    fan_out: sympy.Expr
    init_std: float | None  # target std; None: keep the factory's values (constants such as zeros)
    init_factor: float  # target std / base std
    lr_mult: float
    wd_mult: float
    eps_mult: float
    multiplier: float = 1.0  # forward multiplier on this tensor's product (1.0 where folded)
    scale: rules.TensorScale = field(default=rules.TensorScale("finite"), repr=False)
    fold: float = 1.0  # forward multiplier folded into init and LR
    source: str = "convention"


@dataclass(frozen=True)
class AttentionScale:
    """muP's 1/d_head instead of 1/sqrt(d_head) for one attention module, relative to base."""

    factor: float  # on the logits
    via: str  # "scaling" (the module's attribute is multiplied), "fold" (into the query projection), "query" (a hook
    # on the query rows of a module output) or "weight" (on the query rows of the module's own in_proj_weight)
    query: str | None = None  # the module whose output rows start:stop (``blocks`` times, every ``every``) are the queries
    start: int = 0
    stop: int = 0
    every: int = 0
    blocks: int = 1

    @property
    def rows(self) -> RowBlocks:
        return RowBlocks(self.start, self.stop, self.every, self.blocks)


ADDED_FIELDS = ("forward", "constants", "every", "blocks")  # written only where not at their default: older plans read the same


def _without_defaults(record) -> dict:
    return {f.name: getattr(record, f.name) for f in fields(record)
            if f.name not in ADDED_FIELDS or getattr(record, f.name) != f.default}


@dataclass(frozen=True)
class MupPlan:
    """The plan for one target width (and depth), under one parametrization and optimizer family."""

    width: int
    base_width: int
    parametrization: str
    family: str
    tensors: dict[str, TensorPlan]
    multipliers: dict[str, float] = field(default_factory=dict)  # module name -> output multiplier
    attention: dict[str, AttentionScale] = field(default_factory=dict)  # attention module -> its logit factor
    depth: int | None = None
    base_depth: int | None = None
    depth_alpha: float | None = None
    forward: str = "meta"  # where the analysis traced the forward: "meta", "cpu" (meta failed) or "none"
    constants: tuple[str, ...] = ()  # numbers that change with the width, held at base: how, for the table

    def __getitem__(self, name: str) -> TensorPlan:
        return self.tensors[name]

    def __iter__(self):
        return iter(self.tensors.values())

    def __len__(self) -> int:
        return len(self.tensors)

    def for_family(self, family: str) -> MupPlan:
        """The same plan with LR/WD/eps for another optimizer family (init and multipliers do not change)."""
        if family == self.family:
            return self
        tensors = {}
        for name, t in self.tensors.items():
            s = rules.fold(family, rules.scaling(self.parametrization, family, t.scale, self.depth_alpha), t.fold)
            tensors[name] = replace(t, lr_mult=s.lr, wd_mult=s.wd, eps_mult=s.eps)
        return replace(self, family=family, tensors=tensors)

    def __str__(self) -> str:
        head = (f"MupPlan: {self.parametrization}, family {self.family}, width {self.width} "
                f"(base {self.base_width})")
        if self.depth is not None:
            head += f", depth {self.depth} (base {self.base_depth}, alpha {self.depth_alpha})"
        head += ", not traced" if self.forward == "none" else f", traced on {self.forward}"
        columns = ("name", "shape", "fan_in", "role", "from", "init_std", "lr", "wd", "eps", "mult")
        rows = [columns]
        for t in self:
            rows.append((
                t.name,
                "(" + ", ".join(str(d) for d in t.shape_expr) + ")",
                str(t.fan_in),
                t.role,
                t.source,
                "keep" if t.init_std is None else f"{t.init_std:.4g}",
                f"{t.lr_mult:.4g}",
                f"{t.wd_mult:.4g}",
                f"{t.eps_mult:.4g}",
                f"{t.multiplier:.4g}",
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
        lines = [head] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines += [f"forward multiplier on {m}: {v:.4g}" for m, v in self.multipliers.items()]
        lines += [f"width-dependent number held at its base value: {c}" for c in self.constants]
        how = {"scaling": lambda a: "its 'scaling' attribute", "fold": lambda a: f"{a.query}'s init and LR (folded)",
               "query": lambda a: f"rows {_rows(a)} of {a.query}",
               "weight": lambda a: f"rows {_rows(a)} of {a.query}'s in_proj_weight and bias"}
        lines += [f"attention logits of {m}: x {a.factor:.4g} (1/d_head instead of 1/sqrt(d_head)), through "
                  + how[a.via](a) for m, a in self.attention.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain types only (sympy shapes as strings), for YAML/JSON."""
        out = {k: v for k, v in _without_defaults(self).items() if k != "tensors"}
        out["multipliers"] = dict(self.multipliers)
        out["attention"] = {m: _without_defaults(a) for m, a in self.attention.items()}
        out["tensors"] = [_tensor_to_dict(t) for t in self]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping) -> MupPlan:
        data = dict(data)
        data["constants"] = tuple(data.get("constants", ()))
        tensors = {t["name"]: _tensor_from_dict(t) for t in data.pop("tensors")}
        attention = {m: AttentionScale(**a) for m, a in data.pop("attention", {}).items()}
        return cls(tensors=tensors, attention=attention, **data)

    @classmethod
    def from_yaml(cls, text: str) -> MupPlan:
        return cls.from_dict(yaml.safe_load(text))


def _rows(a: AttentionScale) -> str:
    return f"{a.start}:{a.stop}" + (f" every {a.every} ({a.blocks} blocks)" if a.blocks > 1 else "")


def _tensor_to_dict(t: TensorPlan) -> dict:
    d = {f.name: getattr(t, f.name) for f in fields(t)}
    d["shape_expr"] = [str(e) for e in t.shape_expr]
    d["shape"] = list(t.shape)
    d["fan_in"], d["fan_out"] = str(t.fan_in), str(t.fan_out)
    d["scale"] = asdict(t.scale)
    return d


def _tensor_from_dict(d: Mapping) -> TensorPlan:
    d = dict(d)
    sym = {"w": WIDTH}
    d["shape_expr"] = tuple(sympy.sympify(e, locals=sym) for e in d["shape_expr"])
    d["shape"] = tuple(d["shape"])
    d["fan_in"] = sympy.sympify(d["fan_in"], locals=sym)
    d["fan_out"] = sympy.sympify(d["fan_out"], locals=sym)
    d["scale"] = rules.TensorScale(**d["scale"])
    return TensorPlan(**d)


def make_plan(
    analysis: Analysis,
    *,
    width: int,
    depth: int | None = None,
    parametrization: str = "mup",
    family: str = "adam",
    depth_alpha: float | None = None,
    attn_scale: str = "auto",
) -> MupPlan:
    """The per-tensor numbers of ``analysis`` at one target: shapes, roles, rules and the factory's base init.

    Residual branches get m_L^-alpha, folded into init and LR or as a forward hook; attention whose
    head dim grows gets sqrt(d_base/d) on its logits (unless SP or ``attn_scale="1/sqrt(d)"``);
    zero-init targets start at zero. Pure: nothing is traced or built.
    """
    rules.check_parametrization(parametrization)
    table, roles, base_width = analysis.table, analysis.roles, analysis.options.base_width
    attention = {} if parametrization == "sp" or attn_scale == "1/sqrt(d)" else analysis.attention
    for template, spec in attention.items():
        if spec.via == "none":
            raise unroutable_error(module_names(table, template, table.depth)[0], spec.head_dim)
    if depth is not None and table.depth is None:
        raise ValueError(f"depth={depth} was given but the factory was not probed in depth: pass base_depth=... "
                         "to ezmup_plus.wrap")
    depth = table.depth if depth is None else depth
    alpha = rules.depth_alpha(parametrization, depth_alpha) if table.stacks else None
    m_depth = 1.0 if depth is None else depth / table.depth
    branch_multiplier = 1.0 if alpha is None else m_depth**-alpha
    stds = _pooled_by_template(table, analysis.base_stds)
    query_folds = {spec.query: _logit_factor(spec, template, base_width, width)
                   for template, spec in attention.items() if spec.via == "fold"}
    constant_folds = {c.module: c.factor(base_width, width) for c in analysis.width_constants
                      if c.how == "fold" and parametrization != "sp"}
    tensors: dict[str, TensorPlan] = {}
    multipliers: dict[str, float] = {}
    for name, base_name in expand_names(table, depth):
        p, role, template = table.params[base_name], roles[base_name], table.template(name)
        shape = tuple(evaluate(d, width, what=name) for d in p.dims)
        fan_in, fan_out = role.fan_in(p.dims), role.fan_out(p.dims)
        fan_in_now, fan_out_now = _size(fan_in, width, name), _size(fan_out, width, name)
        scale = rules.TensorScale(
            role=role.role,
            m_in=fan_in_now / _size(fan_in, base_width, name),
            m_out=fan_out_now / _size(fan_out, base_width, name),
            m_depth=m_depth,
            in_block=template != name,
            fan_in=fan_in_now,
            fan_out=fan_out_now,
        )
        s = rules.scaling(parametrization, family, scale, alpha)
        module = template.rpartition(".")[0]
        fold = ((branch_multiplier if analysis.branches.get(module) == "fold" else 1.0) * query_folds.get(module, 1.0)
                * constant_folds.get(module, 1.0))
        if fold != 1.0:
            s = rules.fold(family, s, fold)
        multiplier = 1.0
        if role.tied_readout is not None and parametrization != "sp" and role.role == "input":
            # TP5 Table 8: a tied readout keeps the embedding's init and LR; its logits get 1/m_w
            multiplier = 1.0 / scale.m_out
            multipliers[role.tied_readout] = multiplier
        init_std, init_factor = (0.0, 0.0) if template in analysis.zeroed else _target_std(stds.get(template), s)
        tensors[name] = TensorPlan(
            name=name,
            shape_expr=p.dims,
            shape=shape,
            role=role.role,
            fan_in=fan_in,
            fan_out=fan_out,
            init_std=init_std,
            init_factor=init_factor,
            lr_mult=s.lr,
            wd_mult=s.wd,
            eps_mult=s.eps,
            multiplier=multiplier,
            scale=scale,
            fold=fold,
            source=role.source,
        )
    for template, kind in analysis.branches.items():  # per module: a hooked branch may own no parameter itself
        if kind == "hook":
            multipliers.update({name: branch_multiplier for name in module_names(table, template, depth)})
    constants = []
    for c in analysis.width_constants if parametrization != "sp" else ():
        factor = c.factor(base_width, width)
        if c.how == "hook":
            for name in module_names(table, c.module, depth):
                multipliers[name] = multipliers.get(name, 1.0) * factor
        constants.append(f"{c.note}: x {factor:.4g} on {c.module or 'the root module'}"
                         + (" (folded into its init and LR)" if c.how == "fold" else ""))
    logit_factors = {}
    for template, spec in attention.items():
        factor = _logit_factor(spec, template, base_width, width)
        if factor == 1.0:
            continue
        rows = [evaluate(e, width, what=f"the query rows of {template}")
                for e in (spec.start, spec.stop, spec.every, spec.blocks)]
        queries = module_names(table, spec.query, depth) if spec.query else []
        for i, name in enumerate(module_names(table, template, depth)):
            query = queries[i] if len(queries) > 1 else (queries or [None])[0]
            logit_factors[name] = AttentionScale(factor, spec.via, query, *rows)
    return MupPlan(width, base_width, parametrization, family, tensors,
                   {k: v for k, v in multipliers.items() if v != 1.0}, logit_factors, depth, table.depth, alpha,
                   analysis.forward.device, tuple(constants))


def _logit_factor(spec: AttentionSpec, template: str, base_width: int, width: int) -> float:
    """sqrt(d_base / d): 1/d_head relative to base, on logits the factory scales by 1/sqrt(d_head)."""
    d_base, d = (evaluate(spec.head_dim, w, what=template) for w in (base_width, width))
    return math.sqrt(d_base / d)


def module_names(table: ShapeTable, template: str, depth: int | None) -> list[str]:
    """A module template (``blocks.{i}.attn``) as the concrete names at ``depth``."""
    for stack in table.stacks:
        if template.startswith(stack.template):
            return [stack.block(i) + template[len(stack.template):] for i in range(stack.count(depth))]
    return [template]


def expand_names(table: ShapeTable, depth: int | None) -> list[tuple[str, str]]:
    """(name at ``depth``, the base-depth name it copies) in the model's parameter order.

    Every block of a stack repeats the parameters of its block 0.
    """
    out: list[tuple[str, str]] = []
    done = set()
    for name in table.params:
        where = table.stack_of(name)
        if where is None:
            out.append((name, name))
            continue
        stack, _ = where
        if stack.template in done:
            continue
        done.add(stack.template)
        first = stack.block(0)
        per_block = [n for n in table.params if table.stack_of(n) == (stack, 0)]
        for index in range(stack.count(depth)):
            out += [(stack.block(index) + n[len(first):], n) for n in per_block]
    return out


def _pooled_by_template(table: ShapeTable, base_stds: Mapping[str, float | None]) -> dict[str, float | None]:
    """Init std per name template: blocks share one, pooled over the base model's blocks.

    So a factory's own depth-dependent init (GPT-2's 1/sqrt(2L) on branch outputs) counts at its
    base-depth value and is not applied twice.
    """
    variances: dict[str, list[float]] = {}
    for name, std in base_stds.items():
        if std is not None:
            variances.setdefault(table.template(name), []).append(std**2)
    return {t: math.sqrt(sum(v) / len(v)) for t, v in variances.items()}


def _target_std(base_std: float | None, s: rules.Scaling) -> tuple[float | None, float]:
    """Init is relative to the factory's own base init; constants (zeros, ones) are kept as built."""
    if base_std is None:
        return None, 1.0
    if s.init_std is not None:
        return s.init_std, s.init_std / base_std
    return base_std * s.init, s.init


def _size(expr: sympy.Expr, width: int, name: str) -> int:
    return evaluate(expr, width, what=name)
