"""The phase-1 comparison end to end: synthetic scene + CLC -> cube -> compare -> report."""

import json

import pytest

from landcover.cli import main
from landcover.errors import ConfigError, InputFileError
from landcover.experiment import CompareConfig, run_compare, summarise, write_report


@pytest.fixture(scope="module")
def demo_cube(tmp_path_factory):
    from landcover.cube import build_cube
    from landcover.testing.scenes import make_pair

    root = tmp_path_factory.mktemp("exp")
    pair = make_pair(root / "data", size=448, seed=3, overlap=0.9, cloud_fraction=0.05)
    return build_cube([pair.scene_dir], pair.clc_path, root / "cube.zarr", progress=False, chunks=256)


@pytest.mark.slow
def test_native_beats_rgb_on_synthetic_twins(demo_cube, tmp_path):
    """The synthetic landscape has classes identical in RGB: the native model must win clearly."""
    cfg = CompareConfig(
        cubes=(str(demo_cube),),
        out=tmp_path / "report",
        models=("native", "rgb-scratch"),
        seeds=(0,),
        window=32,
        epochs=6,
        lr=5e-3,
        progress=False,
    )
    result = run_compare(cfg, log=lambda _m: None)
    report = write_report(result)
    for name in (
        "report.md",
        "metrics.json",
        "learning_curves_samples.png",
        "learning_curves_epochs.png",
        "per_class_iou.png",
        "prediction_map.png",
    ):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    native = metrics["models"]["native"]["test"]
    rgb = metrics["models"]["rgb-scratch"]["test"]
    # both models saw the same windows, split and seed
    assert metrics["models"]["native"]["train_windows"] == metrics["models"]["rgb-scratch"]["train_windows"]
    assert native["acc_l3"]["mean"] > rgb["acc_l3"]["mean"] + 0.05
    assert native["miou_l3"]["mean"] > rgb["miou_l3"]["mean"]
    text = report.read_text()
    assert "| native |" in text and "| rgb-scratch |" in text
    assert metrics["best_model"] == "native"
    for run in result.runs:
        assert (run.run_dir / "history.json").is_file()
        assert (run.run_dir / "best.pt").is_file() or (run.run_dir / "last.pt").is_file()


def test_missing_imagenet_weights_runs_rgb_under_honest_name(demo_cube, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    messages: list[str] = []
    cfg = CompareConfig(
        cubes=(str(demo_cube),),
        out=tmp_path / "r",
        models=("native", "rgb-imagenet"),
        seeds=(0,),
        window=32,
        epochs=1,
        max_train_windows=8,
        progress=False,
    )
    result = run_compare(cfg, log=messages.append)
    assert sorted({r.model for r in result.runs}) == ["native", "rgb-scratch"]
    assert any("ImageNet weights not found" in m for m in messages)
    summary = summarise(result)
    assert any("rgb-imagenet not run" in n for n in summary["notes"])
    assert all(r.train_windows == 8 for r in result.runs)
    write_report(result)
    assert "ImageNet weights not found" in (tmp_path / "r" / "report.md").read_text()


def test_imagenet_weights_from_local_file(demo_cube, tmp_path, monkeypatch):
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    weights = tmp_path / "resnet18-f37072fd.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    cfg = CompareConfig(
        cubes=(str(demo_cube),),
        out=tmp_path / "r",
        models=("rgb-imagenet",),
        seeds=(0,),
        window=32,
        epochs=1,
        max_train_windows=4,
        batch_size=4,
        imagenet_weights=str(weights),
        progress=False,
    )
    result = run_compare(cfg, log=lambda _m: None)
    assert result.preset == "base"
    assert [r.model for r in result.runs] == ["rgb-imagenet"]


def test_config_and_input_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="split_fractions"):
        CompareConfig(split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="no cubes"):
        run_compare(CompareConfig(), log=lambda _m: None)
    with pytest.raises(InputFileError):
        run_compare(CompareConfig(cubes=(str(tmp_path / "nope.zarr"),)), log=lambda _m: None)
    assert main(["compare", str(tmp_path / "nope.zarr"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("landcover: ") and "nope.zarr" in err and len(err.strip().splitlines()) == 1


def test_train_cli_lr_find_and_outputs(demo_cube, tmp_path):
    out = tmp_path / "run"
    code = main(
        ["-q", "train", str(demo_cube), "--window", "32", "--epochs", "1", "--budget", "16", "--lr-find",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    for name in ("lr_find.png", "history.png", "history.json", "last.pt", "test_metrics.json"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "test_metrics.json").read_text())
    assert 0.0 <= metrics["acc_l3"] <= 1.0


@pytest.mark.slow
def test_demo_runs_end_to_end_small(tmp_path, capsys):
    """`make demo` in miniature: synth -> cube -> compare -> report -> prediction map."""
    code = main(
        ["-q", "demo", "--out", str(tmp_path / "demo"), "--size", "320", "--epochs", "1", "--seeds", "0"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "report:" in out
    root = tmp_path / "demo"
    assert (root / "report" / "report.md").is_file()
    assert (root / "map" / "class_map.tif").is_file() and (root / "map" / "quicklook.png").is_file()
    from landcover.store import open_cube

    assert float(open_cube(root / "cube.zarr").valid.mean()) > 0.3


@pytest.mark.cluster
@pytest.mark.slow
def test_compare_runs_on_a_local_cluster(demo_cube, tmp_path):
    """Each (model, seed) run is a task on a real LocalCluster; results match the runs' records."""
    cfg = CompareConfig(
        cubes=(str(demo_cube),),
        out=tmp_path / "r",
        models=("native", "rgb-scratch"),
        seeds=(0,),
        window=32,
        epochs=1,
        max_train_windows=8,
        progress=False,
        scheduler="local",
    )
    result = run_compare(cfg, log=lambda _m: None)
    assert sorted(r.model for r in result.runs) == ["native", "rgb-scratch"]
    for r in result.runs:
        assert r.train_windows == 8
        assert (r.run_dir / "history.json").is_file()
