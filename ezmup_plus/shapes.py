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
    exactly, so each accepted fit is checked by at least one probe it was not fitted on. One probe
    (a model built at the sentinel) reads a multiple of the sentinel as that multiple of ``w``, and
    refuses a multiple of its square, which could as well be ``w**2``.
    """
    if len(widths) != len(values) or not widths:
        raise ValueError("fit_dim needs the same number (>= 1) of widths and values")
    if len(widths) == 1:
        return _read_one_probe(widths[0], values[0])
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


def _read_one_probe(width: int, value: int) -> sympy.Expr:
    if value and value % (width * width) == 0:
        raise ShapeFitError(f"{value} is a multiple of {width}^2 at the one probe: it could be w^2 or a multiple of w")
    return sympy.Integer(value // width) * WIDTH if value % width == 0 else sympy.Integer(value)


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
