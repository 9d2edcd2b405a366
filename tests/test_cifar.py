"""CIFAR-10 and the reproduction's two vision models: the loader (canonical format, checksum, the shared
subset), VGG11 and ViT through ``wrap`` (plan, base, step, coordinate check), the CLI and the benchmarks."""

import hashlib
import json
import math
import pickle
import sys
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import ezmup_plus as ezp
from ezmup_plus import data
from ezmup_plus.cli import main
from ezmup_plus.data import DATA_DIR_VAR, DATASETS, DataUnavailable, augment_images, load_cifar10, locate
from ezmup_plus.diagnostics import coord_check
from ezmup_plus.models import VGG11, ViT

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_batches(folder: Path, per_batch: int = 4, seed: int = 0) -> dict:
    """A cifar-10-batches-py/ folder in the canonical format (pickled dicts of bytes keys, a uint8 numpy
    array (N, 3072) channel-major, labels), as the original was written; returns the arrays."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name in NAMES:
        images = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as fh:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": images,
                         b"filenames": [b"x.png"] * per_batch}, fh, protocol=2)
        written[name] = (images, labels)
    return written


def test_loader_reads_the_canonical_format_from_a_folder_and_the_tarball(offline, tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    written = write_batches(folder)
    got = load_cifar10(folder)  # a folder the user points to
    raw = torch.from_numpy(np.concatenate([written[n][0] for n in NAMES[:5]])).view(-1, 3, 32, 32).float() / 255
    mean, std = raw.mean(dim=(0, 2, 3)), raw.std(dim=(0, 2, 3))
    assert got.x_train.shape == (20, 3, 32, 32) and got.x_test.shape == (4, 3, 32, 32)
    torch.testing.assert_close(got.x_train, (raw - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    assert got.y_train.tolist() == sum((written[n][1] for n in NAMES[:5]), [])
    assert got.y_test.tolist() == written["test_batch"][1]
    test_raw = torch.from_numpy(written["test_batch"][0]).view(-1, 3, 32, 32).float() / 255
    torch.testing.assert_close(got.x_test, (test_raw - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))  # train stats
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert got.described == f"cifar10: 20 training and 4 test images from {folder} (folder, {size:,} bytes)"

    archive = tmp_path / "copies" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    d = DATASETS["cifar10"]
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(DATASETS, "cifar10", data.Dataset(d.name, d.filename, d.url, md5, "md5", d.folder))
    monkeypatch.setenv(DATA_DIR_VAR, str(archive.parent))
    from_tar = load_cifar10()  # the checked tarball in the directory of copies
    assert torch.equal(from_tar.x_train, got.x_train) and torch.equal(from_tar.y_test, got.y_test)
    assert from_tar.source == archive and f"(archive, {archive.stat().st_size:,} bytes)" in from_tar.described
    assert offline == []


def test_a_damaged_tarball_is_refused_naming_file_url_and_setting(offline, tmp_path, monkeypatch):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    monkeypatch.setenv(DATA_DIR_VAR, str(tmp_path))
    with pytest.raises(DataUnavailable) as info:
        load_cifar10()
    message = str(info.value)
    d = DATASETS["cifar10"]
    assert "\n" not in message and d.url in message and DATA_DIR_VAR in message
    assert f"{tmp_path / d.filename} is not the cifar10 file" in message
    assert f"its MD5 is {hashlib.md5(b'not the archive').hexdigest()}, expected {d.digest}" in message
    assert d.digest == "c58f30108f718f92721af3b95e74349a" and offline == []


def test_offline_without_a_copy_names_the_archive_the_folder_and_the_setting(offline, tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_VAR, str(tmp_path))
    with pytest.raises(DataUnavailable) as info:
        locate("cifar10")
    message = str(info.value)
    assert "\n" not in message and DATASETS["cifar10"].url in message
    assert f"{DATA_DIR_VAR}={tmp_path} holds no cifar-10-python.tar.gz (or cifar-10-batches-py/)" in message
    assert offline == [DATASETS["cifar10"].url]
    with pytest.raises(DataUnavailable, match=r"data.path='.*nowhere' is not a file or a cifar-10-batches-py/ "):
        locate("cifar10", tmp_path / "nowhere")


class Payload:
    def __reduce__(self):
        return (print, ("this must not run",))


def test_a_batch_naming_another_global_is_refused_not_run(tmp_path, capsys):
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({b"data": Payload(), b"labels": []}, fh)
    with pytest.raises(DataUnavailable, match=r"data_batch_3 is not a CIFAR-10 batch .*names no builtins.print"):
        load_cifar10(folder)
    assert "must not run" not in capsys.readouterr().out
    (folder / "test_batch").unlink()
    with pytest.raises(DataUnavailable, match=r"holds no test_batch"):
        load_cifar10(folder)


def test_augmentation_crops_and_flips_and_is_off_by_default(tmp_path):
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    fill = torch.tensor([-1.0, -2.0, -3.0])
    out = augment_images(x, fill, torch.Generator().manual_seed(1))
    padded = fill.view(1, 3, 1, 1).expand(6, 3, 40, 40).clone()
    padded[:, :, 4:36, 4:36] = x
    crops = padded.unfold(2, 32, 1).unfold(3, 32, 1)  # (n, c, 9, 9, 32, 32): every offset
    for i in range(6):
        views = [crops[i, :, a, b] for a in range(9) for b in range(9)]
        assert any(torch.equal(out[i], v) or torch.equal(out[i], v.flip(2)) for v in views), i
    assert not torch.equal(out, x)
    write_batches(tmp_path / "c", per_batch=8)
    cifar = load_cifar10(tmp_path / "c")
    (plain, y), (augmented, y2) = next(cifar.batches(4, 0)), next(cifar.batches(4, 0, augment=True))
    assert torch.equal(y, y2) and not torch.equal(plain, augmented)
    rows = [int((cifar.x_train == image).all(dim=(1, 2, 3)).nonzero()) for image in plain]
    assert torch.equal(cifar.y_train[rows], y)  # unaugmented batches are the training images themselves


LOADED = {}


@pytest.fixture
def shared_subset(data_copies):
    """The shared copy, loaded once for the tests that read it (after data_copies has checked the setting)."""
    if data_copies not in LOADED:
        LOADED[data_copies] = load_cifar10()
    return LOADED[data_copies]


def test_the_shared_subset_through_the_data_setting(data_copies, shared_subset):
    cifar = shared_subset
    assert cifar.source == data_copies / "cifar-10-batches-py"
    assert len(cifar.x_train) == 10000 and len(cifar.x_test) == 2000
    assert cifar.y_train.bincount().tolist() == [1000] * 10 and cifar.y_test.bincount().tolist() == [200] * 10
    assert cifar.described.startswith("cifar10: 10,000 training and 2,000 test images from ")
    assert torch.allclose(cifar.x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(cifar.x_train.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)
    assert all(0.4 < m < 0.5 for m in cifar.mean) and all(0.2 < s < 0.3 for s in cifar.std)


# --- the models through wrap --------------------------------------------------------------------

IMAGES = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
LABELS = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def vgg():
    return {p: ezp.wrap(VGG11, base_width=4, parametrization=p) for p in ("sp", "mup")}


@pytest.fixture(scope="module")
def vit():
    return {p: ezp.wrap(ViT, base_width=32, width_multiple=8, parametrization=p) for p in ("sp", "mup")}


def bit_identical_at_base(factory, plain, width):
    torch.manual_seed(0)
    ours = factory(width=width)
    torch.manual_seed(0)
    theirs = plain(width)
    a, b = dict(ours.named_parameters()), dict(theirs.named_parameters())
    ours.eval(), theirs.eval()
    return (a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            and torch.equal(ours(IMAGES[:2]), theirs(IMAGES[:2])))


def steps_and_learns(factory, width):
    torch.manual_seed(0)
    model = factory(width=width)
    opt = ezp.get_mup_optimizer(model, lr=1e-3, optimizer="adam")
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(IMAGES), LABELS)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return all(math.isfinite(v) for v in losses) and all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_vgg11_plan_base_and_step(vgg):
    plan = vgg["mup"].plan(width=32)
    assert [str(plan[f"features.{i}.weight"].shape_expr) for i in (0, 3, 6, 8, 11, 13, 16, 18)] == [
        "(w, 3, 3, 3)", "(2*w, w, 3, 3)", "(4*w, 2*w, 3, 3)", "(4*w, 4*w, 3, 3)", "(8*w, 4*w, 3, 3)",
        "(8*w, 8*w, 3, 3)", "(8*w, 8*w, 3, 3)", "(8*w, 8*w, 3, 3)"]  # VGG11's pattern, 4..32 channels at base
    assert str(plan["classifier.3.weight"].shape_expr) == "(5*w, 5*w)"  # the head: 20 at base
    assert plan["features.0.weight"].role == "input" and plan["classifier.6.weight"].role == "output"
    assert plan["features.8.weight"].role == "hidden" and plan["features.8.weight"].lr_mult == pytest.approx(1 / 8)
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.5 for m in VGG11(4).modules()) == 2
    assert bit_identical_at_base(vgg["mup"], VGG11, 4)
    assert steps_and_learns(vgg["mup"], 8)


def test_vit_plan_attention_class_token_base_and_step(vit):
    plan = vit["mup"].plan(width=256)
    cls = plan["cls_token"]
    assert str(cls.shape_expr) == "(1, 1, w)" and str(cls.fan_in) == "1" and cls.role == "input"
    assert cls.lr_mult == 1 and cls.init_std == pytest.approx(0.02)  # input-like: base std and LR kept
    assert plan["patch.weight"].role == "input" and plan["head.weight"].role == "output"
    assert plan["blocks.5.mlp.0.weight"].role == "hidden" and str(plan["blocks.5.mlp.0.weight"].shape_expr) == "(w, w)"
    assert sorted(plan.attention) == [f"blocks.{i}.attn" for i in range(6)]
    assert plan.attention["blocks.0.attn"].factor == pytest.approx(8**-0.5)  # 1/d_head: sqrt(4)/32 over 1/sqrt(32)
    assert vit["mup"](width=256).blocks[0].attn.scaling == pytest.approx(4**0.5 / 32)
    assert "positions" not in dict(ViT(32).named_parameters()) and ViT(32).positions.shape == (1, 65, 32)
    assert bit_identical_at_base(vit["mup"], ViT, 32)
    assert steps_and_learns(vit["mup"], 64)


def test_coordinate_checks_base_to_8x_mup_flat_sp_growing():
    """Dropout off: the check measures the parametrization, not the masks. Two seeds: one seed's slopes
    scatter by about 0.2 either way. The ViT sees 16x16 images (17 tokens), four times cheaper than 32x32."""
    kw = dict(loss_fn=nn.functional.cross_entropy, lr=1e-2, steps=2, seeds=2)
    widths = {"vgg": [4, 32], "vit": [32, 256]}  # base and 8x
    for name, model, base, multiple in (("vgg", VGG11, 4, 1), ("vit", ViT, 32, 8)):
        images = IMAGES if name == "vgg" else IMAGES[:4, :, :16, :16]
        data = (images, LABELS[: len(images)])
        mup = coord_check(ezp.wrap(model, base_width=base, width_multiple=multiple, dropout=0.0), widths[name], data,
                          **kw)
        sp = coord_check(partial(model, dropout=0.0), widths[name], data, **kw)
        assert mup.ok, (name, str(mup))
        assert not sp.ok, (name, str(sp))


# --- the command line and the benchmarks ----------------------------------------------------------

def test_train_the_vit_config_from_the_command_line(data_copies, tmp_path, capsys):
    main(["train", str(CONFIGS / "vit_cifar10_mup.yaml"), "--set", "train.steps=3", "--set", "model.width=32",
          "--set", "train.batch_size=8", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "cifar10: 10,000 training and 2,000 test images from " in out and "validation loss" in out
    log = json.loads((tmp_path / "loss.json").read_text())
    assert len(log["train"]) == 3 and 1.5 < log["val_loss"] < 3.5
    with pytest.raises(SystemExit):
        main(["train", str(CONFIGS / "mlp_california_sp.yaml"), "--set", "data.augment=true", "--out",
              str(tmp_path / "refused")])
    assert "data.augment is for images" in capsys.readouterr().err


def test_the_smoke_presets_write_the_seed_report(shared_subset, vgg, vit, tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import transfer_vgg_cifar10
        import transfer_vit_cifar10
        import vision
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    cifar = shared_subset
    for module, factories in ((transfer_vgg_cifar10, vgg), (transfer_vit_cifar10, vit)):
        cfg = module.PRESETS["smoke"]
        name = module.__name__
        summary = vision.sweep(name, "smoke", cfg, factories, cifar, tmp_path)
        written = json.loads((tmp_path / f"{name}_smoke.json").read_text())
        assert written["grid"] == json.loads(json.dumps(summary["grid"]))
        cells = len(cfg["widths"]) * len(cfg["lrs"])
        assert len(written["grid"]) == 2 * cells and sum(r["seeds"] for r in written["grid"]) == 2 * cells * len(cfg["seeds"])
        assert [r["parametrization"] for r in written["grid"]] == ["sp"] * cells + ["mup"] * cells
        for param in ("sp", "mup"):
            for result in (written["results"][param], written["results_by_min_train_loss"][param]):
                assert set(result["scales"]) == {str(w) for w in cfg["widths"]} and "drift_log2" in result
        assert written["settings"]["data"] == cifar.described and written["settings"]["augment"] is False
        assert (tmp_path / f"{name}_smoke.png").read_bytes()[:4] == b"\x89PNG"
        for row in written["grid"]:
            if row["diverged"] < row["seeds"]:
                assert 0 < row["min_train_loss"] < 10 and 0 < row["val_loss"] < 10
