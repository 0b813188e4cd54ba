"""Experiment files end to end: ``landcover experiment run`` against the loopback USGS server.

Synthetic Landsat 5 TM products (the CLC-like world) are served as M2M bundles by the
loopback server of ``tests/usgs_server.py``; the experiment fetches them through
:mod:`landcover.fetch`, builds one cube per region x epoch with a synthetic CORINE raster,
compares two arms with a held-out region and writes the report.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
from usgs_server import TM_L2, USGSServer

from landcover.cli import main

REPO = Path(__file__).resolve().parents[1]


def _serve_synthetic(server: USGSServer, scene_dir: Path, *, entity: str) -> str:
    """Add a synthetic product to the server's TM L2 dataset (a scene-search record + its bundle)."""
    import rasterio
    from pyproj import Transformer

    from landcover.testing import make_bundle

    pid = scene_dir.name
    qa = next(scene_dir.glob("*_QA_PIXEL.TIF"))
    with rasterio.open(qa) as src:
        left, bottom, right, top = src.bounds
        crs = src.crs
    tf = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    w, s = tf.transform(left, bottom)
    e, n = tf.transform(right, top)
    record = copy.deepcopy(server.datasets[TM_L2][0])
    acq = pid.split("_")[3]
    day = f"{acq[:4]}-{acq[4:6]}-{acq[6:]}"
    record.update(
        entityId=entity,
        displayId=pid,
        cloudCover="3.00",
        spatialBounds={"type": "Polygon", "coordinates": [[[w, s], [w, n], [e, n], [e, s], [w, s]]]},
        spatialCoverage={"type": "Polygon", "coordinates": [[[w, s], [w, n], [e, n], [e, s], [w, s]]]},
        temporalCoverage={"startDate": f"{day} 00:00:00", "endDate": f"{day} 00:00:00"},
    )
    server.datasets[TM_L2].append(record)
    data = make_bundle(scene_dir, out=scene_dir.parent / f"{pid}.tar").read_bytes()
    server.bundles[pid] = data
    server.files[f"dds/{pid}.tar"] = data
    return pid


@pytest.fixture()
def world(tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch):
    """A loopback USGS serving two synthetic regions (north, and south overlapping it) + a CORINE raster."""
    from landcover.testing import make_clc, make_scene, scene_grid
    from landcover.testing.scenes import clc_box_for_overlap

    src = tmp_path / "src"
    size = 128
    g = scene_grid(size=size)
    # the south region overlaps the north one by 32 rows: the hold-out must keep training away from it
    south_origin = (float(g.x[0]), float(g.y[0]) - 30.0 * 96)
    gs = scene_grid(size=size, origin=south_origin)
    box_n, box_s = clc_box_for_overlap(g, 1.0), clc_box_for_overlap(gs, 1.0)
    box = (min(box_n[0], box_s[0]), min(box_n[1], box_s[1]), max(box_n[2], box_s[2]), max(box_n[3], box_s[3]))
    data = tmp_path / "exp" / "data"
    clc = make_clc(data / "clc1990.tif", bounds=box, seed=4, holes=False)
    north = make_scene(
        src, size=size, seed=4, path=196, row=25, date="1990-07-14", clc=clc, cloud_fraction=0.0
    )
    south = make_scene(
        src,
        size=size,
        seed=5,
        path=196,
        row=26,
        date="1990-07-14",
        clc=clc,
        origin=south_origin,
        cloud_fraction=0.0,
    )
    with USGSServer(shared_data, prepare_polls=1) as server:
        pids = [
            _serve_synthetic(server, north, entity="LT51960251990195SYN00"),
            _serve_synthetic(server, south, entity="LT51960261990195SYN00"),
        ]
        monkeypatch.setenv("LANDCOVER_USGS_USERNAME", server.username)
        monkeypatch.setenv("LANDCOVER_USGS_TOKEN", server.token)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        yield server, pids, tmp_path / "exp"


def _write_toml(exp_dir: Path) -> Path:
    p = exp_dir / "tiny.toml"
    p.write_text(
        """
[experiment]
name = "tiny"
out = "out"
holdout = ["south"]

[fetch]
source = "m2m"
max_cloud = 10.0
attempts = 2
backoff = 0.01
poll_interval = 0.01
workers = 1

[[epochs]]
name = "clc1990"
start = "1989-06-01"
end = "1991-09-30"
months = [6, 7, 8]
corine = "data/clc1990.tif"
clc_edition = "CLC1990"

[[regions]]
name = "north"
country = "DE"
path_rows = ["196/025"]

[[regions]]
name = "south"
country = "DE"
path_rows = ["196/026"]

[compare]
models = ["native", "rgb-scratch"]
seeds = [0]
window = 16
epochs = 1
batch_size = 8
lr_select = "fixed"
budgets = [1.0]
baseline = false
n_boot = 200
device = "cpu"
split_fractions = [0.6, 0.3, 0.1]
""",
        encoding="utf-8",
    )
    return p


def test_experiment_runs_fetch_cubes_compare_report(world, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from landcover.windows import Footprints, WindowSpec, grid_positions, split_overlap

    server, pids, exp_dir = world
    toml = _write_toml(exp_dir)
    rc = main(["-q", "experiment", "run", str(toml), "--m2m-url", server.m2m_url])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    out = exp_dir / "out"
    report = out / "report" / "report.md"
    assert captured.out.strip().endswith(str(report))
    text = report.read_text(encoding="utf-8")
    assert "SYNTHETIC" in text.upper()
    # the two products came through the M2M download route and were extracted
    assert all((out / "scenes" / pid / f"{pid}_SR_B4.TIF").is_file() for pid in pids)
    assert len(server.requests_to("/files/dds/")) >= 2
    cubes = sorted((out / "cubes").glob("*.zarr"))
    assert [c.name for c in cubes] == ["north-clc1990.zarr", "south-clc1990.zarr"]
    prov = json.loads((cubes[0] / "zarr.json").read_text())["attributes"]["provenance"]
    assert prov["synthetic"] is True and prov["clc_edition"] == "CLC1990" and prov["region"] == "north"
    # every checkpoint records the split: held-out south cube, buffer of one window
    ckpts = sorted((out / "report").rglob("last.pt"))
    assert ckpts
    split = torch.load(ckpts[0], weights_only=True)["split"]
    assert split["holdout"] == "cube" and split["holdout_test"] == ["south-clc1990"]
    assert split["buffer"] == 16
    held = next(c for c in split["cubes"] if c["path"].endswith("south-clc1990.zarr"))
    assert held["held_out"] == [True]
    # no window of the held-out cube comes within the buffer of the training pixels
    rows, cols = grid_positions(tuple(held["shape"]), WindowSpec(size=16))
    fp = Footprints(held["crs"], tuple(held["transform"]), rows, cols, (16, 16))
    got = split_overlap(split, fp)
    assert got.comparable and got.checked == len(rows) and got.overlapping == 0
    # a rerun of the later steps reuses the fetched scenes (no new downloads)
    before = len(server.requests_to("/files/dds/"))
    assert main(["-q", "experiment", "run", str(toml), "--steps", "cubes"]) == 0
    assert len(server.requests_to("/files/dds/")) == before


def test_bad_experiment_files_fail_with_one_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(
        '[experiment]\nname = "x"\n[[epochs]]\nname = "a"\nstart = "1990-01-01"\nend = "1990-12-31"\n'
        '[[regions]]\nname = "r"\npath_rows = ["196/025"]\n'
    )
    r = subprocess.run(
        [sys.executable, str(REPO / "pipelines" / "experiment.py"), str(p)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "bad.toml" in r.stderr and "corine" in r.stderr
    p.write_text(
        '[experiment]\nholdout = ["nowhere"]\n'
        '[[epochs]]\nname = "a"\nstart = "1990-01-01"\nend = "1990-12-31"\n'
        'corine = "c.tif"\n[[regions]]\nname = "r"\npath_rows = ["196/025"]\n'
    )
    assert main(["experiment", "check", str(p)]) == 1
    p.write_text(
        '[[epochs]]\nname = "a"\nstart = "1990-01-01"\nend = "1990-12-31"\ncorine = "c.tif"\n'
        '[[regions]]\nname = "r"\npath_rows = ["196/025"]\n[compare]\nwindow = "big"\n'
    )
    assert main(["experiment", "check", str(p)]) == 1


def test_shipped_phase1_experiment_parses() -> None:
    from landcover.experiments import load_experiment

    exp = load_experiment(REPO / "experiments" / "phase1-europe-tm.toml")
    assert {r.country for r in exp.regions} >= {"DE", "ES", "FR", "IT", "HU"}
    assert [e.clc_edition for e in exp.epochs] == ["CLC1990", "CLC2000"]
    assert exp.holdout == ("hu-budapest",)
    for e in exp.epochs:
        assert set(e.months) <= {6, 7, 8, 9} and e.start[:4] in {"1989", "1999"}
    assert exp.fetch["dataset"] == "landsat_tm_c2_l2" and exp.fetch["max_cloud"] <= 20


def _country_outlines() -> dict[str, object]:
    """Natural Earth 1:110m country outlines (public domain), as shipped in pyogrio's test fixtures."""
    import pyogrio
    import shapely
    from pyogrio.raw import read

    shp = (
        Path(pyogrio.__file__).parent
        / "tests"
        / "fixtures"
        / "naturalearth_lowres"
        / "naturalearth_lowres.shp"
    )
    assert shp.is_file(), f"{shp} missing (pyogrio {pyogrio.__version__})"
    _, _, wkb, fields = read(str(shp), columns=["name"])
    return dict(zip((str(n) for n in fields[0]), shapely.from_wkb(wkb), strict=True))


def test_shipped_phase1_path_rows_lie_over_the_countries_they_claim() -> None:
    """Each region's WRS-2 scene (nominal centre, landcover.wrs2) lies over its country and covers its box.

    The centre is inside the country at least 20 km from its 1:110m outline (well beyond the outline's
    generalisation), >= 75 % of the nominal 185 x 170 km scene is over the country, and the region's box
    lies inside the scene. The two path/rows the file had before this test (197/025 "DE", centre in
    Belgium; 194/028 "IT", centre at Lugano on the Swiss border) fail it.
    """
    import math

    import shapely
    import shapely.ops
    from pyproj import Geod

    from landcover.experiments import load_experiment
    from landcover.fetch.query import parse_path_row
    from landcover.wrs2 import scene_centre

    outlines = _country_outlines()
    names = {"DE": "Germany", "ES": "Spain", "FR": "France", "IT": "Italy", "HU": "Hungary"}
    geod = Geod(ellps="WGS84")

    def scene(lat: float, lon: float) -> shapely.Polygon:
        dx, dy = 92.5 / (111.32 * math.cos(math.radians(lat))), 85.0 / 110.6
        return shapely.box(lon - dx, lat - dy, lon + dx, lat + dy)

    def check(country: str, path_row: str, bbox: object) -> list[str]:
        land = outlines[names[country]]
        lat, lon = scene_centre(*parse_path_row(path_row))
        where = shapely.Point(lon, lat)
        near = shapely.ops.nearest_points(land.boundary, where)[0]
        border_km = geod.inv(lon, lat, near.x, near.y)[2] / 1000
        foot = scene(lat, lon)
        problems = []
        if not land.contains(where) or border_km < 20:
            problems.append(f"{path_row}: centre ({lat:.2f}, {lon:.2f}) not well inside {country}")
        if shapely.area(foot & land) < 0.75 * foot.area:
            problems.append(f"{path_row}: under 75 % of the scene over {country}")
        if bbox is not None and not foot.contains(shapely.box(*bbox)):
            problems.append(f"{path_row}: box {bbox} not inside the scene")
        return problems

    exp = load_experiment(REPO / "experiments" / "phase1-europe-tm.toml")
    problems = [p for r in exp.regions for pr in r.path_rows for p in check(r.country, pr, r.bbox)]
    assert problems == []
    assert len(check("DE", "197/025", (5.8, 50.3, 7.5, 51.3))) == 3  # the file's earlier choices
    assert len(check("IT", "194/028", (8.5, 45.0, 10.0, 46.0))) == 3


@pytest.mark.slow
def test_demo_sanity_native_beats_rgb_on_the_outside_rgb_classes(tmp_path: Path, cpu_share: int) -> None:
    """The experiment's own sanity on the synthetic stand-in: the demo's own scene and training
    settings (512 px, world seed 0, 5 seeds x 20 epochs), without its floor baseline and map.

    Each of its 10 runs trains on one torch thread; with more than one core to itself (the test
    run alone) they are Dask tasks on a LocalCluster, one per core, else (one of the pytest-xdist
    workers of ``make test``) one after another here: the same numbers either way. The measured
    differences (this scene, other world seeds, the 448 px scene this test used until its interval
    touched 0) are in :class:`landcover.demo.DemoConfig`'s docstring.
    """
    from landcover.demo import DemoConfig, run_demo
    from landcover.testing import OUTSIDE_RGB_CLASSES

    cfg = DemoConfig(
        out=tmp_path / "demo",
        size=512,
        window=16,
        stride=16,
        epochs=20,
        seeds=(0, 1, 2, 3, 4),
        batch_size=8,
        progress=False,
        baseline=False,
        prediction_map=False,
        n_boot=1000,
        device="cpu",
        torch_threads=1,
        scheduler="local" if cpu_share > 1 else None,
    )
    got: list = []
    report = run_demo(cfg, log=lambda _m: None, result_out=got)
    text = report.read_text(encoding="utf-8")
    assert "SYNTHETIC" in text.upper() and "Sanity check of the synthetic stand-in" in text
    _result, cmp = got
    assert cmp is not None and cmp.arm == "native" and cmp.reference == "rgb-scratch"
    assert cmp.metric == "miou_l3_outside_rgb" and len(cmp.seeds) == 5
    # native beats RGB-only on the classes that differ mainly outside RGB, interval excluding 0
    assert cmp.diff.estimate > 0 and cmp.diff.excludes(0.0), (cmp.diff, list(OUTSIDE_RGB_CLASSES))
