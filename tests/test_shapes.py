"""The shape fitter: exact rational polynomials in w from sentinel probes."""

import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from ezmup_plus.shapes import WIDTH, ShapeFitError, evaluate, fit_dim, scales

w = WIDTH
PRIMES3 = (47, 53, 59)
PRIMES4 = (47, 53, 59, 61)

coefficients = st.fractions(min_value=-8, max_value=8, max_denominator=8)


@settings(max_examples=60, deadline=None)
@given(a=coefficients, b=st.integers(min_value=0, max_value=4096))
def test_linear_dims_are_recovered_exactly(a, b):
    expr = sympy.Rational(a.numerator, a.denominator) * w + b
    values = [expr.subs(w, p) for p in PRIMES3]
    if not all(v.is_integer for v in values):
        return  # not a possible tensor dim at these primes
    assert sympy.simplify(fit_dim(PRIMES3, [int(v) for v in values]) - expr) == 0


@settings(max_examples=40, deadline=None)
@given(a=st.integers(1, 4), b=st.integers(-3, 3), c=st.integers(0, 100))
def test_quadratic_dims_need_a_fourth_probe(a, b, c):
    expr = a * w**2 + b * w + c
    values = [int(expr.subs(w, p)) for p in PRIMES4]
    assert sympy.expand(fit_dim(PRIMES4, values) - expr) == 0
    with pytest.raises(ShapeFitError, match="fit no polynomial"):
        fit_dim(PRIMES3, values[:3])


def test_hand_written_examples():
    assert fit_dim(PRIMES3, [188, 212, 236]) == 4 * w
    assert fit_dim((376, 424, 472), [47, 53, 59]) == w / 8
    assert fit_dim(PRIMES3, [50257] * 3) == 50257
    assert not scales(fit_dim(PRIMES3, [94, 94, 94]))  # a sentinel multiple that does not move is finite


def test_a_dim_that_is_no_polynomial_is_refused():
    with pytest.raises(ShapeFitError, match="fit no polynomial"):
        fit_dim(PRIMES3, [47, 53, 64])


def test_evaluate_names_the_tensor_when_divisibility_breaks():
    assert evaluate(w / 8, 1024, what="x") == 128
    with pytest.raises(ValueError, match=r"blocks.0.attn.weight: dim w/8 is 25/2 at width 100"):
        evaluate(w / 8, 100, what="blocks.0.attn.weight")
