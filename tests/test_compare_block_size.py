"""``landcover compare --block-size``: the side of the spatial split blocks, hence the test blocks that
the block bootstrap resamples. Synthetic cube (landcover.testing.cubes), real trainings of one epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from landcover.cli import main
from landcover.testing.cubes import make_cube


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("block-size")
    return make_cube(d / "c.zarr", shape=(256, 256), classes=(111, 211, 311, 512), classes_present=4, seed=3)


def _compare(cube: Path, out: Path, *extra: str) -> dict:
    argv = ["-q", "compare", str(cube), "--out", str(out), "--models", "native", "--seeds", "0",
            "--budgets", "1", "--epochs", "1", "--window", "16", "--batch-size", "8", "--lr-select", "fixed",
            "--lr", "1e-3", "--preset", "tiny", "--n-boot", "100", "--device", "cpu", "--threads", "1",
            *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def test_block_size_sets_the_split_blocks_and_the_bootstrap_units(cube: Path, tmp_path: Path) -> None:
    default = _compare(cube, tmp_path / "default")
    small = _compare(cube, tmp_path / "small", "--block-size", "24")  # rounded up to the 16 px window grid
    assert default["config"]["block"] is None and small["config"]["block"] == 24
    assert "blocks of 64 px, training buffer 16 px" in (tmp_path / "default" / "report.md").read_text()
    assert "blocks of 32 px, training buffer 16 px" in (tmp_path / "small" / "report.md").read_text()
    n_default = default["floor_comparisons"][0]["n_blocks"]
    n_small = small["floor_comparisons"][0]["n_blocks"]
    assert n_small > n_default >= 1  # smaller blocks: more test blocks for the block bootstrap
    assert small["split_windows"] != default["split_windows"]


@pytest.mark.parametrize("value", ["0", "-32", "x"])
def test_block_size_must_be_a_positive_integer(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["compare", "c.zarr", "--block-size", value])
    assert exc.value.code == 2
    assert f"expected a positive integer, got {value!r}" in capsys.readouterr().err
