"""The CLI behaves like one tool: shared options mean the same everywhere, help shows defaults, quiet output.

Synthetic cubes (landcover.testing) and, for ``cube build``, the real LT05 L2 product in ../shared/data/real.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from landcover.cli import build_parser, main
from landcover.errors import InputFileError
from landcover.testing.cubes import make_cube

BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
CODES = (111, 211, 311, 512)
REAL_L2 = "landsat/LT05_L2SP_090084_19980308_20200909_02_T1"


def _parsers(
    parser: argparse.ArgumentParser, path: str = "landcover"
) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out += _parsers(child, f"{path} {name}")
    return out


def test_every_option_has_help_that_shows_its_default() -> None:
    skip = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    parsers = _parsers(build_parser())
    assert len(parsers) > 15
    for path, parser in parsers:
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, skip):
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest
            assert action.help, f"{path} {name} has no help text"
            if action.option_strings and action.default not in (None, False, True, argparse.SUPPRESS):
                # the help line of this option names a default
                line = text.split(f" {name} ", 1)[-1].split(" --", 1)[0]
                assert "default" in line.lower(), f"{path} {name}: default {action.default!r} not shown"


def test_shared_options_parse_alike() -> None:
    parser = build_parser()
    commands = {
        "train": ["train", "c.zarr"],
        "compare": ["compare", "c.zarr"],
        "demo": ["demo"],
        "experiment run": ["experiment", "run", "x.toml"],
        "transfer": ["transfer", "m.pt", "--cube", "c.zarr", "--out", "o"],
        "predict": ["predict", "m.pt", "--cube", "c.zarr", "--out", "o"],
    }
    for argv in commands.values():
        assert parser.parse_args([*argv, "--device", "cuda:1"]).device == "cuda:1"
        assert parser.parse_args([*argv, "--device", "CPU"]).device == "cpu"
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--device", "gpu"])
        args = parser.parse_args([*argv, "-q", "--debug"])  # also after the sub-command
        assert args.quiet and args.debug
    for name in ("compare", "transfer", "demo"):
        argv = commands[name]
        spaced = parser.parse_args([*argv, "--seeds", "3", "4", "5"]).seeds
        commas = parser.parse_args([*argv, "--seeds", "3,4,5"]).seeds
        assert spaced == commas == (3, 4, 5), name
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, "--seeds", "1,x"])
    assert not parser.parse_args(["demo"]).quiet


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    return make_cube(d / "c.zarr", shape=(64, 64), classes=CODES, classes_present=4, chunks=64, seed=2)


def test_quiet_and_debug_after_the_subcommand(
    cube: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["cube", "export", str(cube), "--variables", "coverage", "--blocksize", "16"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    assert "exported" in capsys.readouterr().out
    assert main([*argv, "--out", str(tmp_path / "b"), "-q"]) == 0
    assert capsys.readouterr().out == ""
    with pytest.raises(InputFileError):  # --debug: the exception itself, not one line and status 1
        main(["cube", "export", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "c"), "--debug"])


def _checkpoint(path: Path) -> Path:
    from landcover.models import build_model, save_model

    model = build_model("native", 6, len(CODES), preset="tiny", bands=BANDS, class_codes=CODES, seed=0)
    return Path(save_model(path, model))


def test_predict_hides_zarr_warnings_and_checks_inputs_before_the_cluster(
    cube: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from landcover.predict import predict_map

    ckpt = _checkpoint(tmp_path / "m.pt")
    common = [str(ckpt), "--cube", str(cube), "--window", "32", "--device", "cpu", "-q"]
    # a window/overlap mistake is found before a cluster starts: one line, no dashboard link
    assert main(["predict", *common, "--overlap", "32", "--out", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "overlap 32 must be smaller" in err and "dashboard" not in err.lower()
    assert main(["predict", *common[:-1], "--overlap", "40", "--out", str(tmp_path / "bad2")]) == 1
    assert "dashboard" not in capsys.readouterr().err.lower()

    def consolidated(rec: list[warnings.WarningMessage]) -> int:
        return sum("Consolidated metadata" in str(w.message) for w in rec)

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        predict_map(ckpt, cube, tmp_path / "lib", window=32, overlap=8, device="cpu", quicklook=False)
    assert consolidated(rec) > 0  # the library path does warn (what the CLI must hide)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        argv = ["predict", *common, "--overlap", "8", "--out", str(tmp_path / "cli"), "--scheduler", "none"]
        assert main(argv) == 0
    assert consolidated(rec) == 0


def test_labels_progress_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    import dask

    from landcover.progress import dask_progress  # what landcover.labels.write_labels reports with

    with dask_progress("labels", enabled=True):
        dask.delayed(time.sleep)(1.3).compute(scheduler="threads")
    out, err = capsys.readouterr()
    assert out == "" and "100%" in err
    assert "\r" not in err  # stderr is not a terminal here: lines, not carriage-return redraws


def test_labels_cluster_progress_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    import dask
    from distributed import Client, LocalCluster

    from landcover.progress import wait_with_progress

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            capsys.readouterr()
            fut = client.compute(dask.delayed(time.sleep)(0.6))
            wait_with_progress(fut, "labels")
            assert fut.done()
    out, err = capsys.readouterr()
    assert out == "" and "100%" in err
    assert "\r" not in err  # stderr is not a terminal here: lines, not carriage-return redraws


@pytest.mark.real
def test_cube_build_rerun_says_complete(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    arr = np.kron(rng.integers(1, 45, size=(60, 70)), np.ones((4, 4), dtype=int))[:225, :250].astype("uint8")
    clc = tmp_path / "clc.tif"
    with rasterio.open(
        clc, "w", driver="GTiff", height=225, width=250, count=1, dtype="uint8", crs="EPSG:32655",
        transform=from_origin(636085.0, -3722785.0, 1000.0, 1000.0), nodata=255,
    ) as dst:  # fmt: skip
        dst.write(arr, 1)
    store = tmp_path / "c.zarr"
    argv = ["cube", "build", "--scene", str(shared_data / REAL_L2), "--corine", str(clc), "--out", str(store)]
    argv += ["--scheduler", "none"]
    assert main(argv) == 0
    assert "cube written" in capsys.readouterr().out
    assert main(argv) == 0
    assert "cube already complete, nothing to do" in capsys.readouterr().out


def test_device_cuda_n_is_accepted_by_every_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    from landcover.experiment import CompareConfig
    from landcover.train import TrainConfig
    from landcover.transfer import TransferConfig, TransferTrainConfig

    for cls in (CompareConfig, TrainConfig, TransferConfig, TransferTrainConfig):
        assert cls(device="CUDA:1").device == "cuda:1", cls.__name__
        with pytest.raises(ValueError, match="cuda:N"):
            cls(device="gpu")
    # transfer --device cuda:N passes the config check; what fails is the missing checkpoint
    argv = ["transfer", str(tmp_path / "none.pt"), "--cube", str(tmp_path / "c.zarr"), "--out", str(tmp_path)]
    assert main([*argv, "--device", "cuda:1", "-q"]) == 1
    err = capsys.readouterr().err
    assert "none.pt: checkpoint file not found" in err and "device must" not in err
