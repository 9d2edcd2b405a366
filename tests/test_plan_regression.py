"""The saved plans (tests/data/plans, written by tests/plan_cases.py) are what the pipeline still computes:
every number of every tensor, or the same error, for each model of the tests, the examples and the survey.

Numbers are compared to 1e-6 relative, not bit for bit: an init the reader cannot follow is measured on one
real float32 draw, and that std moves in its ninth digit with the CPU's reduction order (thread count,
vector width). Every rule-derived number is far coarser than that, so a changed rule still fails."""

import json

import pytest

from plan_cases import PLANS, canonical, cases, plans

CASES = cases()


def approx(data):
    """The saved JSON with every float compared to 1e-6 relative (ints, strings and structure exactly)."""
    if isinstance(data, dict):
        return {k: approx(v) for k, v in data.items()}
    if isinstance(data, list):
        return [approx(v) for v in data]
    return pytest.approx(data, rel=1e-6) if isinstance(data, float) else data


@pytest.mark.parametrize("name", sorted(CASES))
def test_plans_equal_the_saved_ones(name):
    saved = json.loads((PLANS / f"{name}.json").read_text())
    assert json.loads(canonical(plans(*CASES[name]))) == approx(saved)
