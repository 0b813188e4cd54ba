"""STAC route: pystac-client against a loopback STAC API serving the real LandsatLook / PC-style items."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path

import pytest
from usgs_server import SAMPLE, USGSServer, sample_file

from landcover.errors import FetchError
from landcover.fetch import (
    RetryPolicy,
    SceneQuery,
    download_all,
    record_from_item,
    stac_search,
    tasks_for_records,
)

FAST = RetryPolicy(attempts=3, backoff=0.01, backoff_max=0.02, connect_timeout=2.0, read_timeout=2.0)
EVER = {"start": date(1980, 1, 1), "end": date(2020, 12, 31)}


@pytest.fixture()
def server(shared_data: Path):
    with USGSServer(shared_data, page_limit=2) as srv:
        yield srv


def test_record_from_real_items(shared_data: Path) -> None:
    d = json.loads(
        (
            shared_data / "api/stac/usgs_landsatlook/LT05_L2SP_010067_19860424_20200918_02_T2_SR_stac.json"
        ).read_text()
    )
    rec = record_from_item(d)
    assert rec.product_id == "LT05_L2SP_010067_19860424_20200918_02_T2" and rec.item_id.endswith("_SR")
    assert (rec.path, rec.row, rec.acquired, rec.cloud_cover) == (10, 67, date(1986, 4, 24), 23.0)
    red = next(a for a in rec.assets if a.key == "red")
    assert red.href.startswith("https://landsatlook.usgs.gov/data/") and red.href.endswith("_SR_B3.TIF")
    assert red.alternate_s3.startswith("s3://usgs-landsat/") and red.checksum.startswith("1340")
    assert next(a for a in rec.assets if a.key == "thumbnail").is_browse
    old = json.loads((shared_data / f"landsat/{SAMPLE}/{SAMPLE}_SR_stac.json").read_text())  # STAC 0.7
    rec07 = record_from_item(old)
    assert (rec07.product_id, rec07.acquired, rec07.path, rec07.row) == (SAMPLE, date(1998, 3, 8), 90, 84)
    pc = json.loads(
        (shared_data / "api/stac/planetary_computer_style/LT05_L2SP_010067_19860424_02_T2.json").read_text()
    )
    rpc = record_from_item(pc)
    assert rpc.dataset == "landsat-c2-l2" and (rpc.path, rpc.row) == (10, 67)
    assert {"red", "nir08", "qa_pixel", "lwir"} <= {a.key for a in rpc.assets}


def test_search_pages_and_filters(server: USGSServer) -> None:
    recs = stac_search(SceneQuery(**EVER), url=server.stac_url)
    assert [r.product_id[:25] for r in recs] == [
        "LT05_L2SP_010020_19860219",
        "LT05_L2SP_010067_19860424",
        "LT05_L2SP_201034_19860504",
        "LT05_L2SP_090084_19980308",
        "LT05_L2SR_087017_20090621",
    ]
    searches = server.requests_to("/stac/search")
    assert len(searches) == 3  # page_limit=2: pystac-client followed the "next" links
    cloudy = stac_search(SceneQuery(max_cloud=25, **EVER), url=server.stac_url)
    assert all(r.cloud_cover <= 25 for r in cloudy) and len(cloudy) == 3
    assert server.requests_to("/stac/search")[-1].body["query"] == {"eo:cloud_cover": {"lte": 25}}
    spain = stac_search(SceneQuery(bbox=(-5.0, 37.0, -4.0, 38.0)), url=server.stac_url)
    assert [r.path for r in spain] == [201]
    may = stac_search(SceneQuery(months=(5,), **EVER), url=server.stac_url)
    assert [r.acquired for r in may] == [date(1986, 5, 4)]
    pr = stac_search(SceneQuery(path_rows=((10, 67),), **EVER), url=server.stac_url)
    assert [r.product_id for r in pr] == ["LT05_L2SP_010067_19860424_20200918_02_T2"]
    pc = stac_search(
        SceneQuery(**EVER), url=server.stac_url, collections=["landsat-c2-l2"], platforms=["LANDSAT_5"]
    )
    assert [r.product_id for r in pc] == ["LT05_L2SP_010067_19860424_02_T2"]
    none = stac_search(SceneQuery(**EVER), url=server.stac_url, platforms=["LANDSAT_7"])
    assert none == []


def test_unreachable_stac_is_fetch_error(tmp_path: Path) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(FetchError, match="STAC search at"):
        stac_search(SceneQuery(**EVER), url=f"http://127.0.0.1:{port}/stac", timeout=2)


def test_download_assets_verified_with_usgs_multihash(
    server: USGSServer, shared_data: Path, tmp_path: Path
) -> None:
    recs = stac_search(SceneQuery(path_rows=((10, 67), (10, 20)), **EVER), url=server.stac_url)
    assert len(recs) == 2
    tasks = tasks_for_records(recs, asset_keys=["red", "qa_pixel", "MTL.txt"])
    assert len(tasks) == 6 and all(t.checksum is not None and t.checksum.algorithm == "sha512" for t in tasks)
    # one asset: a wrong checksum published by the catalogue -> that scene fails, the other completes
    bad = next(
        t for t in tasks if t.scene_id.startswith("LT05_L2SP_010020") and t.dest.name.endswith("QA_PIXEL.TIF")
    )
    server.faults[bad.url.split("/files/", 1)[1]] = ["corrupt"] * 5
    red_010067 = next(
        t for t in tasks if t.scene_id.startswith("LT05_L2SP_010067") and "SR_B3" in t.dest.name
    )
    server.faults[red_010067.url.split("/files/", 1)[1]] = ["reset", "503"]
    out = tmp_path / "out"
    report = download_all(tasks, out_dir=out, workers=3, retry=FAST, progress=False, chunk_size=1024)
    assert report.completed == ["LT05_L2SP_010067_19860424_20200918_02_T2"]
    assert list(report.failed) == ["LT05_L2SP_010020_19860219_20200918_02_T1"]
    assert "sha512 checksum mismatch" in report.failed["LT05_L2SP_010020_19860219_20200918_02_T1"]
    got = (
        out
        / "LT05_L2SP_010067_19860424_20200918_02_T2"
        / "LT05_L2SP_010067_19860424_20200918_02_T2_SR_B3.TIF"
    )
    assert (
        hashlib.sha256(got.read_bytes()).hexdigest()
        == hashlib.sha256(sample_file(shared_data, "SR_B3.TIF")).hexdigest()
    )
    assert not (out / bad.dest).exists()


def test_unsafe_remote_names_are_skipped(server: USGSServer) -> None:
    item = server.stac_item("LT05_L2SP_010067_19860424_20200918_02_T2_SR")
    item["assets"]["red"]["href"] = server.file_url("x/..")
    item["assets"]["blue"]["href"] = server.file_url("x/.hidden")
    recs = stac_search(SceneQuery(path_rows=((10, 67),), **EVER), url=server.stac_url)
    tasks = tasks_for_records(recs, asset_keys=["red", "blue", "green"])
    assert [t.dest.name for t in tasks] == ["LT05_L2SP_010067_19860424_20200918_02_T2_SR_B2.TIF"]
    evil = record_from_item({**item, "id": "../../etc"})
    assert tasks_for_records([evil]) == []
