"""The saved plans (tests/data/plans, written by tests/plan_cases.py) are what the pipeline still computes:
every number of every tensor, or the same error, for each model of the tests, the examples and the survey."""

import json

import pytest

from plan_cases import PLANS, canonical, cases, plans

CASES = cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_plans_equal_the_saved_ones(name):
    saved = json.loads((PLANS / f"{name}.json").read_text())
    assert json.loads(canonical(plans(*CASES[name]))) == saved
