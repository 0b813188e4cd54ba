"""Issue 17, "Crashes": inputs that used to end in a traceback or a signal now run (or fail clearly)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from landcover.cli import main


@pytest.fixture(scope="module")
def small_cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from landcover.cube import build_cube
    from landcover.testing.scenes import make_pair

    root = tmp_path_factory.mktemp("crash")
    pair = make_pair(root / "data", size=192, seed=3, overlap=0.9, cloud_fraction=0.05)
    return build_cube([pair.scene_dir], pair.clc_path, root / "cube.zarr", progress=False, chunks=128)


def test_train_with_a_one_window_tail_batch(small_cube: Path, tmp_path: Path) -> None:
    """8 windows in batches of 7: the last batch holds one 16-px window, 1x1 at the encoder's end."""
    out = tmp_path / "run"
    args = ["-q", "train", str(small_cube), "--window", "16", "--epochs", "1", "--batch-size", "7"]
    assert main([*args, "--budget", "8", "--out", str(out), "--device", "cpu"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert history["epochs"][-1]["samples_seen"] == 8  # the single window was trained on too


def test_singleton_batch_trains_batchnorm_weights_and_keeps_running_stats() -> None:
    import torch

    from landcover.losses import SoftLabelLoss
    from landcover.models import build_model
    from landcover.train import _optimizer_step

    torch.manual_seed(0)
    model = build_model("native", 6, 3, preset="tiny", class_codes=(1, 2, 3), seed=0)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = [m.running_mean.clone() for m in bns]
    weights = [m.weight.detach().clone() for m in bns]
    x = torch.rand(1, 6, 16, 16)
    y = torch.softmax(torch.rand(1, 3, 16, 16), dim=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    cpu = torch.device("cpu")
    loss, bs = _optimizer_step(model, (x, y, None), SoftLabelLoss("ce"), opt, scaler, cpu, None)
    assert bs == 1 and torch.isfinite(loss)
    assert all(m.training for m in bns)  # back in training mode
    assert all(torch.equal(a, m.running_mean) for a, m in zip(stats, bns, strict=True))
    assert any(not torch.equal(w, m.weight) for w, m in zip(weights, bns, strict=True))


def test_compare_with_scheduler_none_runs_here(small_cube: Path, tmp_path: Path) -> None:
    """'none' means the threaded scheduler, as for every other command (was an AssertionError)."""
    out = tmp_path / "report"
    args = ["-q", "compare", str(small_cube), "--out", str(out), "--models", "native", "--seeds", "0"]
    args += ["--window", "32", "--epochs", "1", "--budget", "8", "--scheduler", "none"]
    assert main(args) == 0
    assert (out / "report.md").is_file()
    assert (out / "runs" / "native" / "seed0" / "history.json").is_file()
