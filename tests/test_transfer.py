"""Transfer: model surgery, strategies, budgets, label hook, and the experiment end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

from landcover.datasets import WindowDataset
from landcover.errors import ConfigError
from landcover.models import build_model, save_model
from landcover.testing.cubes import make_cube
from landcover.transfer import (
    LabelVariableDataset,
    TransferConfig,
    TransferTrainConfig,
    budget_indices,
    param_groups,
    run_transfer,
    train_transfer,
    transfer_model,
    write_report,
)

BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
CODES = (111, 112, 211, 231, 311, 312, 411, 512)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny models run fastest (and without oversubscription on a shared machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("transfer") / "c.zarr"
    return make_cube(path, shape=(192, 192), classes=CODES, classes_present=8, chunks=64, seed=4)


@pytest.fixture(scope="module")
def phase1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model("native", 6, len(CODES), preset="tiny", bands=BANDS, class_codes=CODES, seed=11)
    return save_model(tmp_path_factory.mktemp("ckpt") / "best.pt", model)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_transfer_model_keeps_backbone_and_replaces_head(phase1: Path) -> None:
    from landcover.models import model_from_checkpoint

    src = model_from_checkpoint(phase1)
    new = transfer_model(phase1, (1, 2, 3, 4, 5), seed=0)
    assert new.spec.class_codes == (1, 2, 3, 4, 5) and new.spec.num_classes == 5
    s, n = src.state_dict(), new.state_dict()
    for k in s:
        if k.startswith("head."):
            assert n[k].shape != s[k].shape or not torch.equal(n[k], s[k])
        else:
            assert torch.equal(n[k], s[k]), k
    # seeded head: same seed, same head
    again = transfer_model(phase1, (1, 2, 3, 4, 5), seed=0)
    assert torch.equal(again.head.weight, new.head.weight)


def test_param_groups_follow_the_strategy(phase1: Path) -> None:
    model = transfer_model(phase1, (1, 2, 3, 4, 5))
    enc = sum(p.numel() for p in model.encoder.parameters())
    groups, frozen = param_groups(model, "frozen", lr=1e-3)
    assert [g["name"] for g in groups] == ["decoder"] and frozen
    assert not any(p.requires_grad for p in model.encoder.parameters())
    groups, frozen = param_groups(model, "partial", lr=1e-3, partial_stages=1)
    assert [g["name"] for g in groups] == ["encoder", "decoder"]
    assert groups[0]["lr"] == pytest.approx(1e-4)
    assert 0 < sum(p.numel() for p in groups[0]["params"]) < enc
    assert all(p.requires_grad for p in model.encoder.layer3.parameters())
    assert not any(p.requires_grad for p in model.encoder.layer1.parameters())
    groups, frozen = param_groups(model, "full", lr=2e-3, encoder_lr_factor=0.25)
    assert frozen == [] and sum(p.numel() for p in groups[0]["params"]) == enc
    assert groups[0]["lr"] == pytest.approx(5e-4) and groups[1]["lr"] == pytest.approx(2e-3)
    with pytest.raises(ConfigError):
        param_groups(model, "bogus", lr=1e-3)  # type: ignore[arg-type]


def test_frozen_strategy_leaves_encoder_unchanged_while_head_learns(cube: Path, phase1: Path) -> None:
    ds = WindowDataset(cube, size=64, stride=64, bands=list(BANDS), level=1, min_valid=0.1)
    codes = tuple(int(c) for c in ds.class_codes)
    assert codes == (1, 2, 3, 4, 5)
    model = transfer_model(phase1, codes)
    enc_before = _state(model.encoder)
    head_before = _state(model.head)
    dec_before = _state(model.decoder)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    val = torch.utils.data.DataLoader(ds, batch_size=8)
    cfg = TransferTrainConfig(epochs=1, min_steps=4, strategy="frozen", lr=1e-2, device="cpu", seed=0)
    messages: list[str] = []
    hist = train_transfer(model, loader, val, cfg, class_codes=codes, log=messages.append)
    assert hist.meta["strategy"] == "frozen" and hist.epochs
    n_batches = len(loader)
    epochs = max(1, -(-4 // n_batches))  # whole epochs, at least min_steps steps
    assert len(hist.epochs) == epochs and hist.meta["total_steps"] == epochs * n_batches >= 4
    assert len(messages) == len(hist.epochs) and "val miou_l3" in messages[0]
    # learning curve: a validation before training, then one per epoch (val_every_samples=None)
    assert [r["samples_seen"] for r in hist.samples] == [0] + [r["samples_seen"] for r in hist.epochs]
    assert all("val_miou_l3" in r for r in hist.samples)
    assert not model.training
    for k, v in _state(model.encoder).items():  # weights AND BatchNorm running statistics
        assert torch.equal(v, enc_before[k]), k
    assert any(not torch.equal(v, head_before[k]) for k, v in _state(model.head).items())
    assert any(not torch.equal(v, dec_before[k]) for k, v in _state(model.decoder).items())

    model2 = transfer_model(phase1, codes)
    cfg2 = TransferTrainConfig(epochs=1, min_steps=4, strategy="full", lr=1e-2, device="cpu", seed=0)
    hist2 = train_transfer(model2, loader, None, cfg2, class_codes=codes)
    assert any(not torch.equal(v, enc_before[k]) for k, v in _state(model2.encoder).items())
    assert hist2.meta["groups"] == pytest.approx({"encoder": 1e-3, "decoder": 1e-2})
    for r in hist2.epochs:  # one schedule, the encoder at a tenth of the decoder's LR
        assert r["lr_encoder"] == pytest.approx(0.1 * r["lr_decoder"], rel=1e-9)


def test_partial_strategy_trains_the_last_stage_and_resumes_from_checkpoints(
    cube: Path, phase1: Path, tmp_path: Path
) -> None:
    ds = WindowDataset(cube, size=64, stride=64, bands=list(BANDS), level=1, min_valid=0.1)
    codes = tuple(int(c) for c in ds.class_codes)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    model = transfer_model(phase1, codes)
    before = _state(model.encoder)
    cfg = TransferTrainConfig(
        epochs=2, min_steps=0, strategy="partial", partial_stages=1, encoder_lr_factor=0.2, lr=1e-2,
        device="cpu", checkpoint_dir=tmp_path / "run",
    )  # fmt: skip
    hist = train_transfer(model, loader, None, cfg, class_codes=codes)
    after = _state(model.encoder)
    last = f"layer{len([k for k in dict(model.encoder.named_children()) if k.startswith('layer')])}."
    for k, v in after.items():  # stem and early stages: weights and BN statistics untouched
        if not k.startswith(last):
            assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, before[k]) for k, v in after.items() if k.startswith(last))
    assert all(r["lr_encoder"] == pytest.approx(0.2 * r["lr_decoder"], rel=1e-9) for r in hist.epochs)
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "history.json").is_file()
    # resuming the finished run trains nothing more and gives the same history
    again = transfer_model(phase1, codes)
    resumed = train_transfer(again, loader, None, dataclasses.replace(cfg, resume=True), class_codes=codes)
    assert [r["train_loss"] for r in resumed.epochs] == [r["train_loss"] for r in hist.epochs]
    for k, v in _state(again).items():
        assert torch.equal(v, _state(model)[k]), k
    # but not with another strategy (other parameter groups)
    other = dataclasses.replace(cfg, resume=True, strategy="full")
    with pytest.raises(ConfigError, match="cannot resume"):
        train_transfer(transfer_model(phase1, codes), loader, None, other, class_codes=codes)


def test_budgets_are_nested_deterministic_and_seeded() -> None:
    n = 537
    a1, a10, a100 = (budget_indices(n, f, seed=3) for f in (0.01, 0.1, 1.0))
    assert len(a1) == 6 and len(a10) == 54 and len(a100) == n
    assert set(a1) <= set(a10) <= set(a100) == set(range(n))
    np.testing.assert_array_equal(a10, budget_indices(n, 0.1, seed=3))
    assert not np.array_equal(a10, budget_indices(n, 0.1, seed=4))
    assert len(budget_indices(5, 0.01, seed=0)) == 1
    with pytest.raises(ValueError):
        budget_indices(10, 0.0, seed=0)


def test_label_variable_hook_reads_user_classes(tmp_path: Path) -> None:
    from landcover.store import add_variables

    store = make_cube(tmp_path / "u.zarr", shape=(96, 96), classes=CODES, chunks=32, seed=2)
    yy, xx = np.mgrid[0:96, 0:96]
    water = np.where(xx < 48, 1, 2).astype("uint8")  # a user raster on the cube grid
    water[:8, :8] = 0  # nodata
    grid = xr.open_zarr(store)
    add_variables(store, xr.Dataset({"water": (("y", "x"), water)}, coords={"y": grid.y, "x": grid.x}))
    base = WindowDataset(store, size=32, stride=32, bands=list(BANDS), min_valid=0.0)
    ds = LabelVariableDataset(base, "water", class_codes=(1, 2))
    assert len(ds) == len(base) == 9
    for i in range(len(ds)):
        item = ds[i]
        _, _, r, c = (int(v) for v in item["position"])
        expect = water[r : r + 32, c : c + 32]
        t = item["target"].numpy()
        m = item["mask"].numpy()
        assert t.shape == (2, 32, 32)
        np.testing.assert_array_equal(t[0][m], (expect == 1)[m])
        np.testing.assert_array_equal(t[1][m], (expect == 2)[m])
        assert not m[expect == 0].any()
    with pytest.raises(Exception, match="no variable"):
        LabelVariableDataset(base, "nope", class_codes=(1,))


def test_experiment_end_to_end_writes_the_report(cube: Path, phase1: Path, tmp_path: Path) -> None:
    cfg = TransferConfig(
        cubes=(str(cube),),
        checkpoint=str(phase1),
        out=str(tmp_path / "report"),
        level=1,
        inits=("phase1", "imagenet", "scratch"),
        strategy="frozen",
        budgets=(0.25, 1.0),
        seeds=(0, 1),
        imagenet_weights=str(tmp_path / "no-weights-here"),
        window=48,
        min_valid=0.1,
        split_block=96,
        split_fractions=(0.5, 0.25, 0.25),
        epochs=1,
        min_steps=2,
        batch_size=4,
        val_every_samples=4,
        device="cpu",
        num_threads=1,
    )
    messages: list[str] = []
    result = run_transfer(cfg, log=messages.append)
    assert any("ImageNet init skipped" in m for m in messages)
    assert {(r.init, r.budget, r.seed) for r in result.runs} == {
        (i, b, s) for i in ("phase1", "scratch") for b in (0.25, 1.0) for s in (0, 1)
    }
    small = [r.train_windows for r in result.runs if r.budget == 0.25]
    full = [r.train_windows for r in result.runs if r.budget == 1.0]
    assert max(small) < min(full) == result.split_sizes["train"]
    report = write_report(result)
    out = report.parent
    for name in ("report.md", "metrics.json", "budget_curve.png", "learning_curves_25pct.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"phase1@0.25", "phase1@1", "scratch@0.25", "scratch@1"}
    assert metrics["class_codes"] == [1, 2, 3, 4, 5]
    entry = metrics["models"]["phase1@1"]
    assert entry["strategy"] == "frozen" and entry["seeds"] == [0, 1]
    assert 0.0 <= entry["test"]["acc_l3"]["mean"] <= 1.0
    text = report.read_text()
    assert "ImageNet init skipped" in text and "| phase1 |" in text and "| scratch |" in text


def test_transfer_cli_and_pipeline(
    cube: Path, phase1: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from landcover.cli import main

    common = ["--window", "48", "--epochs", "1", "--min-steps", "1", "--batch-size", "8", "--device", "cpu"]
    common += ["--min-valid", "0.1", "--split-block", "96", "--split-fractions", "0.5,0.25,0.25"]
    args = ["-q", "transfer", str(phase1), "--cube", str(cube), "--out", str(tmp_path / "r"), "--level", "2"]
    assert main([*args, "--inits", "phase1", "--budgets", "1", "--seeds", "0", *common]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert list(metrics["models"]) == ["phase1@1"] and all(c > 10 for c in metrics["class_codes"])
    assert main([*args, "--inits", "phase1,bogus", *common]) == 1
    assert "inits must be" in capsys.readouterr().err

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))
    try:
        import transfer as transfer_pipeline
    finally:
        sys.path.pop(0)
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        f'[transfer]\ncubes = ["{cube}"]\ncheckpoint = "{phase1}"\nout = "p"\ninits = ["scratch"]\n'
        'budgets = [0.5]\nseeds = [1]\nwindow = 48\nepochs = 1\nmin_steps = 1\ndevice = "cpu"\n'
        "min_valid = 0.1\nsplit_block = 96\nsplit_fractions = [0.5, 0.25, 0.25]\n"
    )
    assert transfer_pipeline.main([str(cfg)]) == 0
    assert (tmp_path / "p" / "report.md").is_file()
    assert transfer_pipeline.main([str(cfg), "--checkpoint", str(tmp_path / "none.pt")]) == 1
