"""Exact symbolic shapes: fit each dim, seen at several sentinel widths, as a polynomial in ``w``.

Torch-free on purpose: the fitter is the part the property tests hammer.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from typing import Sequence

import sympy

WIDTH = sympy.Symbol("w", positive=True)
"""The width symbol every dim is written in."""


class ShapeFitError(ValueError):
    """A dim that no low-degree polynomial in the width explains."""


def fit_dim(widths: Sequence[int], values: Sequence[int]) -> sympy.Expr:
    """Return the lowest-degree polynomial p with rational coefficients and p(widths[i]) == values[i].

    A polynomial of degree k is fitted on the first k+1 probes and must hit every later probe
    exactly, so each accepted fit is checked by at least one probe it was not fitted on. One probe
    (a model built at the sentinel) reads a multiple of the sentinel as that multiple of ``w``, and
    refuses a multiple of its square, which could as well be ``w**2``. Each distinct tuple of sizes is
    fitted once (every block of a model repeats the same few).
    """
    if len(widths) != len(values) or not widths:
        raise ValueError("fit_dim needs the same number (>= 1) of widths and values")
    return _fit(tuple(widths), tuple(values))


@lru_cache(maxsize=4096)
def _fit(widths: tuple[int, ...], values: tuple[int, ...]) -> sympy.Expr:
    if len(widths) == 1:
        return _read_one_probe(widths[0], values[0])
    points = [(Fraction(x), Fraction(y)) for x, y in zip(widths, values)]
    for degree in range(len(points) - 1):
        coefficients = _through(points[: degree + 1])
        if all(_at(coefficients, x) == y for x, y in points[degree + 1:]):
            return sympy.Add(*(sympy.Rational(c.numerator, c.denominator) * WIDTH**k
                               for k, c in enumerate(coefficients)))
    raise ShapeFitError(
        f"values {list(values)} at widths {list(widths)} fit no polynomial of degree <= {len(points) - 2} in w; "
        "pass more sentinel primes (sentinels=...) for a higher degree, or make the dim a polynomial in the width"
    )


def _read_one_probe(width: int, value: int) -> sympy.Expr:
    if value and value % (width * width) == 0:
        raise ShapeFitError(f"{value} is a multiple of {width}^2 at the one probe: it could be w^2 or a multiple of w")
    return sympy.Integer(value // width) * WIDTH if value % width == 0 else sympy.Integer(value)


def _through(points: list[tuple[Fraction, Fraction]]) -> list[Fraction]:
    """Coefficients (constant first) of the polynomial through ``points``: Lagrange, in exact fractions."""
    total = [Fraction(0)] * len(points)
    for i, (xi, yi) in enumerate(points):
        basis = [Fraction(1)]
        for j, (xj, _) in enumerate(points):
            if j != i:  # basis *= (w - xj) / (xi - xj)
                basis = [(a - b * xj) / (xi - xj) for a, b in zip([Fraction(0), *basis], [*basis, Fraction(0)])]
        total = [t + yi * b for t, b in zip(total, basis)]
    return total


def _at(coefficients: list[Fraction], x: Fraction) -> Fraction:
    value = Fraction(0)
    for c in reversed(coefficients):
        value = value * x + c
    return value


def evaluate(expr: sympy.Expr, width: int, *, what: str) -> int:
    """The integer value of a fitted dim at ``width``; a fraction means the width breaks divisibility."""
    value = _value(expr, width)
    if not value.is_integer:
        raise ValueError(
            f"{what}: dim {expr} is {value} at width {width}, not an integer; "
            f"choose a width for which {expr} is a whole number (e.g. pass width_multiple to wrap)"
        )
    return int(value)


@lru_cache(maxsize=4096)
def _value(expr: sympy.Expr, width: int) -> sympy.Expr:
    return expr.subs(WIDTH, width)


def scales(expr: sympy.Expr) -> bool:
    """True when a dim grows with the width."""
    return WIDTH in expr.free_symbols
