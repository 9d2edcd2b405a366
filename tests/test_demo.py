"""The README's main job runs end to end (a tiny grid here; the full demo is the README command)."""

import math

from ezmup_plus.demo import main


def test_demo_runs_and_writes_its_plot(tmp_path, capsys):
    result = main(["--widths", "16", "64", "--lr-range", "0.001", "0.008", "--steps", "20", "--seeds", "0",
                   "--out", str(tmp_path)])
    assert set(result) == {"sp", "mup"}
    assert all(set(t.best_lr) == {16, 64} and math.isfinite(t.drift) for t in result.values())
    assert (tmp_path / "demo_lr_sweep.png").exists()
    out = capsys.readouterr().out
    assert "best Adam learning rate per width" in out and "drift (octaves)" in out and "1 seed: no interval" in out
