"""Scenes from STAC items: a synthetic product's COGs and its item served by a real loopback HTTP server.

The server (a ThreadingHTTPServer with Range support) counts the bytes it sends, so the tests
check that pixels come by range requests (far fewer bytes than the files) and that the cube
built from the item is, bit for bit, the cube built from the same product on disk. No network.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from landcover.errors import ConfigError, InputFileError
from landcover.landsat import UsablePolicy, open_scene, plan_scene
from landcover.stac_scene import plan_stac_scenes, read_items, vsicurl_path
from landcover.testing import make_pair

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class RangeServer(ThreadingHTTPServer):
    """Serves a directory with HTTP Range support; counts requests and body bytes sent."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.bytes_sent = 0
        self.requests: list[tuple[str, str, str | None]] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def sent(self, n: int, method: str, path: str, rng: str | None) -> None:
        with self.lock:
            self.bytes_sent += n
            self.requests.append((method, path, rng))


class _Handler(SimpleHTTPRequestHandler):
    server: RangeServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        return

    def _file(self) -> Path | None:
        p = (self.server.root / self.path.split("?", 1)[0].lstrip("/")).resolve()
        return p if p.is_file() and self.server.root in p.parents else None

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        f = self._file()
        if f is None:
            self.send_error(404)
            return
        data = f.read_bytes()
        rng = self.headers.get("Range")
        start, end = 0, len(data) - 1
        status = 200
        if rng:
            m = _RANGE.match(rng.strip())
            if m is None:
                self.send_error(416)
                return
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            status = 206
        chunk = data[start : end + 1]
        self.send_response(status)
        self.send_header("Content-Length", str(len(chunk)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(chunk)
            self.server.sent(len(chunk), self.command, self.path, rng)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RangeServer, Path, Path]]:
    root = tmp_path_factory.mktemp("stac")
    pair = make_pair(root, size=256, seed=5, overlap=0.15, date="1995-07-14", cloud_fraction=0.2)
    _retile(Path(pair.scene_dir), 64)
    srv = RangeServer(root.resolve())
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv, Path(pair.scene_dir), Path(pair.clc_path)
    finally:
        srv.shutdown()
        srv.server_close()


def _retile(product: Path, block: int) -> None:
    """Rewrite the product's COGs with ``block`` px tiles (same pixels): a small scene with many tiles."""
    from rasterio.shutil import copy as rio_copy

    for f in product.glob("*.TIF"):
        tmp = f.with_suffix(".tmp.tif")
        rio_copy(f, tmp, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=str(block), OVERVIEWS="NONE")
        tmp.replace(f)


def _mtl_value(text: str, key: str) -> float:
    m = re.search(rf"^\s*{re.escape(key)} = (\S+)\s*$", text, re.M)
    assert m, key
    return float(m.group(1).strip('"'))


def _pc_item(product: Path, base: str, *, relative: bool = False) -> dict[str, Any]:
    """A Planetary-Computer-style landsat-c2-l2 item for a synthetic TM product, as stactools writes them."""
    pid = product.name
    mtl = (product / f"{pid}_MTL.txt").read_text()
    keys = {"blue": 1, "green": 2, "red": 3, "nir08": 4, "swir16": 5, "swir22": 7}
    href = (lambda name: name) if relative else (lambda name: f"{base}/{product.name}/{name}")
    assets: dict[str, Any] = {}
    for key, n in keys.items():
        assets[key] = {
            "href": href(f"{pid}_SR_B{n}.TIF"),
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "raster:bands": [{
                "nodata": 0, "data_type": "uint16",
                "scale": _mtl_value(mtl, f"REFLECTANCE_MULT_BAND_{n}"),
                "offset": _mtl_value(mtl, f"REFLECTANCE_ADD_BAND_{n}"),
            }],
        }  # fmt: skip
    assets["lwir"] = {
        "href": href(f"{pid}_ST_B6.TIF"),
        "raster:bands": [{"nodata": 0, "scale": _mtl_value(mtl, "TEMPERATURE_MULT_BAND_ST_B6"),
                          "offset": _mtl_value(mtl, "TEMPERATURE_ADD_BAND_ST_B6")}],
    }  # fmt: skip
    assets["qa_pixel"] = {"href": href(f"{pid}_QA_PIXEL.TIF"), "raster:bands": [{"nodata": 1}]}
    date = re.search(r"DATE_ACQUIRED = (\S+)", mtl).group(1)  # type: ignore[union-attr]
    time = re.search(r'SCENE_CENTER_TIME = "?([0-9:.]+)', mtl).group(1)  # type: ignore[union-attr]
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": pid[:17] + pid[26:],  # the Planetary Computer drops the processing date
        "collection": "landsat-c2-l2",
        "properties": {
            "datetime": f"{date}T{time}Z",
            "platform": "landsat-5",
            "instruments": ["tm"],
            "landsat:correction": "L2SP",
            "landsat:wrs_path": pid[10:13],
            "landsat:wrs_row": pid[13:16],
            "eo:cloud_cover": 20.0,
        },
        "assets": assets,
        "links": [],
    }
    if relative:
        item["links"] = [{"rel": "self", "href": f"{base}/{product.name}/item.json"}]
    return item


def test_cube_from_stac_item_equals_cube_from_disk(
    served: tuple[RangeServer, Path, Path], tmp_path: Path
) -> None:
    from landcover.cube import build_cube
    from landcover.store import open_cube

    srv, product, clc = served
    item_file = tmp_path / "item.json"
    item_file.write_text(json.dumps(_pc_item(product, srv.url)))
    before = srv.bytes_sent
    (plan,) = plan_stac_scenes(item_file)
    assert plan.layout == "stac" and plan.product_id.startswith("LT05_L2SP")
    assert all(s.href.startswith("/vsicurl?list_dir=no") for s in plan.sources)
    a = open_cube(build_cube([plan], clc, tmp_path / "stac.zarr", chunks=64, progress=False), decode=False)
    fetched = srv.bytes_sent - before
    b = open_cube(build_cube([product], clc, tmp_path / "disk.zarr", chunks=64, progress=False), decode=False)
    for name in ("reflectance", "thermal", "qa_pixel", "valid", "labels", "coverage"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert a.attrs["sensors"] == ["TM"] and a.attrs["usable_masks"] == ["QA_PIXEL"]
    assert a["time"].values[0] == b["time"].values[0]
    # range requests only: the whole build fetched less than the files hold (the cube crops to CORINE)
    files = [product / f"{product.name}_{s}.TIF" for s in
             ("SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B7", "ST_B6", "QA_PIXEL")]  # fmt: skip
    total = sum(f.stat().st_size for f in files)
    ranged = [r for m, p, r in srv.requests if m == "GET" and p.endswith(".TIF")]
    assert ranged and all(r is not None for r in ranged), "a COG was fetched without a Range header"
    # GDAL fetches at least 16 KiB per request, about three 64 x 64 tiles of these small files: the ratio
    # falls with the scene size (768 x 768 px, 256-px tiles, 10 % overlap: 18 %; see the report)
    assert 0 < fetched < total
    print(
        f"\nSTAC cube build: {fetched} bytes fetched of {total} bytes in the 8 COGs ({fetched / total:.1%})"
    )


@pytest.mark.cluster
def test_stac_cube_on_worker_processes(served: tuple[RangeServer, Path, Path], tmp_path: Path) -> None:
    """The plans travel to Dask worker processes, which open the URLs themselves: same cube."""
    from distributed import Client, LocalCluster

    from landcover.cube import build_cube
    from landcover.store import open_cube

    srv, product, clc = served
    (plan,) = plan_stac_scenes(_write(tmp_path, _pc_item(product, srv.url)))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            before = len(srv.requests)
            out = build_cube([plan], clc, tmp_path / "w.zarr", chunks=64, progress=False, client=client)
            assert len(srv.requests) > before
    ref = build_cube([product], clc, tmp_path / "d.zarr", chunks=64, progress=False)
    a, b = open_cube(out, decode=False), open_cube(ref, decode=False)
    for name in ("reflectance", "thermal", "qa_pixel", "valid", "labels"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


def test_window_reads_few_bytes(served: tuple[RangeServer, Path, Path], tmp_path: Path) -> None:
    """One 32 x 32 window of one band: a header and a tile, not the file."""
    srv, product, _ = served
    url = f"{srv.url}/{product.name}/{product.name}_SR_B4.TIF"
    (plan,) = plan_stac_scenes([_write(tmp_path, _pc_item(product, srv.url))])
    before = srv.bytes_sent
    nir = [s for s in plan.reflective if s.name == "nir"][0]
    block = nir.read((100, 132), (100, 132))  # within one 64 x 64 tile
    got = srv.bytes_sent - before
    size = (product / f"{product.name}_SR_B4.TIF").stat().st_size
    import rasterio

    with rasterio.open(product / f"{product.name}_SR_B4.TIF") as src:
        dn = src.read(1)[100:132, 100:132]
        assert src.block_shapes[0] == (64, 64)
    expect = (dn * 2.75e-05 - 0.2).astype("float32")
    expect[dn == 0] = np.nan
    np.testing.assert_array_equal(block, expect)
    # a header and a tile (GDAL reads >= 16 KiB per request; the header may be cached by earlier tests)
    assert got < size / 2, (got, size, url)


def _write(tmp_path: Path, item: dict[str, Any], name: str = "item.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(item))
    return p


def test_item_url_relative_hrefs_and_usgs_pair(
    served: tuple[RangeServer, Path, Path], tmp_path: Path
) -> None:
    """An item fetched by URL with relative hrefs; USGS-style SR + ST items (no raster:bands) merged."""
    srv, product, _ = served
    # item served next to the COGs, hrefs relative to its self link
    (product / "item.json").write_text(json.dumps(_pc_item(product, srv.url, relative=True)))
    try:
        plan = plan_scene(f"{srv.url}/{product.name}/item.json")  # a URL is a scene
    finally:
        (product / "item.json").unlink()
    ref = open_scene(product, chunks=64, policy=UsablePolicy()).compute()
    ds = open_scene(plan, chunks=64, policy=UsablePolicy()).compute()
    np.testing.assert_array_equal(ds["reflectance"].values, ref["reflectance"].values)
    np.testing.assert_array_equal(ds["usable"].values, ref["usable"].values)
    # USGS LandsatLook: SR and ST items, asset keys of the 1.0 items, no raster:bands (C2 L2 encoding assumed)
    pc = _pc_item(product, srv.url)
    sr = {**pc, "id": product.name + "_SR", "collection": "landsat-c2l2-sr",
          "assets": {k: {"href": v["href"]} for k, v in pc["assets"].items() if k != "lwir"}}  # fmt: skip
    st = {**pc, "id": product.name + "_ST", "collection": "landsat-c2l2-st",
          "assets": {"lwir": {"href": pc["assets"]["lwir"]["href"]}}}  # fmt: skip
    coll = _write(tmp_path, {"type": "FeatureCollection", "features": [sr, st]}, "usgs.json")
    (usgs,) = plan_stac_scenes(coll)
    assert usgs.thermal is not None and usgs.product_id == product.name
    ds2 = open_scene(usgs, chunks=64).compute()
    np.testing.assert_array_equal(ds2["thermal"].values, ref["thermal"].values)


def test_refusals(served: tuple[RangeServer, Path, Path], tmp_path: Path) -> None:
    srv, product, _ = served
    pc = _pc_item(product, srv.url)
    l1 = {**pc, "properties": {**pc["properties"], "landsat:correction": "L1TP"}}
    with pytest.raises(InputFileError, match="only Level-2"):
        plan_stac_scenes(_write(tmp_path, l1, "l1.json"))
    missing = {**pc, "assets": {k: v for k, v in pc["assets"].items() if k != "red"}}
    with pytest.raises(InputFileError, match="no asset for band red"):
        plan_stac_scenes(_write(tmp_path, missing, "m.json"))
    gone = {**pc, "assets": {**pc["assets"], "blue": {"href": f"{srv.url}/nothing/here.TIF"}}}
    with pytest.raises(InputFileError, match="here.TIF"):
        plan_stac_scenes(_write(tmp_path, gone, "g.json"))
    with pytest.raises(InputFileError, match="not a STAC Item"):
        read_items(_write(tmp_path, {"type": "Collection"}, "c.json"))
    with pytest.raises(ConfigError, match="unknown URL signer"):
        plan_stac_scenes(_write(tmp_path, pc, "s.json"), sign="nope")
    assert vsicurl_path("http://h/a b.TIF", {"max_retry": "2"}).startswith(
        "/vsicurl?list_dir=no&empty_dir=yes"
    )


@pytest.mark.real
def test_real_item_examples(shared_data: Path) -> None:
    """The real USGS and Planetary-Computer-style items parse: keys, product ids, scale/offset (no pixels)."""
    from landcover.stac_scene import _band_info, _find_asset, _product_id

    pc = read_items(shared_data / "api/stac/planetary_computer_style/LT05_L2SP_010067_19860424_02_T2.json")[0]
    assert _product_id(pc) == "LT05_L2SP_010067_19860424_02_T2"
    key, asset = _find_asset(pc["assets"], "nir", "SR_B4")  # type: ignore[misc]
    assert key == "nir08" and _band_info(asset)["scale"] == 2.75e-05 and _band_info(asset)["offset"] == -0.2
    assert _find_asset(pc["assets"], "thermal", "ST_B6")[0] == "lwir"  # type: ignore[index]
    sr = read_items(
        shared_data / "api/stac/usgs_landsatlook/LT05_L2SP_010020_19860219_20200918_02_T1_SR_stac.json"
    )[0]
    assert _product_id(sr) == "LT05_L2SP_010020_19860219_20200918_02_T1"
    assert _find_asset(sr["assets"], "swir2", "SR_B7")[0] == "swir22"  # type: ignore[index]
    old = read_items(
        shared_data / "api/stac/usgs_landsatlook/LT05_L2SP_201034_19860504_20200917_02_T1_SR_stac.json"
    )[0]
    assert _find_asset(old["assets"], "red", "SR_B3")[0] == "SR_B3.TIF"  # type: ignore[index]


def test_cli_stac(
    served: tuple[RangeServer, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``scene info URL``, ``cube build --stac`` and ``cube batch --stac`` (one item file per product)."""
    from landcover.cli import main
    from landcover.store import open_cube

    srv, product, clc = served
    item = _write(tmp_path, _pc_item(product, srv.url))
    (product / "item.json").write_text(json.dumps(_pc_item(product, srv.url)))
    try:
        assert main(["scene", "info", f"{srv.url}/{product.name}/item.json", "--json"]) == 0
    finally:
        (product / "item.json").unlink()
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "stac" and info["qa"] == ["QA_PIXEL"] and info["sensor"] == "LT05"
    out = tmp_path / "cli.zarr"
    assert main(["cube", "build", "--stac", str(item), "--corine", str(clc), "--out", str(out),
                 "--scheduler", "none", "--chunk", "64"]) == 0  # fmt: skip
    assert open_cube(out).attrs["sensors"] == ["TM"]
    batch = tmp_path / "batch"
    assert main(["cube", "batch", "--stac", str(item), "--corine", str(clc), "--out-dir", str(batch),
                 "--scheduler", "none", "--chunk", "64"]) == 0  # fmt: skip
    pid = _pc_item(product, srv.url)["id"]
    built = open_cube(batch / f"{pid}.zarr", decode=False)
    np.testing.assert_array_equal(
        built["reflectance"].values, open_cube(out, decode=False)["reflectance"].values
    )
    assert main(["cube", "build", "--stac", str(item), "--sign", "nope", "--corine", str(clc),
                 "--out", str(tmp_path / "x.zarr")]) == 1  # fmt: skip
    assert "unknown URL signer" in capsys.readouterr().err


def test_pipeline_stac(served: tuple[RangeServer, Path, Path], tmp_path: Path) -> None:
    """``pipelines/build_cube.py --stac ITEMS`` builds the same cube as ``--scene PRODUCT``."""
    import importlib.util

    from landcover.store import open_cube

    srv, product, clc = served
    spec = importlib.util.spec_from_file_location(
        "build_cube_job", Path(__file__).parents[1] / "pipelines" / "build_cube.py"
    )
    assert spec is not None and spec.loader is not None
    job = importlib.util.module_from_spec(spec)
    import sys

    sys.modules[spec.name] = job  # dataclasses and type hints look their module up
    item = _write(tmp_path, _pc_item(product, srv.url))
    common = ["--corine", str(clc), "--scheduler", "none"]
    try:
        spec.loader.exec_module(job)
        assert job.main(["--stac", str(item), "--out", str(tmp_path / "p.zarr"), *common]) == 0
        assert job.main(["--scene", str(product), "--out", str(tmp_path / "q.zarr"), *common]) == 0
    finally:
        sys.modules.pop(spec.name, None)
    a, b = open_cube(tmp_path / "p.zarr", decode=False), open_cube(tmp_path / "q.zarr", decode=False)
    np.testing.assert_array_equal(a["reflectance"].values, b["reflectance"].values)
    np.testing.assert_array_equal(a["valid"].values, b["valid"].values)


@pytest.mark.real
def test_fetch_search_writes_the_item_collection(shared_data: Path, tmp_path: Path) -> None:
    """``landcover fetch search --source stac --items FILE`` writes the matching items (ITEMS of --stac)."""
    from usgs_server import USGSServer

    from landcover.cli import main
    from landcover.stac_scene import _find_asset

    out = tmp_path / "items.json"
    with USGSServer(shared_data, page_limit=2) as srv:
        argv = ["fetch", "search", "--source", "stac", "--stac-url", srv.stac_url, "--start", "1986-01-01",
                "--end", "1986-12-31", "--max-cloud", "60", "--items", str(out), "--json"]  # fmt: skip
        assert main(argv) == 0
    coll = json.loads(out.read_text())
    assert coll["type"] == "FeatureCollection"
    ids = [f["id"] for f in coll["features"]]
    assert ids == [
        "LT05_L2SP_010020_19860219_20200918_02_T1_SR",
        "LT05_L2SP_010067_19860424_20200918_02_T2_SR",
    ]
    items = read_items(out)
    for it in items:
        for var, suffix in (("blue", "SR_B1"), ("swir2", "SR_B7"), ("qa_pixel", "QA_PIXEL")):
            found = _find_asset(it["assets"], var, suffix)
            assert found is not None and found[1]["href"].startswith(srv.stac_url.rsplit("/", 1)[0])


def test_predict_scene_from_item_url(served: tuple[RangeServer, Path, Path], tmp_path: Path) -> None:
    """``landcover predict CKPT --scene URL``: a class map straight from a STAC item over HTTP."""
    import xarray as xr

    from landcover.cli import main
    from landcover.models import build_model, save_model

    srv, product, _ = served
    (product / "item.json").write_text(json.dumps(_pc_item(product, srv.url)))
    codes = (111, 211, 311, 512)
    model = build_model("native", 6, len(codes), preset="tiny", class_codes=codes, seed=0)
    ckpt = save_model(tmp_path / "m.pt", model)
    try:
        argv = ["-q", "predict", str(ckpt), "--scene", f"{srv.url}/{product.name}/item.json",
                "--out", str(tmp_path / "out"), "--window", "64", "--overlap", "16", "--device", "cpu",
                "--scheduler", "none"]  # fmt: skip
        assert main(argv) == 0
    finally:
        (product / "item.json").unlink()
    z = xr.open_zarr(tmp_path / "out" / "prediction.zarr")
    assert z["class_map"].shape == (256, 256) and set(np.unique(z["class_map"].values)) <= {0, *codes}
    assert z.attrs["source_scene"].startswith("http://127.0.0.1")


@pytest.mark.real
def test_stac_json_inside_a_product_is_the_product(shared_data: Path) -> None:
    """The ``*_SR_stac.json`` USGS ships in a product folder names that product on disk (no network)."""
    sample = "LT05_L2SP_090084_19980308_20200909_02_T1"
    plan = plan_scene(shared_data / "landsat" / sample / f"{sample}_SR_stac.json")
    assert plan.layout == "directory" and plan.mtl is not None
