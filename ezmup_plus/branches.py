"""Find the residual branches of a depth-repeated stack from one forward pass on meta tensors.

A residual branch is a module inside a block whose output is added to the residual stream
(``x = x + attn(ln(x))``). Forward hooks record which module produced each tensor (the innermost
one, so ``c_proj`` rather than the ``attn`` that returns it); a torch-function mode watches the
additions. Plain data out: module name -> ``"fold"`` (it owns a weight matrix, so the branch
multiplier can be folded into init and LR) or ``"hook"`` (a forward multiplier is needed).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .trace import ShapeTable
from .usage import meta_inputs

ADDS = {torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__radd__,
        torch.Tensor.__iadd__}


def find_branches(model: nn.Module, table: ShapeTable, example_inputs: Any = None) -> dict[str, str]:
    """Residual-branch output modules of every block in ``table.stacks``, as module templates."""
    inputs = meta_inputs(model, example_inputs)
    modules = dict(model.named_modules())
    producer: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # tensors stay alive so their ids are not reused

    def record(name):
        def hook(module, args, output):
            while isinstance(output, (tuple, list)) and output:
                output = output[0]
            if isinstance(output, torch.Tensor):
                producer.setdefault(id(output), name)
                keep.append(output)
        return hook

    added: list[str] = []
    handles = [m.register_forward_hook(record(n)) for n, m in modules.items() if n]
    try:
        model.eval()
        with _AddWatcher(producer, added), torch.no_grad():
            model(*inputs)
    except Exception as exc:
        raise RuntimeError(
            f"the model's forward failed on meta tensors while looking for residual branches ({exc}); pass "
            "example_inputs=... to ezmup_plus.wrap, or name the branches yourself with branches=[...]"
        ) from exc
    finally:
        for h in handles:
            h.remove()
    found = {}
    for name in added:
        if table.stack_of(name) is not None:  # adds outside the stacks (token + position embedding) are no branch
            found[table.template(name)] = _kind(modules[name])
    _check_every_stack_has_a_branch(table, found)
    return found


def branches_from_globs(model: nn.Module, table: ShapeTable, patterns: Sequence[str]) -> dict[str, str]:
    """The user's ``branches=[...]``: module names or globs (``blocks.*.attn.c_proj``) inside the stacks."""
    found = {}
    for pattern in patterns:
        matched = [n for n, _ in model.named_modules() if n and fnmatch.fnmatchcase(n, pattern)
                   and table.stack_of(n) is not None]
        if not matched:
            raise ValueError(f"branches: {pattern!r} matches no module inside a repeated block "
                             f"({', '.join(s.template for s in table.stacks)})")
        found.update({table.template(n): _kind(model.get_submodule(n)) for n in matched})
    _check_every_stack_has_a_branch(table, found)
    return found


def _kind(module: nn.Module) -> str:
    """Fold only into a matrix: a norm's gain starts at a constant, which init scaling leaves alone."""
    weight = getattr(module, "weight", None)
    return "fold" if isinstance(weight, nn.Parameter) and weight.dim() >= 2 else "hook"


def _check_every_stack_has_a_branch(table: ShapeTable, found: dict[str, str]) -> None:
    for stack in table.stacks:
        if not any(t == stack.template or t.startswith(stack.template + ".") for t in found):
            raise ValueError(
                f"the blocks {stack.template} repeat with depth but no residual branch was found in "
                f"{stack.block(0)} (no module output is added to the residual stream). Name the branch outputs "
                f"with branches=['{stack.template.replace('{i}', '*')}.attn.c_proj', ...] in ezmup_plus.wrap"
            )


class _AddWatcher(TorchFunctionMode):
    """Notes every module output added to a tensor that does not itself derive from that module.

    The second condition tells a residual add (``x + attn(x)``: ``x`` is older than ``attn``) from
    an add inside a branch (GELU's ``x + 0.044715 * x**3``: both sides come from ``c_fc``).
    """

    def __init__(self, producer: dict[int, str], added: list[str]):
        super().__init__()
        self.producer = producer
        self.added = added
        self.origins: dict[int, frozenset[str]] = {}  # tensor id -> modules it was computed from
        self.keep: list[torch.Tensor] = []

    def origin(self, t: torch.Tensor) -> frozenset[str]:
        own = self.producer.get(id(t))
        return self.origins.get(id(t), frozenset()) | ({own} if own else frozenset())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func in ADDS and len(args) >= 2:
            a, b = args[0], args[1]
            for x, y in ((a, b), (b, a)):
                if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and id(x) in self.producer:
                    if self.producer[id(x)] not in self.origin(y):
                        self.added.append(self.producer[id(x)])
        out = func(*args, **kwargs)
        origin = frozenset().union(*(self.origin(t) for t in tensors)) if tensors else frozenset()
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.origins[id(t)] = origin
                self.keep.append(t)
        return out
