"""Probe a model factory at sentinel prime widths on the meta device and fit every dim in ``w``.

The boundary type is :class:`ShapeTable`: names, symbolic shapes and the module each tensor
belongs to. Nothing here knows about optimizers or parametrizations.
"""

from __future__ import annotations

import warnings
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import sympy
import torch
from torch import nn

from .shapes import ShapeFitError, fit_dim, scales

DEFAULT_SENTINELS = (47, 53, 59)


@dataclass(frozen=True)
class ParamShape:
    """One parameter as the probes saw it."""

    name: str
    dims: tuple[sympy.Expr, ...]
    module: str  # qualified name of the owning module ("" for the root)
    module_type: str  # class name of the owning module, e.g. "Linear", "Conv1D"
    attr: str  # attribute name inside the owning module, e.g. "weight"
    aliases: tuple[str, ...] = ()  # other names of the same tensor (tied weights)

    @property
    def scaled_dims(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.dims) if scales(d))


@dataclass(frozen=True)
class Stack:
    """A depth-repeated stack of blocks, e.g. ``blocks.{i}``: it holds ``per_depth * depth + offset`` blocks.

    ``first_only``: parameters (names after the block's own) that block 0 has and the others do not, such as
    T5's relative position bias, computed once and shared by every later block."""

    template: str
    per_depth: int
    offset: int
    first_only: tuple[str, ...] = ()

    def count(self, depth: int) -> int:
        return self.per_depth * depth + self.offset

    def block(self, index: int) -> str:
        return self.template.replace("{i}", str(index))


@dataclass(frozen=True)
class ShapeTable:
    """Everything the probes learned, keyed by parameter name (in ``named_parameters`` order).

    With stacks, the names are those of a shallow probe (often one block per stack): every block of a
    stack is its first block again, and ``plan.expand_names`` writes them out at any depth.
    """

    params: dict[str, ParamShape]
    widths: tuple[int, ...]
    modules: dict[str, str] = field(default_factory=dict)  # module name -> class name
    collisions: tuple[str, ...] = ()  # human-readable notes on finite dims equal to sentinel multiples
    stacks: tuple[Stack, ...] = ()  # empty unless probed in depth
    depth: int | None = None  # the depth the width probes were taken at (the base depth)

    def stack_of(self, name: str) -> tuple[Stack, int] | None:
        """The stack a parameter or module name lies in, and its block index."""
        for stack in self.stacks:
            head, _, _ = stack.template.partition("{i}")
            if name.startswith(head):
                index, dot, _ = name[len(head):].partition(".")
                if index.isdigit() and (dot or name[len(head):] == index):
                    return stack, int(index)
        return None

    def template(self, name: str) -> str:
        """``blocks.3.attn.c_proj.weight`` -> ``blocks.{i}.attn.c_proj.weight``; other names unchanged."""
        found = self.stack_of(name)
        if found is None:
            return name
        stack, index = found
        return stack.template + name[len(stack.block(index)):]


def build_on_meta(factory: Callable[..., nn.Module], kwargs: dict[str, Any]) -> nn.Module:
    """Call the factory with every tensor on ``meta``: no memory, no RNG draws."""
    with torch.device("meta"), torch.random.fork_rng(devices=[]):
        model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"the factory returned {type(model).__name__}, not an nn.Module")
    return model


def parameter_layout(model: nn.Module) -> dict[str, tuple[tuple[int, ...], str, str, str, tuple[str, ...]]]:
    """name -> (shape, owning module, its class, attribute, aliases), one entry per distinct tensor."""
    modules = dict(model.named_modules(remove_duplicate=False))
    first_name: dict[int, str] = {}
    aliases: dict[str, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owner = first_name.setdefault(id(p), name)
        aliases.setdefault(owner, [])
        if owner != name:
            aliases[owner].append(name)
    layout = {}
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, alias_list in aliases.items():
        module_name, _, attr = name.rpartition(".")
        layout[name] = (
            tuple(params[name].shape),
            module_name,
            type(modules[module_name]).__name__,
            attr,
            tuple(alias_list),
        )
    return layout


def probe(
    factory: Callable[..., nn.Module],
    *,
    width_arg: str = "width",
    sentinels: tuple[int, ...] = DEFAULT_SENTINELS,
    width_multiple: int = 1,
    fixed_kwargs: dict[str, Any] | None = None,
) -> tuple[ShapeTable, list[nn.Module]]:
    """Build the model at each sentinel width on meta and fit every dim as a polynomial in ``w``.

    The meta models come back too: the forward traces run on them, so nothing is built twice.
    """
    if len(sentinels) < 3:
        raise ValueError(f"sentinels={sentinels}: give at least three primes (two to fit, one to check)")
    if len(set(sentinels)) != len(sentinels):
        raise ValueError(f"sentinels={sentinels} repeat a value; give distinct primes")
    widths = tuple(p * width_multiple for p in sentinels)
    kwargs = dict(fixed_kwargs or {})
    models = []
    for width in widths:
        try:
            models.append(build_on_meta(factory, {**kwargs, width_arg: width}))
        except Exception as exc:  # the user's factory: re-raise with what we were doing
            raise RuntimeError(
                f"the factory failed at sentinel width {width} ({width_arg}={width}): {exc}. If it needs the "
                f"width to be a multiple of something (e.g. the head count), pass width_multiple=... to wrap"
            ) from exc
    table = shape_table(models, widths)
    if not any(p.scaled_dims for p in table.params.values()):
        raise ValueError(
            f"no parameter shape depends on '{width_arg}': the factory ignores its width argument "
            f"(shapes at widths {widths} are identical). Check that it passes '{width_arg}' to the layers"
        )
    collisions = tuple(note for name, p in table.params.items() for axis, d in enumerate(p.dims) if not scales(d)
                       for note in _collision_notes(name, axis, int(d), sentinels))
    for note in collisions:
        warnings.warn(note, stacklevel=4)
    return replace(table, collisions=collisions), models


def smallest_width_multiple(fails: Callable[[int], bool], sentinels: tuple[int, ...], width_multiple: int = 1,
                            most: int = 256) -> int | None:
    """The smallest multiple of ``width_multiple`` above it (up to ``most``) at which no sentinel width fails."""
    for multiple in range(2 * width_multiple, most + 1, width_multiple):
        if not any(fails(p * multiple) for p in sentinels):
            return multiple
    return None


def shape_table(models: list[nn.Module], widths: tuple[int, ...]) -> ShapeTable:
    """Every dim of the same model built at ``widths``, fitted in ``w`` (one width: read as a sentinel multiple)."""
    layouts = [parameter_layout(model) for model in models]
    _check_same_names(layouts, widths)
    params = {}
    for name, (_, module, module_type, attr, aliases) in layouts[0].items():
        shapes = [layout[name][0] for layout in layouts]
        if len({len(s) for s in shapes}) != 1:
            raise ShapeFitError(f"{name}: its number of dims changes with the width ({shapes}); it cannot be rescaled")
        dims = []
        for axis in range(len(shapes[0])):
            values = [s[axis] for s in shapes]
            try:
                dims.append(fit_dim(widths, values))
            except ShapeFitError as exc:
                raise ShapeFitError(f"{name} dim {axis}: {exc}") from None
        params[name] = ParamShape(name, tuple(dims), module, module_type, attr, aliases)
    return ShapeTable(params, widths, {n: type(m).__name__ for n, m in models[0].named_modules()})


def _check_same_names(layouts: list[dict], widths: tuple[int, ...]) -> None:
    names = [set(layout) for layout in layouts]
    for width, other in zip(widths[1:], names[1:]):
        if other != names[0]:
            only_first = sorted(names[0] - other)[:5]
            only_other = sorted(other - names[0])[:5]
            raise ValueError(
                f"parameter names differ between width {widths[0]} and width {width}: only at {widths[0]}: "
                f"{only_first}, only at {width}: {only_other}. The model's structure must not depend on the width"
            )


def _collision_notes(name: str, axis: int, value: int, sentinels: tuple[int, ...]) -> list[str]:
    """A finite dim that is a multiple of a sentinel would fool a one-probe tracer; say we saw it."""
    return [
        f"{name} dim {axis} is {value} = {value // p}*{p} at every probe: a sentinel multiple by coincidence, "
        f"kept finite because it did not change across probes {sentinels}"
        for p in sentinels[:1]
        if value >= p and value % p == 0
    ]


def probe_depth(
    factory: Callable[..., nn.Module],
    table: ShapeTable,
    first_model: nn.Module,
    *,
    depth_arg: str,
    base_depth: int,
    first_depth: int,
    fixed_kwargs: dict[str, Any],
) -> tuple[ShapeTable, list[nn.Module]]:
    """Probe two more depths at the width of ``first_model`` (built at ``first_depth``); names that appear only
    deeper form the repeated stacks. The deeper meta models come back too; the table is for ``base_depth``.

    A stack's block count must be linear in the depth (``d`` blocks, ``2*d`` for interleaved pairs,
    ``d+1``...), fitted on two depths and checked on the third.
    """
    depths = (first_depth, first_depth + 1, first_depth + 2)
    deeper = [build_on_meta(factory, {**fixed_kwargs, depth_arg: d}) for d in depths[1:]]
    names = [set(parameter_layout(m)) for m in (first_model, *deeper)]
    if names[0] == names[1] == names[2]:
        raise ValueError(
            f"no parameter appears or disappears between {depth_arg}={depths[0]} and {depth_arg}={depths[2]}: "
            f"the factory ignores its depth argument. Check that it passes '{depth_arg}' to the number of blocks"
        )
    new = sorted(names[1] - names[0])
    shallow = {".".join(n.split(".")[:k]) for n in names[0] for k in range(1, n.count(".") + 1)}
    templates = {_stack_template(name, shallow) for name in new}
    stacks = []
    for template in sorted(templates):
        counts = [_count_blocks(template, n) for n in names]
        per_depth = counts[1] - counts[0]
        if per_depth < 1 or counts[2] - counts[1] != per_depth:
            raise ValueError(f"the stack {template} holds {counts} blocks at {depth_arg}={depths}: "
                             "its number of blocks must grow linearly with the depth")
        stacks.append(Stack(template, per_depth, counts[0] - per_depth * first_depth,
                            _first_only(template, names[2])))
    return replace(table, stacks=tuple(stacks), depth=base_depth), deeper


def _stack_template(name: str, shallow: set[str]) -> str:
    """The first numeric path component of ``name`` that leads to a module the shallower probe lacks counts the
    blocks: replace it by ``{i}``. (Stages of blocks, as in Swin's ``encoder.layers.0.blocks.1``, are stacks of
    their own, one per stage.)"""
    parts = name.split(".")
    for k, part in enumerate(parts):
        if part.isdigit() and ".".join(parts[:k + 1]) not in shallow:
            return ".".join([*parts[:k], "{i}"])
    raise ValueError(f"{name} appears only at the larger depth but has no block index in its name")


def _first_only(template: str, names: set[str]) -> tuple[str, ...]:
    """The parameter suffixes (``.layer.0.SelfAttention.relative_attention_bias.weight``) of block 0 that block 1
    lacks, at the deepest probe (two blocks or more)."""
    def suffixes(index: int) -> set[str]:
        head = template.replace("{i}", str(index)) + "."
        return {n[len(head) - 1:] for n in names if n.startswith(head)}

    return tuple(sorted(suffixes(0) - suffixes(1)))


def _count_blocks(template: str, names: set[str]) -> int:
    pattern = re.compile(re.escape(template).replace(r"\{i\}", r"(\d+)") + r"\.")
    return len({m.group(1) for n in names if (m := pattern.match(n))})
