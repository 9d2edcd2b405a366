"""Turn symbolic shapes (and, where known, traced use) into a muP role per tensor.

Roles (Tensor Programs V): ``input`` (finite fan-in, scaled fan-out: embeddings, first layer),
``hidden`` (both scale), ``output`` (scaled fan-in, finite fan-out: the readout), ``vector``
(one scaled dim: biases, norm gains), ``finite`` (nothing scales).
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, replace
from typing import Mapping

import sympy

from .rules import ROLES
from .shapes import scales
from .trace import ParamShape, ShapeTable
from .usage import Use

EMBEDDING_TYPES = {"Embedding", "EmbeddingBag"}
LINEAR_TYPES = {"Linear", "LazyLinear", "NonDynamicallyQuantizableLinear", "Bilinear"}
CONV_TYPES = {"Conv1d", "Conv2d", "Conv3d"}
CONV_TRANSPOSE_TYPES = {"ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"}
IN_OUT_TYPES = {"Conv1D"}  # Hugging Face GPT-2's projection: weight stored (in, out)


@dataclass(frozen=True)
class Role:
    """How one tensor scales: its role, which dims are fan-in, and how it is used."""

    role: str
    fan_in_dims: tuple[int, ...]
    tied_readout: str | None = None  # module whose output is the logits of a tied embedding
    source: str = "convention"  # "trace", "convention" (layer type), "shape" (one dim) or "override"
    batch_dims: tuple[int, ...] = ()  # a stack of matrices (experts): each index is its own matrix

    def fan_in(self, dims: tuple[sympy.Expr, ...]) -> sympy.Expr:
        return sympy.Mul(*(dims[i] for i in self.fan_in_dims))

    def fan_out(self, dims: tuple[sympy.Expr, ...]) -> sympy.Expr:
        return sympy.Mul(*(d for i, d in enumerate(dims) if i not in self.fan_in_dims + self.batch_dims))


def convention_fan_in(p: ParamShape) -> tuple[tuple[int, ...], bool]:
    """Fan-in dims from PyTorch's layout conventions; the flag says whether it was a guess."""
    ndim = len(p.dims)
    if ndim < 2:
        return (), False
    if stacked_linears(p):
        return (2,), True
    if p.module_type in EMBEDDING_TYPES:
        return (0,), False  # a lookup: the vocabulary is the fan-in
    if p.module_type in CONV_TRANSPOSE_TYPES | IN_OUT_TYPES:
        return (0, *range(2, ndim)), False
    if p.module_type in LINEAR_TYPES | CONV_TYPES:
        return tuple(range(1, ndim)), False
    if len(p.scaled_dims) == 1:
        # a bare table with one width dim (a learned position table, a class token): embedding-like
        return tuple(i for i in range(ndim) if i not in p.scaled_dims), True
    return tuple(range(1, ndim)), True


def stacked_linears(p: ParamShape) -> bool:
    """A bare 3-d tensor with a finite leading dim: a stack of Linear weights (experts), as Hugging Face
    stores them, (experts, out, in)."""
    return p.module_type not in LINEAR_TYPES | CONV_TYPES | CONV_TRANSPOSE_TYPES | EMBEDDING_TYPES and len(
        p.dims) == 3 and 0 not in p.scaled_dims and len(p.scaled_dims) == 2


def role_from_shape(dims: tuple[sympy.Expr, ...], fan_in_dims: tuple[int, ...], batch_dims: tuple[int, ...] = ()) -> str:
    """The TP5 role from which of fan-in and fan-out grow with the width (batch dims are neither)."""
    if len(dims) < 2:
        return "vector" if any(scales(d) for d in dims) else "finite"
    fan_in_scales = any(scales(dims[i]) for i in fan_in_dims)
    fan_out_scales = any(scales(d) for i, d in enumerate(dims) if i not in fan_in_dims + batch_dims)
    return {
        (False, True): "input",
        (True, True): "hidden",
        (True, False): "output",
        (False, False): "finite",
    }[(fan_in_scales, fan_out_scales)]


def classify(table: ShapeTable, overrides: Mapping[str, str] | None = None,
             uses: Mapping[str, tuple[Use, ...]] | None = None) -> dict[str, Role]:
    """A role per tensor: from its traced uses where they tell, else by convention; then the user's overrides."""
    roles = {}
    for name, p in table.params.items():
        traced = traced_fan_in(p, uses[name]) if uses is not None and name in uses else None
        if traced is not None:
            fan_in_dims, tied_readout, batch = traced
            roles[name] = Role(role_from_shape(p.dims, fan_in_dims, batch), fan_in_dims, tied_readout, "trace", batch)
            continue
        fan_in_dims, guessed = convention_fan_in(p)
        batch = (0,) if stacked_linears(p) else ()
        if len(p.dims) < 2:  # a bias or a gain: its shape says everything
            roles[name] = Role(role_from_shape(p.dims, fan_in_dims), fan_in_dims, source="shape")
            continue
        if guessed and p.scaled_dims and not (uses and name in uses and uses[name]):
            warnings.warn(
                f"{name}: a {len(p.dims)}-d tensor of a {p.module_type or 'root'} module that the traced forward "
                f"did not use; taking dims {fan_in_dims} as its fan-in. Pass roles={{'{name}': ...}} to wrap if "
                "that is wrong", stacklevel=3)
        roles[name] = Role(role_from_shape(p.dims, fan_in_dims, batch), fan_in_dims, _tied_readout(p, table),
                           batch_dims=batch)
    return apply_overrides(roles, table, overrides or {})


def traced_fan_in(p: ParamShape, uses: tuple[Use, ...]) -> tuple[tuple[int, ...], str | None, tuple[int, ...]] | None:
    """(fan-in dims, tied readout module, batch dims) from how the forward used the tensor; None where it
    cannot tell.

    One contracted (or looked-up) set of dims is the fan-in. Two, one finite and one growing with
    the width, is an input embedding reused as the readout (a tied weight). A tensor only added or
    multiplied in elementwise is a table like an embedding: its finite dims are the fan-in. The dims
    that pick one matrix of a stack (an expert) in a batched or grouped matmul are batch dims.
    """
    contracted = list(dict.fromkeys(u.dims for u in uses if u.kind in ("contract", "lookup")))
    batch = tuple(sorted(set().union(*(u.batch for u in uses if u.kind == "contract"))))
    if not contracted:
        unknown = [u for u in uses if u.kind == "unknown"]
        if unknown:
            guess, _ = convention_fan_in(p)
            warnings.warn(f"{p.name}: used by {unknown[0].op} in {unknown[0].module or 'the root module'}, an op "
                          f"ezmup_plus cannot read a fan-in from; taking dims {guess} as its fan-in by convention. "
                          f"Pass roles={{'{p.name}': ...}} to wrap if that is wrong", stacklevel=4)
            return None
        if any(u.kind == "elementwise" for u in uses):
            return tuple(i for i in range(len(p.dims)) if i not in p.scaled_dims), None, ()
        return None
    if len(contracted) == 1:
        return contracted[0], None, batch
    finite = [dims for dims in contracted if not any(i in p.scaled_dims for i in dims)]
    if len(contracted) == 2 and len(finite) == 1:
        scaled = next(dims for dims in contracted if dims != finite[0])
        readout = next(u for u in uses if u.dims == scaled)
        if readout.returned_by is None:
            raise ValueError(
                f"{p.name} is used as an input embedding and as the readout (a tied weight), but no module returns "
                f"the logits it produces unchanged ({readout.op} in {readout.module or 'the root module'}), so their "
                "1/m_w multiplier has nowhere to go. Compute the readout in its own module (an nn.Linear sharing the "
                "weight) and return its output")
        return finite[0], readout.returned_by, ()
    warnings.warn(f"{p.name}: contracted over different dims {contracted} in different ops; taking the layout "
                  f"convention. Pass roles={{'{p.name}': ...}} to wrap if that is wrong", stacklevel=4)
    return None


def _tied_readout(p: ParamShape, table: ShapeTable) -> str | None:
    """Without a trace: an embedding table that a Linear also uses as its weight; that Linear makes the logits."""
    if p.module_type not in EMBEDDING_TYPES:
        return None
    for alias in p.aliases:
        module, _, _ = alias.rpartition(".")
        if table.modules.get(module) in LINEAR_TYPES:
            return module
    return None


def apply_overrides(roles: dict[str, Role], table: ShapeTable, overrides: Mapping[str, str]) -> dict[str, Role]:
    """Replace roles by name or glob; a glob that matches nothing or an unknown role is an error."""
    result = dict(roles)
    for pattern, role in overrides.items():
        if role not in ROLES:
            raise ValueError(f"roles[{pattern!r}] = {role!r} is not a role; choose one of {ROLES}")
        matched = [n for n in roles if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise ValueError(
                f"roles[{pattern!r}] matches no parameter; names look like {list(roles)[:4]} (globs allowed)"
            )
        for name in matched:
            result[name] = replace(roles[name], role=role, source="override")
    return result
