"""Per-tensor numbers for one target (width, depth): the :class:`MupPlan`.

A plan is plain data: printable as a table, round-trips through YAML, and is what the builder
and the optimizer read. It is computed from the shape table, the roles, the rules and the
factory's own init stds at base; it never touches a model.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Mapping

import sympy
import yaml

from . import rules
from .analysis import Analysis
from .attention import AttentionSpec, unroutable_error
from .hparams import HParams, as_hparams
from .inits import RANDOM
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
    init_std: float | None  # target std; None: keep the factory's values (constants, identity)
    init_factor: float  # target std / base std
    lr_mult: float
    wd_mult: float
    eps_mult: float
    multiplier: float = 1.0  # forward multiplier on this tensor's product (1.0 where folded)
    scale: rules.TensorScale = field(default=rules.TensorScale("finite"), repr=False)
    fold: float = 1.0  # forward multiplier folded into init and LR
    source: str = "convention"
    drawn_std: float | None = None  # the factory's own expected std at this target (its init law)
    init: str = "law"  # how init_std is reached: "law" (init_std / drawn_std), "relative" (x init_factor on
    # whatever the factory draws: its law was not read), "keep" (constant or structured) or "zero"


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


ADDED_FIELDS = ("conventions", "input_multipliers", "forward", "constants", "every", "blocks", "hparams")
"""Written only where not at their default, so plans made before they existed read the same."""


def _without_defaults(record) -> dict:
    return {f.name: getattr(record, f.name) for f in fields(record)
            if f.name not in ADDED_FIELDS or getattr(record, f.name) != _default(f)}


def _default(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


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
    conventions: str = rules.DEFAULT_CONVENTIONS  # a name in rules.CONVENTIONS
    input_multipliers: dict[str, float] = field(default_factory=dict)  # module name -> multiplier on its input
    forward: str = "meta"  # where the analysis traced the forward: "meta", "cpu" (meta failed) or "none"
    constants: tuple[str, ...] = ()  # numbers that change with the width, held at base: how, for the table
    hparams: HParams = HParams()  # the knobs at base that this plan carries to its width and depth

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
        conv = rules.conventions(self.conventions)
        for name, t in self.tensors.items():
            s = rules.fold(family, rules.scaling(self.parametrization, family, t.scale, self.depth_alpha, conv), t.fold)
            tensors[name] = replace(t, lr_mult=s.lr * self.hparams.lr_mult(t.role), wd_mult=s.wd, eps_mult=s.eps)
        return replace(self, family=family, tensors=tensors)

    def effective(self, wd_mode: str = "independent", eps_mode: str = "scaled") -> dict[str, EffectiveNumbers]:
        """Per tensor, the numbers the trained function sees (see :class:`EffectiveNumbers`), with the
        optimizer's ``wd_mode`` and ``eps_mode`` (``get_mup_optimizer``'s defaults unless told)."""
        return effective_numbers(self, wd_mode, eps_mode)

    def __str__(self) -> str:
        head = (f"MupPlan: {self.parametrization}, family {self.family}, width {self.width} "
                f"(base {self.base_width})")
        if self.depth is not None:
            head += f", depth {self.depth} (base {self.base_depth}, alpha {self.depth_alpha})"
        if self.conventions != rules.DEFAULT_CONVENTIONS:
            head += f", conventions {self.conventions}"
        head += ", not traced" if self.forward == "none" else f", traced on {self.forward}"
        if self.hparams.changed():
            head += f"\nhyperparameters (at base): {self.hparams.describe()}"
        columns = ("name", "shape", "fan_in", "role", "from", "init_std", "init", "lr", "wd", "eps", "mult",
                   *EFFECTIVE_COLUMNS)
        rows = [columns]
        effective = self.effective()
        for t in self:
            rows.append((
                t.name,
                "(" + ", ".join(str(d) for d in t.shape_expr) + ")",
                str(t.fan_in),
                t.role,
                t.source,
                _init_cell(t),
                t.init,
                f"{t.lr_mult:.4g}",
                f"{t.wd_mult:.4g}",
                f"{t.eps_mult:.4g}",
                f"{t.multiplier:.4g}",
                *_effective_cells(t, effective[t.name]),
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
        lines = [head] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines += [f"forward multiplier on {m}: {v:.4g}" for m, v in self.multipliers.items()]
        lines += [f"forward multiplier on the input of {m}: {v:.4g}" for m, v in self.input_multipliers.items()]
        lines += [f"width-dependent number held at its base value: {c}" for c in self.constants]
        how = {"scaling": lambda a: "its 'scaling' attribute", "fold": lambda a: f"{a.query}'s init and LR (folded)",
               "query": lambda a: f"rows {_rows(a)} of {a.query}",
               "weight": lambda a: f"rows {_rows(a)} of {a.query}'s in_proj_weight and bias"}
        why = "1/d_head instead of 1/sqrt(d_head)" + (
            f", times hparams.attention {self.hparams.attention:.4g}" if self.hparams.attention != 1.0 else "")
        lines += [f"attention logits of {m}: x {a.factor:.4g} ({why}), through " + how[a.via](a)
                  for m, a in self.attention.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain types only (sympy shapes as strings), for YAML/JSON. Fields added since the first plans (the
        conventions, input multipliers, where the forward was traced...) appear only where they are not their
        defaults, so a plan made as before reads as it always did."""
        out = {k: v for k, v in _without_defaults(self).items() if k != "tensors"}
        out["multipliers"] = dict(self.multipliers)
        if "hparams" in out:
            out["hparams"] = self.hparams.changed()
        out["attention"] = {m: _without_defaults(a) for m, a in self.attention.items()}
        out["tensors"] = [_tensor_to_dict(t) for t in self]
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping) -> MupPlan:
        data = dict(data)
        data["constants"] = tuple(data.get("constants", ()))
        data["hparams"] = HParams.from_dict(data.get("hparams"))
        tensors = {t["name"]: _tensor_from_dict(t) for t in data.pop("tensors")}
        attention = {m: AttentionScale(**a) for m, a in data.pop("attention", {}).items()}
        return cls(tensors=tensors, attention=attention, **data)

    @classmethod
    def from_yaml(cls, text: str) -> MupPlan:
        return cls.from_dict(yaml.safe_load(text))


@dataclass(frozen=True)
class EffectiveNumbers:
    """One tensor's numbers as the trained function sees them, wherever its forward multiplier A lives.

    A multiplier outside the weights acts as if folded into them (``rules.fold``): the effective init std is
    A x init std, the LR factor lr x A**fold_lr (A for Adam-like optimizers, A^2 for SGD), the eps factor eps / A.
    So MuReadout's 1/width_mult in the forward and the same factor folded into init and LR give equal numbers.
    For a fused projection whose query rows an attention factor scales, the numbers are those of the query rows.
    """

    name: str
    init_std: float | None  # None: a constant, kept as built
    lr_factor: float  # relative to base, as the plan's LR multiplier
    eps_factor: float
    wd_factor: float  # the per-step decay lr*wd relative to base (1 under wd_mode="independent")
    multiplier: float  # the forward multiplier on this tensor's product, folded or not
    where: str  # "" (none) or "+"-joined places: folded, hook, input, tied readout, attention:scaling, attention:query


EFFECTIVE_COLUMNS = ("eff_std", "eff_lr", "eff_eps", "where")


def effective_numbers(plan: MupPlan, wd_mode: str = "independent",
                      eps_mode: str = "scaled") -> dict[str, EffectiveNumbers]:
    """:class:`EffectiveNumbers` of every tensor of ``plan``, by name."""
    rules.check_modes(wd_mode, eps_mode)
    fold_lr = rules.FAMILIES[plan.family].fold_lr
    out = {}
    for t in plan:
        outside, places = _outside_multiplier(plan, t)
        inside = t.fold * _folded_readout(plan, t)
        places = (["folded"] if inside != 1.0 else []) + places
        out[t.name] = EffectiveNumbers(
            name=t.name,
            init_std=None if t.init_std is None else t.init_std * outside,
            lr_factor=t.lr_mult * outside**fold_lr,
            eps_factor=(t.eps_mult if eps_mode == "scaled" else 1.0) / outside,
            wd_factor=1.0 if wd_mode == "independent" else t.lr_mult * t.wd_mult,
            multiplier=inside * outside,
            where="+".join(places),
        )
    return out


def _outside_multiplier(plan: MupPlan, t: TensorPlan) -> tuple[float, list[str]]:
    """The forward multiplier on ``t``'s product that is not in its weights, and where it is installed.

    A tensor's own multiplier (a tied weight's readout, a readout's input) is that of its module's hook, so the
    output hooks of enclosing modules count only for tensors without one (residual branches).
    """
    module = t.name.rpartition(".")[0]
    if t.multiplier != 1.0:
        return t.multiplier, ["input" if module in plan.input_multipliers else "tied readout"]
    value, places = 1.0, []
    enclosing = [m for m in plan.multipliers if m == "" or module == m or module.startswith(m + ".")]
    for m in enclosing:
        value *= plan.multipliers[m]
        places = ["hook"]
    for a in plan.attention.values():
        if a.via != "fold" and a.query == module:
            value *= a.factor
            places.append(f"attention:{a.via}")
    return value, places


def _folded_readout(plan: MupPlan, t: TensorPlan) -> float:
    """The readout's 1/m_w that the rules put into its init and LR (1 where it is a forward multiplier)."""
    if plan.parametrization == "sp" or t.role != "output" or rules.conventions(plan.conventions).readout != "folded":
        return 1.0
    return 1.0 / t.scale.m_in


def _effective_cells(t: TensorPlan, e: EffectiveNumbers) -> tuple[str, str, str, str]:
    """The effective columns; eff_std is shown as init_std is (a factor where the factory's law was not read)."""
    outside = e.init_std / t.init_std if t.init_std else 1.0
    std = _init_cell(replace(t, init_std=e.init_std, init_factor=t.init_factor * outside))
    return std, f"{e.lr_factor:.4g}", f"{e.eps_factor:.4g}", f"{e.where} {e.multiplier:.4g}" if e.where else ""


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
    conventions: str = rules.DEFAULT_CONVENTIONS,
    hparams: HParams | Mapping | None = None,
) -> MupPlan:
    """The per-tensor numbers of ``analysis`` at one target: shapes, roles, rules and the factory's base init.

    Residual branches get m_L^-alpha, folded into init and LR or as a forward hook; attention whose
    head dim grows gets sqrt(d_base/d) on its logits (unless SP or ``attn_scale="1/sqrt(d)"``);
    zero-init targets start at zero; ``conventions`` (``rules.CONVENTIONS``) chooses eps, the readout's
    form, the tied init and what ``attn_scale="auto"`` means. ``hparams`` (:class:`~ezmup_plus.hparams.HParams`)
    are the knobs at base, applied on top at every target: output and input multipliers folded into their
    tensors (Adam: init x A, LR x A, eps / A; exact), a tied readout's as a forward multiplier, the attention
    multiplier on the route of muP's own logit factor. Pure: nothing is traced or built.
    """
    rules.check_parametrization(parametrization)
    conv = rules.conventions(conventions)
    hp = as_hparams(hparams)
    table, roles, base_width = analysis.table, analysis.roles, analysis.options.base_width
    keeps_logits = attn_scale == "1/sqrt(d)" or (attn_scale == "auto" and conv.attention == "model")
    scales_logits = not (parametrization == "sp" or keeps_logits)
    if hp.attention != 1.0 and not analysis.attention:
        raise ValueError(f"hparams.attention={hp.attention:g}, but no attention of this model has a head dim that "
                         "grows with the width, the only attention ezmup_plus routes a logit multiplier to")
    attention = analysis.attention if scales_logits or hp.attention != 1.0 else {}

    def logit_factor(spec: AttentionSpec, template: str) -> float:
        return (_logit_factor(spec, template, base_width, width) if scales_logits else 1.0) * hp.attention

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
    base = (base_width, table.depth)
    query_folds = {spec.query: logit_factor(spec, template) for template, spec in attention.items() if spec.via == "fold"}
    inputs = {table.template(n).rpartition(".")[0] for n in table.params if roles[n].role == "input"}
    constant_folds = {c.module: c.factor(base_width, width) for c in analysis.width_constants
                      if c.how == "fold" and parametrization != "sp"}
    tensors: dict[str, TensorPlan] = {}
    multipliers: dict[str, float] = {}
    input_multipliers: dict[str, float] = {}
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
        s = rules.scaling(parametrization, family, scale, alpha, conv)
        module = template.rpartition(".")[0]
        tied = role.tied_readout is not None and role.role == "input"
        if tied and hp.input != 1.0:
            raise ValueError(f"hparams.input={hp.input:g}: {name} is tied to the readout {role.tied_readout}, so the "
                             "input multiplier can be neither folded into it nor told apart from the readout's")
        fold = ((branch_multiplier if analysis.branches.get(module) == "fold" else 1.0) * query_folds.get(module, 1.0)
                * constant_folds.get(module, 1.0) * (hp.output if role.role == "output" else 1.0)
                * (hp.input if module in inputs else 1.0))
        if fold != 1.0:
            s = rules.fold(family, s, fold)
        multiplier = rules.readout_multiplier(parametrization, scale, conv)
        if multiplier != 1.0:  # MuReadout's form: 1/m_w on the readout's input, its bias added after
            input_multipliers[name.rpartition(".")[0]] = multiplier
        if tied and (parametrization != "sp" or hp.output != 1.0):
            # TP5 Table 8: a tied readout keeps the embedding's init (x m_w**tied_init) and LR; its logits get 1/m_w
            multiplier = (1.0 if parametrization == "sp" else 1.0 / scale.m_out) * hp.output
            multipliers[role.tied_readout] = multiplier
            if parametrization != "sp":
                s = replace(s, init=s.init * scale.m_out**conv.tied_init)
        g = hp.init_mult(role.role)
        s = replace(s, init=s.init * g, init_std=None if s.init_std is None else s.init_std * g,
                    lr=s.lr * hp.lr_mult(role.role))
        law = analysis.inits[template]
        # muP's init is relative to the factory's at base; SP is the factory's own draw at the target
        reference = (law.std(*base) if parametrization != "sp" else law.std(width, depth)) if law.kind in RANDOM \
            else law.base_std
        init_std, init_factor, how = ((0.0, 0.0, "zero") if template in analysis.zeroed else
                                      _target_std(reference, s, law.kind))
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
            drawn_std=law.std(width, depth),
            init=how,
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
        factor = logit_factor(spec, template)
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
                   conventions, input_multipliers, analysis.forward.device, tuple(constants), hp)


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

    Every block of a stack repeats the parameters of its block 0, but those only block 0 has (``first_only``).
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
            out += [(stack.block(index) + n[len(first):], n) for n in per_block
                    if index == 0 or n[len(first):] not in stack.first_only]
    return out


def _target_std(base_std: float | None, s: rules.Scaling, kind: str) -> tuple[float | None, float, str]:
    """(target std, target / base, how it is reached): init is relative to the factory's own base init, so
    constants (zeros, ones) and structured inits (identity) are kept as built. The spectral init's absolute
    std is a random matrix's: a tensor whose law was not read as random (Mamba's ``A_log = log(1..N)``) keeps
    its own values and moves with the width only."""
    if base_std is None:
        return None, 1.0, "keep"
    if s.init_std is not None and kind in RANDOM:
        return s.init_std, s.init_std / base_std, "law"
    return base_std * s.init, s.init, "law" if kind in RANDOM else "relative"


def _init_cell(t: TensorPlan) -> str:
    """The init_std column: a std only where the plan can promise it, else the factor or what is kept."""
    if t.init in ("keep", "zero"):
        return "keep" if t.init == "keep" else "0"
    return f"{t.init_std:.4g}" if t.init == "law" else f"x{t.init_factor:.4g}"


def _size(expr: sympy.Expr, width: int, name: str) -> int:
    return evaluate(expr, width, what=name)
