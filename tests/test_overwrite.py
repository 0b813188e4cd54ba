"""``--overwrite`` replaces only what landcover wrote (landcover.safety), for every command that has it.

Each command family is run through the real CLI on a small synthetic scene + CORINE pair
(``landcover.testing.make_pair``): ``--out .``, a user's folder, a file at the output path and a
folder holding an input are refused with one line and a non-zero exit, and the user's files
survive; a genuine landcover output is replaced.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from landcover.cli import main
from landcover.safety import MARKER, is_landcover_output

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """``(scene_dir, clc, cube)``: one small synthetic pair and its cube (read only)."""
    from landcover.cube import build_cube
    from landcover.testing import make_pair

    d = tmp_path_factory.mktemp("pair")
    p = make_pair(d / "in", size=32, seed=2)
    cube = build_cube([p.scene_dir], p.clc_path, d / "cube.zarr", chunks=16, progress=False)
    return p.scene_dir, p.clc_path, cube


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A working directory holding a user's file; the test runs inside it."""
    (tmp_path / "notes.txt").write_text("keep me")
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *, names: str) -> str:
    """Run the CLI, expect exit 1 with one line naming ``names``; return the line."""
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("landcover: ") and names in err[0], err
    assert "--overwrite" not in err[0] or "already exists" in err[0]
    return err[0]


def foreign(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("precious")
    return path


def test_cube_build(pair: tuple[Path, Path, Path], workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scene, clc, _ = pair
    # inputs inside the working directory, as a user would have them
    local_scene = Path(shutil.copytree(scene, workdir / "data" / scene.name))
    local_clc = Path(shutil.copy(clc, workdir / "data" / clc.name))
    base = ["-q", "cube", "build", "--scene", str(local_scene), "--corine", str(local_clc), "--chunk", "16",
            "--scheduler", "none"]  # fmt: skip
    before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
    line = refused([*base, "--out", ".", "--overwrite"], capsys, names="working directory")
    assert "--overwrite" not in line
    refused([*base, "--out", str(workdir / "data"), "--overwrite"], capsys, names="holds the input")
    refused([*base, "--out", str(workdir.parent), "--overwrite"], capsys, names="ancestor")
    user = foreign(workdir / "mine.zarr")
    line = refused([*base, "--out", str(user), "--overwrite"], capsys, names="did not write")
    line = refused([*base, "--out", str(user)], capsys, names="did not write")
    assert "--overwrite" not in line
    (workdir / "file.zarr").write_text("x")
    refused([*base, "--out", "file.zarr", "--overwrite"], capsys, names="a file")
    assert (workdir / "notes.txt").read_text() == "keep me" and (
        user / "thesis.tex"
    ).read_text() == "precious"
    after = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*"))
    assert after == sorted([*before, "mine.zarr", "mine.zarr/thesis.tex", "file.zarr"])
    # a genuine landcover cube built with other parameters is replaced
    assert main([*base, "--out", "c.zarr"]) == 0
    other = [*base, "--min-coverage", "0.75", "--out", "c.zarr"]
    refused(other, capsys, names="different parameters")
    assert main([*other, "--overwrite"]) == 0
    from landcover.store import open_cube

    assert open_cube(workdir / "c.zarr").attrs["min_coverage"] == 0.75


def test_cube_batch_leaves_a_users_folder(
    pair: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene, clc, _ = pair
    out = tmp_path / "batch"
    user = foreign(out / f"{scene.name}.zarr")
    rc = main(["-q", "cube", "batch", str(scene), "--corine", str(clc), "--out-dir", str(out),
               "--chunk", "16", "--overwrite", "--retries", "0", "--scheduler", "none"])  # fmt: skip
    assert rc == 3
    assert (user / "thesis.tex").read_text() == "precious"


def test_publish_dataset(
    pair: tuple[Path, Path, Path], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, cube = pair
    local = Path(shutil.copytree(cube, workdir / "cubes" / "a.zarr"))
    base = ["-q", "publish", "dataset", str(local), "--clc-year", "2018"]
    refused([*base, "--out", ".", "--overwrite"], capsys, names="working directory")
    refused([*base, "--out", str(workdir / "cubes"), "--overwrite"], capsys, names="holds the input")
    user = foreign(workdir / "pkg")
    line = refused([*base, "--out", str(user), "--overwrite"], capsys, names="did not write")
    assert "--overwrite" not in line
    (workdir / "pkg.file").write_text("x")
    refused([*base, "--out", "pkg.file", "--overwrite"], capsys, names="a file")
    assert (user / "thesis.tex").read_text() == "precious" and (workdir / "notes.txt").exists()
    assert main([*base, "--out", "real-pkg"]) == 0
    assert (workdir / "real-pkg" / MARKER).is_file() and is_landcover_output(workdir / "real-pkg")
    refused([*base, "--out", "real-pkg"], capsys, names="already exists")
    assert main([*base, "--out", "real-pkg", "--overwrite"]) == 0
    assert (workdir / "real-pkg" / "collection.json").is_file()


def test_publish_model(
    pair: tuple[Path, Path, Path], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from landcover.models import build_model, save_model

    ckpt = save_model(workdir / "runs" / "best.pt", build_model("native", 6, 3, preset="tiny", seed=0))
    card = ["--cube", str(pair[2]), "--license", "MIT", "--clc-year", "2018"]
    base = ["-q", "publish", "model", str(ckpt), *card]
    refused([*base, "--out", str(workdir / "runs"), "--overwrite"], capsys, names="holds the input")
    user = foreign(workdir / "pkg")
    refused([*base, "--out", str(user), "--overwrite"], capsys, names="did not write")
    assert (user / "thesis.tex").exists()
    assert main([*base, "--out", "m"]) == 0
    assert main([*base, "--out", "m", "--overwrite"]) == 0


def test_labels(pair: tuple[Path, Path, Path], workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, clc, cube = pair
    base = ["-q", "labels", str(clc), "--like", str(cube), "--chunks", "16", "--scheduler", "none"]
    user = foreign(workdir / "lab.zarr")
    line = refused([*base, "--out", str(user), "--overwrite"], capsys, names="did not write")
    assert "--overwrite" not in line
    (workdir / "lab.tif").write_bytes(b"not a tiff")
    refused([*base, "--out", "lab.tif", "--overwrite"], capsys, names="a file")
    assert (user / "thesis.tex").exists() and (workdir / "lab.tif").read_bytes() == b"not a tiff"
    for name in ("ok.zarr", "ok.tif"):
        assert main([*base, "--out", name]) == 0
        assert is_landcover_output(workdir / name)
        refused([*base, "--out", name], capsys, names="already exists")
        assert main([*base, "--out", name, "--overwrite", "--level", "1"]) == 0


def test_predict(pair: tuple[Path, Path, Path], workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import xarray as xr

    from landcover.models import build_model, save_model
    from landcover.store import open_cube

    _, _, cube = pair
    codes = [int(c) for c in open_cube(cube)["class"].values]
    model = build_model("native", 6, len(codes), preset="tiny", class_codes=codes, seed=0)
    ckpt = save_model(workdir / "best.pt", model)
    base = ["-q", "predict", str(ckpt), "--cube", str(cube), "--window", "16", "--overlap", "4",
            "--device", "cpu", "--no-quicklook", "--no-cog", "--scheduler", "none"]  # fmt: skip
    user = foreign(workdir / "o" / "prediction.zarr")
    refused([*base, "--out", "o", "--overwrite"], capsys, names="did not write")
    assert (user / "thesis.tex").exists()
    (workdir / "f").write_text("x")
    refused([*base, "--out", "f"], capsys, names="not a folder")
    assert main([*base, "--out", "p"]) == 0
    refused([*base, "--out", "p"], capsys, names="already exists")
    assert main([*base, "--out", "p", "--overwrite"]) == 0
    assert "class_map" in xr.open_zarr(workdir / "p" / "prediction.zarr")


def test_library_write_cube_refuses_what_it_did_not_write(tmp_path: Path) -> None:
    from landcover.errors import InputFileError
    from landcover.safety import check_output, guard_output, remove_output

    user = foreign(tmp_path / "u")
    with pytest.raises(InputFileError, match="did not write"):
        remove_output(user)
    with pytest.raises(InputFileError, match="home directory|ancestor"):
        guard_output(Path.home())
    with pytest.raises(InputFileError, match="is an input"):
        guard_output(tmp_path / "u" / "thesis.tex", inputs=[tmp_path / "u" / "thesis.tex"])
    link = tmp_path / "l"
    link.symlink_to(user)
    with pytest.raises(InputFileError, match="link"):
        check_output(link, overwrite=True)
    assert user.exists() and not check_output(tmp_path / "new", overwrite=False)


def test_synth_force_replaces_only_synthetic_products(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from landcover.testing import product_id

    base = ["-q", "synth", "d", "--size", "16"]
    assert main(base) == 0
    pid = product_id()
    assert is_landcover_output(workdir / "d" / pid) and is_landcover_output(workdir / "d" / "clc.tif")
    assert main([*base, "--force"]) == 0  # its own output is replaced
    # a real product of the same id and a user's CORINE raster are never written over
    shutil.rmtree(workdir / "d" / pid)
    real = foreign(workdir / "d" / pid)
    refused([*base, "--force"], capsys, names="did not write")
    assert (real / "thesis.tex").exists()
    shutil.rmtree(real)
    (workdir / "d" / "clc.tif").write_bytes(b"my corine")
    refused([*base, "--force"], capsys, names="clc.tif")
    assert (workdir / "d" / "clc.tif").read_bytes() == b"my corine"


def test_predict_writes_over_no_user_file_in_its_folder(
    pair: tuple[Path, Path, Path], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from landcover.models import build_model, save_model
    from landcover.store import open_cube

    _, _, cube = pair
    codes = [int(c) for c in open_cube(cube)["class"].values]
    ckpt = save_model(
        workdir / "best.pt", build_model("native", 6, len(codes), preset="tiny", class_codes=codes)
    )
    (workdir / "maps").mkdir()
    (workdir / "maps" / "legend.json").write_text("my legend")
    argv = ["-q", "predict", str(ckpt), "--cube", str(cube), "--out", "maps", "--window", "16",
            "--overlap", "4", "--device", "cpu", "--scheduler", "none"]  # fmt: skip
    refused(argv, capsys, names="legend.json")
    assert (workdir / "maps" / "legend.json").read_text() == "my legend"
    assert not (workdir / "maps" / "prediction.zarr").exists()
