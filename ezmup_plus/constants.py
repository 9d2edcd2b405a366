"""Numbers that change with the width outside attention, held at their base-width value.

Gemma's ``sqrt(w)`` embedding scale, T5's ``d**-0.5`` before its tied readout, a hand-written
``x * sqrt(d)``: muP's rules assume every width-dependent factor is theirs, so such a number is held at its
base-width value by a compensating multiplier ``(base/w)**p`` (the number goes as ``c * w**p``). It sits on
the module that returns the product, else on a bias-free linear module the product is fed to (a readout),
else on the module whose output was multiplied (where nothing else used that output); folded into that
module's init and LR where exact (an untied Linear or Embedding with a random weight), a forward hook
otherwise. A number with no such place, or that is no power of the width, stays a note.

Plain functions over what the traces saw at two widths (``usage.Number``, float attributes) and the
shape table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .roles import CONV_TYPES, EMBEDDING_TYPES, LINEAR_TYPES
from .trace import ShapeTable
from .usage import ForwardTrace, Number

MODES = ("correct", "warn", "error")


@dataclass(frozen=True)
class WidthConstant:
    """One corrected number: the product's factor goes as ``w**power``; ``module`` (a template) gets
    ``(base/w)**power``, folded into its init and LR or as a forward hook."""

    note: str
    module: str
    power: float
    how: str  # "fold" or "hook"

    def factor(self, base_width: int, width: int) -> float:
        return (base_width / width) ** self.power


def width_constants(a: ForwardTrace, b: ForwardTrace, widths: tuple[int, int], table: ShapeTable,
                    drawn: set[str], correct: bool = True) -> tuple[tuple[WidthConstant, ...], tuple[str, ...]]:
    """(the corrections, notes on the numbers that change with the width and are not corrected) from the
    traces at two widths; numbers are compared in call order, attention's own scales left out. A float
    attribute equal to a corrected number at both widths is that number (Gemma keeps both)."""
    w0, w1 = widths
    corrections, notes, values = [], [], []
    if len(a.numbers) == len(b.numbers):
        for x, y in zip(a.numbers, b.numbers):
            if x.value == y.value or x.module in a.attention:
                continue
            note = (f"{x.module or 'the root module'} {'divides' if x.divides else 'multiplies'} a tensor by "
                    f"{x.value:.4g} at width {w0} and {y.value:.4g} at width {w1}")
            power, module = _power(x.value, y.value, w0, w1), _place(x, table)
            if power is None or module is None or not correct:
                notes.append(note)
                continue
            corrections.append(WidthConstant(note, table.template(module), -power if x.divides else power,
                                             _how(table, module, drawn)))
            values.append((x.value, y.value))
    for k, v in b.float_attributes.items():
        before = a.float_attributes.get(k, v)
        held = any(math.isclose(before, x, rel_tol=1e-6) and math.isclose(v, y, rel_tol=1e-6) for x, y in values)
        if before != v and k.rpartition(".")[0] not in a.attention and not held:  # held: the corrected number itself
            notes.append(f"{k} = {before:.4g} at width {w0} and {v:.4g} at width {w1}")
    return tuple(dict.fromkeys(corrections)), tuple(dict.fromkeys(notes))


def _power(x: float, y: float, w0: int, w1: int) -> float | None:
    """p where y/x = (w1/w0)**p, a multiple of 1/12 (sqrt, cube root, ...); None for anything else."""
    if x == 0 or y == 0 or (x > 0) != (y > 0):
        return None
    p = math.log(y / x) / math.log(w1 / w0)
    return round(p * 12) / 12 if abs(p * 12 - round(p * 12)) < 1e-4 else None  # float32 values (buffers) too


def _place(n: Number, table: ShapeTable) -> str | None:
    """The module whose output carries the product exactly (see the module docstring)."""
    if n.returned_by is not None:
        return n.returned_by
    if n.consumed_by is not None and table.modules.get(n.consumed_by) in LINEAR_TYPES and not any(
            p.module == n.consumed_by and p.attr == "bias" for p in table.params.values()):
        return n.consumed_by
    return n.of_output


def _how(table: ShapeTable, module: str, drawn: set[str]) -> str:
    """Fold into an untied Linear, Embedding or convolution whose weight is drawn at random; else a hook."""
    own = {p.attr: p for p in table.params.values() if p.module == module}
    weight = own.get("weight")
    foldable = (table.modules.get(module) in LINEAR_TYPES | EMBEDDING_TYPES | CONV_TYPES and set(own) <= {"weight", "bias"}
                and weight is not None and not weight.aliases and table.template(weight.name) in drawn)
    return "fold" if foldable else "hook"
