"""The coordinate check: muP flat, SP and a deliberately broken plan caught, slope fit, plot."""

import pytest
import torch
from torch import nn

import ezmup_plus as ezp
from ezmup_plus.diagnostics import CoordCheck, CoordRow, coord_check
from ezmup_plus.models.mlp import MLP

WIDTHS = [64, 256, 1024]


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g)


def test_slope_fit_by_hand():
    rows = tuple(CoordRow("m", w, 1, rms=3.0 * w**0.5, delta_rms=2.0) for w in (16, 64, 256))
    rows += tuple(CoordRow("m", w, 0, rms=1.0, delta_rms=0.0) for w in (16, 64, 256))
    check = CoordCheck(rows, tolerance=0.4)
    assert check.slope("m", 1) == pytest.approx(0.5)
    assert check.slope("m", 0) == pytest.approx(0.0)
    assert check.worst_slope("m") == pytest.approx(0.5) and not check.ok


def test_mup_passes_sp_fails(batch, tmp_path):
    """Averaged over 4 seeds: one seed's readout bias (a width-independent random number) tilts its slope."""
    mup = coord_check(ezp.wrap(MLP, base_width=64), WIDTHS, batch, seeds=4)
    sp = coord_check(MLP, WIDTHS, batch, seeds=4)
    assert mup.ok, str(mup)
    assert not sp.passed("readout") and sp.slope("readout", 3) > 0.5, str(sp)
    assert "FAIL" in str(sp) and "pass" in str(mup)
    assert mup.plot(tmp_path / "coord.png").read_bytes()[:4] == b"\x89PNG"


def test_a_deliberately_broken_plan_fails(batch):
    broken = ezp.wrap(MLP, base_width=64, roles={"hidden.1.weight": "input"})  # hidden LR not scaled down
    check = coord_check(broken, WIDTHS, batch)
    assert not check.passed("hidden.1"), str(check)


def test_needs_two_widths(batch):
    with pytest.raises(ValueError, match="at least two widths"):
        coord_check(MLP, [64], batch)


def test_spectral_check_flat_under_mup_growing_under_sp(batch, tmp_path):
    from ezmup_plus.diagnostics import spectral_check

    mup = spectral_check(ezp.wrap(MLP, base_width=64), WIDTHS, batch)
    sp = spectral_check(MLP, WIDTHS, batch)
    assert mup.ok, str(mup)
    # SP with Adam: the hidden matrix's relative change grows about like the width
    assert not sp.ok and sp.slope("weight", "hidden.1.weight") > 0.7, str(sp)
    assert "readout alignment" in str(mup)
    assert mup.plot(tmp_path / "spectral.png").read_bytes()[:4] == b"\x89PNG"


def test_watching_a_module_called_twice_leaves_the_forward_as_it_is():
    """A watched module used twice (Falcon's and Bloom's shared projections, a weight-tied block): the hook records
    its first output and must not hand that back as the second call's output."""
    from ezmup_plus.diagnostics.coord import _outputs

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.lin(self.lin(x)))

    torch.manual_seed(0)
    model, x = Twice(), torch.randn(4, 8)
    seen, _ = _outputs(model, list(model.named_children()), x)
    with torch.no_grad():
        assert torch.equal(seen["lin"], model.lin(x))
        assert torch.equal(seen["head"], model(x))


class TupleBlocks(torch.nn.Module):
    """Blocks returning (hidden, extra) whose caller takes element 0, as Falcon's and Bloom's do."""

    class Block(torch.nn.Module):
        def __init__(self, width):
            super().__init__()
            self.fc = torch.nn.Linear(width, width)

        def forward(self, h):
            return h + self.fc(h), None

    def __init__(self, width):
        super().__init__()
        self.inp, self.out = torch.nn.Linear(8, width), torch.nn.Linear(width, 1)
        self.blocks = torch.nn.ModuleList([self.Block(width) for _ in range(2)])

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)[0]
        return self.out(h)


def test_watching_a_block_leaves_its_output_alone(batch):
    """The watch hooks return None: a hook's returned value would replace the tuple by its first tensor."""
    check = coord_check(TupleBlocks, [16, 32], batch, steps=1, modules=lambda n, m: n in ("blocks.0", "blocks.1"))
    assert check.modules == ["blocks.0", "blocks.1"]
    torch.manual_seed(0)
    plain = TupleBlocks(16)
    rms = float(plain.blocks[0](plain.inp(batch[0]))[0].pow(2).mean().sqrt())
    assert [r.rms for r in check.rows if r.module == "blocks.0" and r.width == 16 and r.step == 0] == [
        pytest.approx(rms)]


class LargeReadout(nn.Module):
    """A readout drawn with std 1 (logits of RMS ~sqrt(width) at base)."""

    def __init__(self, width, readout_std=1.0):
        super().__init__()
        self.hidden, self.readout = nn.Linear(8, width), nn.Linear(width, 1)
        nn.init.normal_(self.readout.weight, std=readout_std)

    def forward(self, x):
        return self.readout(torch.relu(self.hidden(x)))


def test_the_readout_change_is_split_per_width(batch):
    """The readout's change is split into dW.x0, W0.dx and dW.dx per width: a readout drawn large is led by
    W0.dx, a zero readout has none (test_survey: a failing check led by W0.dx says why and what to do)."""
    large = coord_check(ezp.wrap(LargeReadout, base_width=64), WIDTHS, batch, seeds=2)
    assert [(t.module, t.width) for t in large.readout] == [("readout", w) for w in WIDTHS]
    assert all(t.w0_dx > 3 * t.dw_x0 for t in large.readout), large.readout
    zero = coord_check(ezp.wrap(LargeReadout, base_width=64, zero_init=["readout"]), WIDTHS, batch, seeds=2)
    assert all(t.w0_dx == 0.0 < t.dw_x0 for t in zero.readout), zero.readout
    assert "led by W0.dx" not in str(zero)


def test_the_split_reads_the_readout_multiplier_from_its_output():
    """By hand: a Linear whose output is c * x W^T + b, with c = 1/4 (a readout's 1/m_w in the forward)."""
    from ezmup_plus.diagnostics.coord import _split

    g = torch.Generator().manual_seed(0)
    readout = nn.Linear(6, 3)
    x0, x1, w0 = (torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g), torch.randn(3, 6, generator=g))
    y1 = 0.25 * x1 @ readout.weight.detach().T + readout.bias.detach()
    dw, dx = readout.weight.detach() - w0, x1 - x0
    rms = lambda t: float(t.square().mean().sqrt())  # noqa: E731
    assert _split(readout, x0, x1, w0, y1) == pytest.approx(
        (rms(0.25 * x0 @ dw.T), rms(0.25 * dx @ w0.T), rms(0.25 * dx @ dw.T)), rel=1e-5)


def test_dropout_masks_do_not_count_as_change(batch):
    """Every observation draws the same dropout masks: with nothing learned (lr 0) no module has changed after
    the steps, though the steps draw masks of their own."""
    def dropped(width):
        return nn.Sequential(nn.Linear(8, width), nn.Dropout(0.5), nn.Linear(width, 1))

    check = coord_check(ezp.wrap(dropped, base_width=64), [64, 256], batch, lr=0.0)
    assert all(r.delta_rms == 0.0 for r in check.rows) and all(r.rms > 0 for r in check.rows)
