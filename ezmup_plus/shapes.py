"""Exact symbolic shapes: fit each dim, seen at several sentinel widths, as a polynomial in ``w``.

Torch-free on purpose: the fitter is the part the property tests hammer.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Sequence

import sympy

WIDTH = sympy.Symbol("w", positive=True)
"""The width symbol every dim is written in."""


class ShapeFitError(ValueError):
    """A dim that no low-degree polynomial in the width explains."""


def fit_dim(widths: Sequence[int], values: Sequence[int]) -> sympy.Expr:
    """Return the lowest-degree polynomial p with rational coefficients and p(widths[i]) == values[i].

    A polynomial of degree k is fitted on the first k+1 probes and must hit every later probe
    exactly, so each accepted fit is checked by at least one probe it was not fitted on.
    """
    if len(widths) != len(values) or len(widths) < 2:
        raise ValueError("fit_dim needs the same number (>= 2) of widths and values")
    points = [(Fraction(x), Fraction(y)) for x, y in zip(widths, values)]
    for degree in range(len(points) - 1):
        poly = _interpolate(points[: degree + 1])
        if all(poly.subs(WIDTH, sympy.Rational(x.numerator, x.denominator)) == sympy.Rational(y.numerator, y.denominator)
               for x, y in points[degree + 1:]):
            return sympy.expand(poly)
    raise ShapeFitError(
        f"values {list(values)} at widths {list(widths)} fit no polynomial of degree <= {len(points) - 2} in w; "
        "pass more sentinel primes (sentinels=...) for a higher degree, or make the dim a polynomial in the width"
    )


def _interpolate(points: list[tuple[Fraction, Fraction]]) -> sympy.Expr:
    """Lagrange interpolation in exact rationals."""
    total = sympy.Integer(0)
    for i, (xi, yi) in enumerate(points):
        term = sympy.Rational(yi.numerator, yi.denominator)
        for j, (xj, _) in enumerate(points):
            if j != i:
                xr = sympy.Rational(xj.numerator, xj.denominator)
                term *= (WIDTH - xr) / (sympy.Rational(xi.numerator, xi.denominator) - xr)
        total += term
    return total


def evaluate(expr: sympy.Expr, width: int, *, what: str) -> int:
    """The integer value of a fitted dim at ``width``; a fraction means the width breaks divisibility."""
    value = sympy.nsimplify(expr).subs(WIDTH, width)
    if not value.is_integer:
        raise ValueError(
            f"{what}: dim {expr} is {value} at width {width}, not an integer; "
            f"choose a width for which {expr} is a whole number (e.g. pass width_multiple to wrap)"
        )
    return int(value)


def scales(expr: sympy.Expr) -> bool:
    """True when a dim grows with the width."""
    return WIDTH in expr.free_symbols
