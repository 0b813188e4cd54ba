"""Issue 17, "Messages that name the file": one line naming the file and the problem, nothing beside it.

Full disk and read-only destinations are real file systems where the machine allows it
(a tiny tmpfs mounted by root); otherwise a read-only folder is made with chmod and a
full disk is simulated by the write call raising ENOSPC (the only simulated case).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from landcover.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair_and_cube(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from landcover.cube import build_cube
    from landcover.testing.scenes import make_pair

    root = tmp_path_factory.mktemp("msg")
    pair = make_pair(root / "data", size=128, seed=2, overlap=1.0)
    cube = build_cube([pair.scene_dir], pair.clc_path, root / "cube.zarr", progress=False, chunks=64)
    return Path(pair.scene_dir), Path(pair.clc_path), Path(cube)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command in its own process: stderr as the user sees it (C libraries included)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CPL_LOG", None)
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, "-m", "landcover", "-q", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


@contextmanager
def _tmpfs(path: Path, *, size_kb: int, read_only: bool = False) -> Iterator[bool]:
    """Mount a tmpfs at ``path`` when this process may (root); yields whether it did."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        opts = f"size={size_kb}k" + (",ro" if read_only else "")
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)]).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=False)


def _damage(cube: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "damaged.zarr"
    shutil.copytree(cube, bad)
    chunk = sorted((bad / "reflectance" / "c").rglob("*"))[-1]
    assert chunk.is_file()
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    return bad


def test_truncated_zarr_chunk_names_store_variable_and_chunk(
    pair_and_cube: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from landcover.models import build_model, save_model

    _, _, cube = pair_and_cube
    bad = _damage(cube, tmp_path)
    stats = {"band_mean": [0.1] * 6, "band_std": [0.1] * 6}  # recorded: no normalisation warning
    model = build_model("native", 6, 3, preset="tiny", class_codes=(111, 211, 311), seed=0, **stats)
    ckpt = save_model(tmp_path / "m.pt", model)
    # used to die with SIGSEGV inside c-blosc (exit 139), so: in its own process
    r = _cli("predict", str(ckpt), "--cube", str(bad), "--out", "map", "--scheduler", "none", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr
    assert len(lines) == 1 and str(bad) in lines[0] and "'reflectance'" in lines[0], lines
    assert "chunk (0, 0, 1, 1)" in lines[0] and "truncated" in lines[0]
    assert not (tmp_path / "map").exists()  # nothing left of the failed prediction
    # the training reader (raw chunk files) names the chunk file
    code = main(["-q", "train", str(bad), "--window", "16", "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "truncated" in err[0]
    assert f"{bad}/reflectance/c/0/0/1/1: damaged chunk" in err[0]
    assert not (tmp_path / "run").exists()  # no empty run folder left behind


def test_truncated_corine_raster_names_the_file_and_no_gdal_lines(
    pair_and_cube: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    scene, clc, _ = pair_and_cube
    data = clc.read_bytes()
    cut = tmp_path / "clc_cut.tif"
    cut.write_bytes(data[: len(data) * 2 // 3])
    r = _cli("labels", str(cut), "--like", str(scene), "--out", "l.zarr", "--scheduler", "none", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"landcover: {cut}: ") and "damaged or truncated" in lines[0]
    assert not (tmp_path / "l.zarr").exists()


def test_full_disk_names_the_output(
    pair_and_cube: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    scene, clc, _ = pair_and_cube
    with _tmpfs(tmp_path / "small", size_kb=200) as mounted:
        if mounted:  # a real full disk: GeoTIFFs (libtiff) and a Zarr store
            r = _cli("synth", "small/syn", "--size", "256", cwd=tmp_path)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 1 and lines == [lines[0]], r.stderr  # no libtiff/GDAL lines beside it
            assert lines[0].startswith("landcover: small/syn: cannot write: no space left on device"), lines
            out = tmp_path / "small" / "cube.zarr"
        else:  # simulated, the only simulated case: the store's write call fails as on a full disk
            import zarr.storage._local as local

            def full(*_a: object, **_k: object) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(local, "_put", full)
            out = tmp_path / "cube.zarr"
        code = main(["-q", "cube", "build", "--scene", str(scene), "--corine", str(clc), "--out", str(out),
                     "--scheduler", "none"])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1, err
        assert err[0] == f"landcover: {out}: cannot write: no space left on device"


def test_read_only_destination_names_the_output(
    pair_and_cube: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene, clc, cube = pair_and_cube
    ro = tmp_path / "ro"
    with _tmpfs(ro, size_kb=1024, read_only=True) as mounted:
        if not mounted:
            ro.chmod(0o555)
        try:
            out = ro / "cube.zarr"
            argv = ["-q", "cube", "build", "--scene", str(scene), "--corine", str(clc), "--out", str(out)]
            code = main([*argv, "--scheduler", "none"])
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 1 and len(err) == 1, err
            problem = "read-only file system" if mounted else "permission denied"
            assert err[0] == f"landcover: {out}: cannot write: {problem}"
            code = main(
                ["-q", "train", str(cube), "--window", "16", "--epochs", "1", "--out", str(ro / "run")]
            )
            err = capsys.readouterr().err.strip().splitlines()
            assert code == 1 and err == [f"landcover: {ro / 'run'}: cannot write: {problem}"]
        finally:
            if not mounted:
                ro.chmod(0o755)


def test_failed_train_leaves_no_empty_run_folder(
    pair_and_cube: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, cube = pair_and_cube
    out = tmp_path / "runs" / "a"
    assert main(["-q", "train", str(cube), "--window", "4096", "--epochs", "1", "--out", str(out)]) == 1
    assert "not enough windows" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made is never removed
    assert main(["-q", "train", str(cube), "--window", "4096", "--out", str(tmp_path / "mine")]) == 1
    assert (tmp_path / "mine").is_dir()


def test_fetch_bbox_west_of_east_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fetch", "search", "--bbox", "10", "40", "5", "45", "--stac", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "west 10 is not less than east 5" in err[0]


def test_config_string_where_a_list_is_expected(tmp_path: Path) -> None:
    from landcover.config import load_config
    from landcover.errors import LandcoverError
    from landcover.experiment import CompareConfig

    f = tmp_path / "job.toml"
    f.write_text('[compare]\ncubes = "data/cube.zarr"\n')
    assert load_config(CompareConfig, f, section="compare").cubes == ("data/cube.zarr",)
    f.write_text('[compare]\nseeds = "012"\n')
    with pytest.raises(LandcoverError, match=r"job.toml.*seeds: expected a list, got the string '012'"):
        load_config(CompareConfig, f, section="compare")
