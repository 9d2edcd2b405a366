"""Attention whose head dim grows with the width: where muP's 1/d_head logit scale can be put.

Plain functions over what the traces saw (:class:`usage.AttentionSite` at each probe width) and the
shape table. Out comes one :class:`AttentionSpec` per attention module template, naming the route:

* ``"scaling"``: the kernel was given the module's own float ``scaling`` attribute; multiply it.
* ``"fold"``: the queries are all of an unfused projection's output; fold the factor into its init
  and LR (``rules.fold``), which is exact for every optimizer family and needs no hook.
* ``"query"``: the queries are rows of one module output apart from the keys (a fused QKV, also
  interleaved per head as in Bloom or heads + 2 as in Falcon, a norm on the queries); a forward hook
  scales that row set.
* ``"weight"``: the queries are rows of the module's own ``in_proj_weight`` (and bias), which its kernel
  uses internally (``nn.MultiheadAttention``); a pre-hook scales those rows for the forward.
* ``"none"``: none of these fits (a query that is no linear function of a module output, such as
  ``F.normalize(q)``). Under SP or ``attn_scale="1/sqrt(d)"`` that is fine; otherwise the plan refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import sympy

from .roles import IN_OUT_TYPES
from .shapes import WIDTH, fit_dim, scales
from .trace import ShapeTable
from .usage import SCALE_ATTR, AttentionSite, RowBlocks


@dataclass(frozen=True)
class AttentionSpec:
    """One attention module whose head dim grows with the width (sizes in ``w``), and its route."""

    head_dim: sympy.Expr
    via: str  # "scaling", "fold", "query", "weight" or "none" (see the module docstring)
    query: str | None  # the module whose output rows start:stop (``blocks`` times, every ``every``) are the queries
    start: sympy.Expr = sympy.Integer(0)
    stop: sympy.Expr = sympy.Integer(0)
    every: sympy.Expr = sympy.Integer(0)
    blocks: sympy.Expr = sympy.Integer(1)


def attention_routes(table: ShapeTable, sites: Sequence[Mapping[str, AttentionSite]],
                     drawn: set[str]) -> dict[str, AttentionSpec]:
    """A route per attention module template whose head dim grows; ``sites[i]`` was traced at ``table.widths[i]``,
    ``drawn`` names the parameter templates the factory draws at random (a fold rescales their init)."""
    widths = table.widths[:len(sites)]
    found = {}
    for name, site in sites[0].items() if sites else ():
        seen = [s[name] for s in sites]
        head_dim = fit_dim(widths, [s.head_dim for s in seen])
        if not scales(head_dim):
            continue
        rows = None if any(s.query_rows is None for s in seen) else tuple(
            fit_dim(widths, [getattr(s.query_rows, f) for s in seen]) for f in ("start", "stop", "every", "blocks"))
        query = None if site.query_source is None else table.template(site.query_source)
        if site.scaled_by_attribute:
            via = "scaling"
        elif rows is None:
            via = "none"
        elif site.in_weight:
            via = "weight"
        else:
            via = "fold" if foldable(table, site.query_source, site.query_rows, drawn) else "query"
        found[table.template(name)] = AttentionSpec(head_dim, via, query, *(rows or ()))
    return found


def unroutable_error(module: str, head_dim: sympy.Expr) -> ValueError:
    return ValueError(
        f"{module or 'the root module'} computes attention with a head dim that grows with the width "
        f"(d_head = {head_dim}), so muP scales its logits by 1/d, but there is no way to do it here: its "
        f"kernel is not given a float '{SCALE_ATTR}' attribute of the module, and its queries are not rows "
        "of one module output apart from the keys in equal blocks (they are not for a norm applied outside a "
        "module, such as F.normalize(q)). Give the module a float "
        f"'{SCALE_ATTR}' attribute passed to the kernel as its scale, keep the head dim fixed (heads grow "
        "with the width), or pass attn_scale='1/sqrt(d)' to wrap to keep 1/sqrt(d)")


def foldable(table: ShapeTable, module: str, rows: RowBlocks, drawn: set[str]) -> bool:
    """A multiplier folds exactly into a module making only the queries from a randomly drawn matrix
    (plus a bias): init x factor is then the same function, LR and eps follow (``rules.fold``)."""
    own = {n.rpartition(".")[2] for n in table.params if n.rpartition(".")[0] == module}
    return (own <= {"weight", "bias"} and makes_only(table, module, rows)
            and table.template(f"{module}.weight") in drawn)


def makes_only(table: ShapeTable, module: str | None, rows: RowBlocks | None) -> bool:
    """The rows (seen at the first probe) are all of ``module``'s output: a weight matrix makes the queries
    and nothing else."""
    weight = table.params.get(f"{module}.weight")
    if weight is None or len(weight.dims) < 2 or rows is None:
        return False
    out_dim = weight.dims[1 if weight.module_type in IN_OUT_TYPES else 0]
    return rows.blocks == 1 and (rows.start, rows.stop) == (0, int(out_dim.subs(WIDTH, table.widths[0])))


def query_params(table: ShapeTable, sites: Mapping[str, AttentionSite]) -> set[str]:
    """The weight (and bias) of every unfused query projection, for ``zero_init=["query"]``."""
    names: set[str] = set()
    for attention, site in sites.items():
        if not makes_only(table, site.query_source, site.query_rows):
            raise ValueError(
                f"zero_init=['query']: the queries of {attention} come from {site.query_source}, which is not a "
                "projection making only them (a fused QKV projection?); only an unfused query projection can start "
                "at zero")
        names |= {n for n in (f"{site.query_source}.weight", f"{site.query_source}.bias") if n in table.params}
    return names
