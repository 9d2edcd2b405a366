"""The migration guide's worked conversion (#19 item 3) is the code the docs show, and it trains identically."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("mup")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))


def test_the_guide_shows_the_example_and_it_trains_identically():
    example = (ROOT / "examples" / "migrate_from_mup.py").read_text()
    assert f"```python\n{example}```" in (ROOT / "docs" / "migrating_from_mup.md").read_text()
    from migrate_from_mup import main

    before, after = main(width=128)
    assert after == pytest.approx(before, rel=1e-6) and len(after) == 10
