"""The prime-width config transformer: a model config written at the sentinel width, rescaled to any width.

Integer fields that are multiples of the sentinel (47) become the same multiples of the target
width; a field may instead be an expression in ``w`` (and ``d`` for depth), e.g. ``"4*w"``,
``"w/64"`` or ``"round(8*w/3, 256)"`` (``round(x, m)`` rounds up to a multiple of m, as Llama does).
Expressions are parsed with ``ast`` and evaluated in exact fractions: nothing is ``eval``-ed.
A finite field that is a sentinel multiple by coincidence (a vocabulary of 47*k) is an error
unless pinned, never silently rescaled.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import operator
import re
from fractions import Fraction
from typing import Any, Collection

MAX_MULTIPLE = 64  # a sentinel multiple above this is more likely a vocabulary than a width
FINITE_NAMES = re.compile(r"vocab|position|max_len|n_ctx|seq_len|num_labels|classes", re.IGNORECASE)

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow}
_CALLS = {"round": lambda x, m=1: math.ceil(x / m) * m, "min": min, "max": max}


def scale_config(cfg: Any, *, width: int, depth: int | None = None, sentinel: int = 47,
                 depth_sentinel: int | None = None, pin: Collection[str] = ()) -> Any:
    """A copy of ``cfg`` (dict, dataclass or Hugging Face ``PretrainedConfig``) at ``width`` (and ``depth``)."""
    if depth is not None and depth_sentinel is None:
        raise ValueError("depth=... needs depth_sentinel=..., the depth the config was written at (e.g. 5)")
    rule = _Rule(width, depth, sentinel, depth_sentinel, frozenset(pin))
    if hasattr(cfg, "to_dict") and hasattr(type(cfg), "from_dict"):  # Hugging Face configs
        return type(cfg).from_dict(rule.mapping(cfg.to_dict(), ""))
    return rule.value(cfg, "")


@dataclasses.dataclass(frozen=True)
class _Rule:
    width: int
    depth: int | None
    sentinel: int
    depth_sentinel: int | None
    pin: frozenset[str]

    def value(self, value: Any, path: str) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
            return dataclasses.replace(value, **self.mapping(fields, path))
        if isinstance(value, dict):
            return self.mapping(value, path)
        key = path.rpartition(".")[2]
        if key in self.pin or path in self.pin:
            return value
        if isinstance(value, str):
            return self.expression(value, path)
        if isinstance(value, int) and not isinstance(value, bool):
            return self.integer(value, path, key)
        return value

    def mapping(self, data: dict, path: str) -> dict:
        return {k: self.value(v, f"{path}.{k}" if path else str(k)) for k, v in data.items()}

    def integer(self, value: int, path: str, key: str) -> int:
        if self.depth_sentinel and value and value % self.depth_sentinel == 0 and value % self.sentinel:
            return value // self.depth_sentinel * self.depth if self.depth is not None else value
        if not value or value % self.sentinel:
            return value
        multiple = value // self.sentinel
        if multiple > MAX_MULTIPLE or FINITE_NAMES.search(key):
            raise ValueError(
                f"{path} = {value} = {multiple}*{self.sentinel} is a multiple of the sentinel, but looks finite "
                f"(a vocabulary or a length). Pin it with pin=('{key}',), or write it as an expression in w"
            )
        return multiple * self.width

    def expression(self, text: str, path: str) -> Any:
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError:
            return text
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - set(_CALLS)
        if not names or not names <= {"w", "d"}:
            return text  # an ordinary string such as "gelu"
        if "d" in names and self.depth is None:
            raise ValueError(f"{path} = {text!r} uses the depth d: pass depth=... to scale_config")
        result = _evaluate(tree.body, {"w": Fraction(self.width), "d": Fraction(self.depth or 0)}, path, text)
        if Fraction(result).denominator != 1:
            raise ValueError(f"{path} = {text!r} is {result} at width {self.width}, not a whole number; "
                             "choose a width that divides evenly or round it with round(x, m)")
        return int(result)


def _evaluate(node: ast.AST, symbols: dict[str, Fraction], path: str, text: str) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(node.value)
    if isinstance(node, ast.Name) and node.id in symbols:
        return symbols[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_evaluate(node.left, symbols, path, text), _evaluate(node.right, symbols, path, text))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, symbols, path, text)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS and not node.keywords:
        return Fraction(_CALLS[node.func.id](*(_evaluate(a, symbols, path, text) for a in node.args)))
    raise ValueError(f"{path} = {text!r}: only numbers, w, d, + - * / // ** and round/min/max are allowed")
