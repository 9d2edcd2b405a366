"""The residual branches of a depth-repeated stack, from the residual adds the traced forward saw.

A residual branch is a module inside a block whose output is added to the residual stream
(``x = x + attn(ln(x))``), also behind a scalar or a gain (``x + c * f(x)``, ``x + f(x) / c``, layer
scale ``x + gamma * f(x)``): the trace (``usage.AddWatcher``) names the innermost module producing
each added output, so ``c_proj`` rather than the ``attn`` that returns it. Plain data out: module
name -> ``"fold"`` (it owns a weight matrix, so the branch multiplier can be folded into init and LR)
or ``"hook"`` (a forward multiplier is needed).
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence

from .trace import ShapeTable


def find_branches(adds: Iterable[str], table: ShapeTable) -> dict[str, str]:
    """Residual-branch output modules of every block in ``table.stacks``, as module templates, from the modules
    whose outputs the forward added to an older tensor."""
    found = {table.template(name): _kind(table, name) for name in adds
             if table.stack_of(name) is not None}  # adds outside the stacks (token + position embedding) are no branch
    _check_every_stack_has_a_branch(table, found)
    return found


def branches_from_globs(modules: Iterable[str], table: ShapeTable, patterns: Sequence[str]) -> dict[str, str]:
    """The user's ``branches=[...]``: module names or globs (``blocks.*.attn.c_proj``) inside the stacks."""
    names = [n for n in modules if n and table.stack_of(n) is not None]
    found = {}
    for pattern in patterns:
        matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise ValueError(f"branches: {pattern!r} matches no module inside a repeated block "
                             f"({', '.join(s.template for s in table.stacks)})")
        found.update({table.template(n): _kind(table, n) for n in matched})
    _check_every_stack_has_a_branch(table, found)
    return found


def _kind(table: ShapeTable, module: str) -> str:
    """Fold only into a matrix: a norm's gain starts at a constant, which init scaling leaves alone."""
    weight = table.params.get(f"{module}.weight" if module else "weight")
    return "fold" if weight is not None and len(weight.dims) >= 2 else "hook"


def _check_every_stack_has_a_branch(table: ShapeTable, found: dict[str, str]) -> None:
    for stack in table.stacks:
        if not any(t == stack.template or t.startswith(stack.template + ".") for t in found):
            raise ValueError(
                f"the blocks {stack.template} repeat with depth but no residual branch was found in "
                f"{stack.block(0)} (no module output is added to the residual stream). Name the branch outputs "
                f"with branches=['{stack.template.replace('{i}', '*')}.attn.c_proj', ...] in ezmup_plus.wrap"
            )
