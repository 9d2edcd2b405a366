"""Divisibility found, not guessed (#19 item 5): a factory that needs the width divisible by something fails at the
sentinel with one line naming the smallest width_multiple that builds and runs at every sentinel."""

import pytest
from torch import nn

import ezmup_plus as ezp
from ezmup_plus.models.mlp import MLP
from ezmup_plus.trace import smallest_width_multiple
from tiny_models import TinyTransformer


def heads_by_16(width):
    return TinyTransformer(width, heads=width // 16)  # the forward's view fails unless 16 divides the width


def groups_by_8(width):
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.GroupNorm(width // 8, width), nn.Flatten(),
                         nn.Linear(14 * 14 * width, 10))  # GroupNorm refuses a width its groups do not divide


def asserting(width):
    assert width % 32 == 0, f"width={width} must be a multiple of 32"
    return MLP(width)


@pytest.mark.parametrize("factory, multiple, cause", [
    (heads_by_16, 16, "RuntimeError: shape"),
    (groups_by_8, 8, "ValueError: num_channels (47) must be divisible by num_groups (5)"),
    (asserting, 32, "AssertionError: width=47 must be a multiple of 32"),
])
def test_the_error_names_the_width_multiple_that_works(factory, multiple, cause):
    with pytest.raises(RuntimeError) as e:
        ezp.wrap(factory, base_width=64).plan(width=128)
    message = str(e.value)
    assert message.startswith(f"the factory fails at the sentinel width 47 ({cause}")
    assert message.endswith(f"every sentinel with width_multiple={multiple}: pass width_multiple={multiple} to "
                            "ezmup_plus.wrap") and "\n" not in message
    assert ezp.wrap(factory, base_width=64, width_multiple=multiple).plan(width=128).width == 128


def test_a_multiple_that_does_not_divide_the_base_width_names_both():
    with pytest.raises(RuntimeError, match="width_multiple=16, which does not divide base_width=40: choose a "
                                           "base_width that is a multiple of 16"):
        ezp.wrap(heads_by_16, base_width=40).plan(width=80)


def test_failures_that_are_not_divisibility_keep_their_error():
    def broken(width):
        raise RuntimeError("no such layer")

    with pytest.raises(RuntimeError, match=r"failed at sentinel width 47 \(width=47\): no such layer"):
        ezp.wrap(broken, base_width=64).plan(width=128)


def test_the_search_is_bounded_and_starts_above_the_current_multiple():
    assert smallest_width_multiple(lambda w: w % 12 != 0, (47, 53, 59), 2) == 12
    assert smallest_width_multiple(lambda w: w % 12 != 0, (47, 53, 59), 8) == 24
    assert smallest_width_multiple(lambda w: True, (47, 53, 59), most=64) is None
