"""Tests of the synthetic data generator (landcover.testing).

The files are checked with rasterio, pyproj and the standard library only (xml.etree,
json, a regex for ODL), not with landcover's own readers.
"""

from __future__ import annotations

import json
import math
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer

from landcover.cli import main
from landcover.testing import (
    CLASS_INDEX,
    OUTSIDE_RGB_CLASSES,
    OUTSIDE_RGB_PAIRS,
    RGB_TWINS,
    SIGNATURES,
    SR_OFFSET,
    SR_SCALE,
    ST_OFFSET,
    ST_SCALE,
    TEMPERATURE,
    WORLD_CODES,
    make_acquisitions,
    make_bundle,
    make_clc,
    make_pair,
    make_scene,
    read_truth,
    scene_grid,
)

# ------------------------------------------------------------------------------------------
# helpers (independent of landcover's readers)
# ------------------------------------------------------------------------------------------
_ODL = re.compile(r'^\s*(?P<key>[A-Z0-9_]+)\s*=\s*(?P<value>"[^"]*"|\S+)\s*$')


def parse_odl(text: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    stack: list[str] = []
    lines = text.splitlines()
    assert lines[-1] == "END"
    for line in lines[:-1]:
        m = _ODL.match(line)
        assert m, f"bad ODL line {line!r}"
        key, value = m["key"], m["value"]
        if key == "GROUP":
            stack.append(value)
            if len(stack) == 2:
                out[value] = {}
        elif key == "END_GROUP":
            assert stack.pop() == value
        else:
            out[stack[-1]][key] = value.strip('"')
    assert not stack
    return out


def parse_xml(text: str) -> dict[str, dict[str, str]]:
    root = ET.fromstring(text)
    assert root.tag == "LANDSAT_METADATA_FILE"
    return {g.tag: {e.tag: e.text or "" for e in g} for g in root}


def read_mtls(scene_dir: Path) -> tuple[dict, dict, dict]:
    pid = scene_dir.name
    txt = parse_odl((scene_dir / f"{pid}_MTL.txt").read_text())
    xml = parse_xml((scene_dir / f"{pid}_MTL.xml").read_text())
    js = json.loads((scene_dir / f"{pid}_MTL.json").read_text())["LANDSAT_METADATA_FILE"]
    return txt, xml, js


def band(scene_dir: Path, suffix: str) -> np.ndarray:
    with rasterio.open(scene_dir / f"{scene_dir.name}_{suffix}.TIF") as src:
        return src.read(1)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    return make_pair(tmp_path_factory.mktemp("pair"), size=64, seed=7, overlap=0.6)


@pytest.fixture(scope="module")
def twins_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scene(
        tmp_path_factory.mktemp("twins"),
        size=256,
        seed=11,
        cloud_fraction=0.0,
        fill_border=False,
        world="twins",
    )


# ------------------------------------------------------------------------------------------
# grid, files
# ------------------------------------------------------------------------------------------
def test_scene_grid_edges_on_15_mod_30():
    g = scene_grid(size=(40, 50), origin=(300000.0, 5600010.0))
    assert g.shape == (40, 50)
    assert g.transform.c == 299985.0 and g.transform.f == 5600025.0
    assert g.x[0] == 300000.0 and g.y[0] == 5600010.0
    with pytest.raises(ValueError, match="multiples of 30"):
        scene_grid(origin=(300015.0, 5600010.0))
    with pytest.raises(ValueError, match="UTM"):
        scene_grid(epsg=3035)


def test_l2sp_files_are_cogs_on_the_landsat_grid(pair):
    d = pair.scene_dir
    pid = d.name
    assert re.fullmatch(r"LT05_L2SP_196025_19950714_\d{8}_02_T1", pid)
    names = {p.name for p in d.iterdir()}
    expected = {f"{pid}_SR_B{n}.TIF" for n in (1, 2, 3, 4, 5, 7)}
    expected |= {f"{pid}_{s}.TIF" for s in ("ST_B6", "QA_PIXEL", "QA_RADSAT")}
    expected |= {f"{pid}_MTL.{e}" for e in ("txt", "xml", "json")}
    assert names == expected
    for name in sorted(n for n in names if n.endswith(".TIF")):
        with rasterio.open(d / name) as src:
            assert src.crs.to_epsg() == 32632
            assert (src.height, src.width) == (64, 64)
            t = src.transform
            assert (t.a, t.b, t.d, t.e) == (30.0, 0.0, 0.0, -30.0)
            assert t.c % 30 == 15 and t.f % 30 == 15
            assert src.dtypes == ("uint16",)
            assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert src.tags().get("AREA_OR_POINT") == "Point"
            if "_QA_" in name:
                assert src.nodata is None
            else:
                assert src.nodata == 0


def test_values_decode_to_plausible_reflectance_and_temperature(pair):
    d = pair.scene_dir
    qa = band(d, "QA_PIXEL")
    clear = (qa & 0b11011) == 0
    assert clear.sum() > 0.5 * qa.size * 0.7
    for n in (1, 2, 3, 4, 5, 7):
        refl = band(d, f"SR_B{n}")[clear] * SR_SCALE + SR_OFFSET
        assert 0.0 < np.median(refl) < 0.6
    temp = band(d, "ST_B6")[clear] * ST_SCALE + ST_OFFSET
    assert 285 < np.median(temp) < 312


# ------------------------------------------------------------------------------------------
# MTL
# ------------------------------------------------------------------------------------------
def test_mtl_three_encodings_agree_and_match_files(pair):
    d = pair.scene_dir
    txt, xml, js = read_mtls(d)
    assert txt == xml == js
    m = txt
    pc = m["PRODUCT_CONTENTS"]
    assert pc["LANDSAT_PRODUCT_ID"] == d.name and pc["PROCESSING_LEVEL"] == "L2SP"
    for key, value in pc.items():
        if key.startswith("FILE_NAME_BAND") or key.startswith("FILE_NAME_QUALITY"):
            assert (d / value).is_file(), key
    pa = m["PROJECTION_ATTRIBUTES"]
    with rasterio.open(d / pc["FILE_NAME_BAND_1"]) as src:
        t, h, w = src.transform, src.height, src.width
    assert int(pa["REFLECTIVE_LINES"]) == h and int(pa["REFLECTIVE_SAMPLES"]) == w
    assert int(pa["THERMAL_LINES"]) == h and int(pa["THERMAL_SAMPLES"]) == w
    assert float(pa["CORNER_UL_PROJECTION_X_PRODUCT"]) == t.c + 15  # pixel centres
    assert float(pa["CORNER_UL_PROJECTION_Y_PRODUCT"]) == t.f - 15
    assert float(pa["CORNER_LR_PROJECTION_X_PRODUCT"]) == t.c + 30 * w - 15
    assert float(pa["CORNER_LR_PROJECTION_Y_PRODUCT"]) == t.f - 30 * h + 15
    lon, lat = Transformer.from_crs(32632, 4326, always_xy=True).transform(t.c + 15, t.f - 15)
    assert float(pa["CORNER_UL_LAT_PRODUCT"]) == pytest.approx(lat, abs=1e-5)
    assert float(pa["CORNER_UL_LON_PRODUCT"]) == pytest.approx(lon, abs=1e-5)
    assert pa["UTM_ZONE"] == "32"
    # the L2 and L1 groups reuse REFLECTANCE_MULT key names with different values
    assert m["LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"]["REFLECTANCE_MULT_BAND_1"] == "2.75e-05"
    assert float(m["LEVEL1_RADIOMETRIC_RESCALING"]["REFLECTANCE_MULT_BAND_1"]) > 1e-4
    assert m["LEVEL2_SURFACE_TEMPERATURE_PARAMETERS"]["TEMPERATURE_MULT_BAND_ST_B6"] == "0.00341802"
    ia = m["IMAGE_ATTRIBUTES"]
    assert ia["DATE_ACQUIRED"] == "1995-07-14" and ia["WRS_PATH"] == "196" and ia["WRS_ROW"] == "025"
    assert 40 < float(ia["SUN_ELEVATION"]) < 65  # mid-July morning over Aachen
    # cloud cover agrees with the QA cloud bit over the valid footprint
    qa = band(d, "QA_PIXEL")
    valid = qa != 1
    share = 100 * ((qa & 8) > 0)[valid].mean()
    assert float(ia["CLOUD_COVER"]) == pytest.approx(share, abs=0.01)


def test_odl_quotes_strings_only(tmp_path):
    d = make_scene(tmp_path, size=16, mtl_formats=("txt",))
    text = (d / f"{d.name}_MTL.txt").read_text()
    assert text.startswith("GROUP = LANDSAT_METADATA_FILE\n") and text.endswith(
        "END_GROUP = LANDSAT_METADATA_FILE\nEND\n"
    )
    assert '    LANDSAT_PRODUCT_ID = "' in text and "    COLLECTION_NUMBER = 02\n" in text
    assert "    DATE_ACQUIRED = 1995-07-14\n" in text and '    SPACECRAFT_ID = "LANDSAT_5"\n' in text
    assert not (d / f"{d.name}_MTL.xml").exists()


def test_mtl_uses_real_group_and_key_names(pair, shared_data):
    real_dir = shared_data / "landsat" / "LT05_L2SP_090084_19980308_20200909_02_T1"
    real = json.loads(next(real_dir.glob("*_MTL.json")).read_text())["LANDSAT_METADATA_FILE"]
    ours = json.loads(next(pair.scene_dir.glob("*_MTL.json")).read_text())["LANDSAT_METADATA_FILE"]
    assert list(ours) == list(real)  # same groups in the same order
    for group, entries in ours.items():
        unknown = set(entries) - set(real[group])
        assert not unknown, f"{group}: keys not in the real product: {sorted(unknown)}"
    for key in ("LANDSAT_PRODUCT_ID", "PROCESSING_LEVEL", "FILE_NAME_BAND_ST_B6", "DATA_TYPE_BAND_1"):
        assert key in ours["PRODUCT_CONTENTS"]


# ------------------------------------------------------------------------------------------
# QA
# ------------------------------------------------------------------------------------------
def test_qa_pixel_bits_are_consistent(pair):
    d = pair.scene_dir
    qa = band(d, "QA_PIXEL").astype(np.int64)
    sr = np.stack([band(d, f"SR_B{n}") for n in (1, 2, 3, 4, 5, 7)] + [band(d, "ST_B6")])
    fill = (qa & 1) > 0
    assert 0.05 < fill.mean() < 0.4  # a rotated footprint with a black collar
    assert np.array_equal(fill, (sr == 0).all(axis=0))
    assert (sr[:, ~fill] > 0).all()
    assert (qa[fill] == 1).all()  # fill pixels carry only the fill bit
    assert fill[0, 0] and fill[-1, -1] and not fill[32, 32]
    cloud, shadow, dilated = (qa & 8) > 0, (qa & 16) > 0, (qa & 2) > 0
    clear, water = (qa & 64) > 0, (qa & 128) > 0
    conf = (qa >> 8) & 3
    assert not (cloud & shadow).any()
    assert np.array_equal(clear, ~fill & ~cloud & ~shadow)
    assert (conf[cloud] == 3).all() and (conf[~fill & ~cloud] < 3).all()
    assert (((qa >> 10) & 3)[shadow] == 3).all()
    assert not (dilated & cloud).any()
    assert cloud.any() and shadow.any() and dilated.any()
    share = cloud[~fill].mean()
    assert 0.05 < share < 0.15  # cloud_fraction=0.1
    # clouds are blobs, not salt and pepper: most cloud pixels have a cloudy 4-neighbour
    c = cloud[1:-1, 1:-1]
    nb = cloud[:-2, 1:-1] | cloud[2:, 1:-1] | cloud[1:-1, :-2] | cloud[1:-1, 2:]
    assert (c & nb).sum() > 0.9 * c.sum()
    # the water bit marks water classes only
    truth = read_truth(d, clc=pair.clc_path)
    water_values = {CLASS_INDEX[c] for c in (511, 512, 521, 522, 523)}
    assert np.isin(truth[water], list(water_values)).all()
    # clouds are bright and cold
    temp = band(d, "ST_B6") * ST_SCALE + ST_OFFSET
    blue = band(d, "SR_B1") * SR_SCALE + SR_OFFSET
    assert blue[cloud].mean() > 0.3 > blue[clear].mean()
    assert temp[cloud].mean() < temp[clear].mean() - 10


def test_no_clouds_no_fill(tmp_path):
    d = make_scene(tmp_path, size=32, cloud_fraction=0.0, fill_border=False)
    qa = band(d, "QA_PIXEL").astype(np.int64)
    assert set(np.unique(qa)) <= {5440, 5504}  # clear land / clear water, low confidences


# ------------------------------------------------------------------------------------------
# determinism, streaming
# ------------------------------------------------------------------------------------------
def test_same_seed_same_bytes(tmp_path):
    a = make_pair(tmp_path / "a", size=48, seed=3)
    b = make_pair(tmp_path / "b", size=48, seed=3)
    c = make_pair(tmp_path / "c", size=48, seed=4)
    files = sorted(p.name for p in a.scene_dir.iterdir())
    assert files == sorted(p.name for p in b.scene_dir.iterdir())
    for name in files:
        assert (a.scene_dir / name).read_bytes() == (b.scene_dir / name).read_bytes(), name
    assert a.clc_path.read_bytes() == b.clc_path.read_bytes()
    assert a.clc_path.read_bytes() != c.clc_path.read_bytes()
    name = f"{a.product_id}_SR_B4.TIF"
    assert (a.scene_dir / name).read_bytes() != (c.scene_dir / name).read_bytes()


def test_landscape_is_seamless_across_strips_and_scenes(tmp_path):
    # a tall scene is written in two strips; a second scene shifted 500 rows south agrees
    big = make_scene(tmp_path / "big", size=(600, 40), seed=2, cloud_fraction=0.0)
    g = scene_grid(size=(600, 40))
    shifted = make_scene(
        tmp_path / "shifted", size=(100, 40), seed=2, cloud_fraction=0.0, origin=(g.x[0], g.y[500])
    )
    assert np.array_equal(read_truth(big)[500:], read_truth(shifted))
    with rasterio.open(next(big.glob("*_SR_B4.TIF"))) as src:
        assert src.read(1, window=((500, 600), (0, 40))).shape == (100, 40)


def test_existing_product_is_not_overwritten_silently(tmp_path):
    make_scene(tmp_path, size=16)
    with pytest.raises(FileExistsError):
        make_scene(tmp_path, size=16)
    make_scene(tmp_path, size=16, overwrite=True, seed=1)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"level": "L2SR"}, "level"),
        ({"sensor": "LM05"}, "sensor"),
        ({"cloud_fraction": 0.95}, "cloud_fraction"),
        ({"mtl_formats": ("yaml",)}, "mtl_formats"),
        ({"size": 4}, "size"),
        ({"date": "14.07.1995"}, "date"),
    ],
)
def test_bad_arguments(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        make_scene(tmp_path, **kw)


# ------------------------------------------------------------------------------------------
# CORINE
# ------------------------------------------------------------------------------------------
def test_make_clc_index_values(tmp_path):
    p = make_clc(tmp_path / "clc.tif", bounds=(4040000, 3060000, 4046000, 3066000), seed=1)
    with rasterio.open(p) as src:
        assert src.crs.to_epsg() == 3035 and src.res == (100.0, 100.0)
        assert src.dtypes == ("uint8",) and src.nodata == 255
        assert src.transform.c % 100 == 0 and src.transform.f % 100 == 0
        a = src.read(1)
    assert a.shape == (60, 60)
    values = set(np.unique(a).tolist())
    assert {48, 255} <= values  # NODATA class and the declared nodata value
    classes = values - {48, 255}
    assert classes <= {CLASS_INDEX[c] for c in WORLD_CODES} and len(classes) >= 5
    # spatially coherent parcels: most 4-neighbours share the class
    same = np.concatenate([(a[1:] == a[:-1]).ravel(), (a[:, 1:] == a[:, :-1]).ravel()])
    assert same.mean() > 0.75


def test_make_clc_code_values(tmp_path):
    p = make_clc(tmp_path / "clc.tif", bounds=(4040000, 3060000, 4046000, 3066000), seed=1, values="code")
    q = make_clc(tmp_path / "idx.tif", bounds=(4040000, 3060000, 4046000, 3066000), seed=1, holes=False)
    with rasterio.open(p) as src:
        assert src.dtypes == ("uint16",) and src.nodata == 999
        codes = src.read(1)
    with rasterio.open(q) as src:
        idx = src.read(1)
    assert set(np.unique(idx)) <= {CLASS_INDEX[c] for c in WORLD_CODES}
    assert set(np.unique(codes)) <= set(WORLD_CODES) | {999}
    assert (codes == 999).any()
    lut = {v: k for k, v in CLASS_INDEX.items()}
    ok = codes != 999
    assert np.array_equal(codes[ok], np.vectorize(lut.get)(idx[ok]))


def test_pair_overlaps_partially(pair):
    g = scene_grid(size=64)
    with rasterio.open(pair.clc_path) as src:
        left, bottom, right, top = src.bounds
        assert src.crs.to_epsg() == 3035
    gx, gy = np.meshgrid(g.x, g.y)
    x, y = Transformer.from_crs(32632, 3035, always_xy=True).transform(gx, gy)
    inside = (x >= left) & (x < right) & (y > bottom) & (y <= top)
    assert inside.mean() == pytest.approx(0.6, abs=0.05)
    # the CLC raster also sticks out beyond the scene
    sx0, sy0, sx1, sy1 = x.min(), y.min(), x.max(), y.max()
    assert right > sx1 and bottom < sy0 and left > sx0 and top < sy1


def test_truth_is_clc_nearest_and_continues_beyond_it(pair, tmp_path):
    truth = read_truth(pair.scene_dir, clc=pair.clc_path)
    g = scene_grid(size=64)
    gx, gy = np.meshgrid(g.x, g.y)
    x, y = Transformer.from_crs(32632, 3035, always_xy=True).transform(gx, gy)
    with rasterio.open(pair.clc_path) as src:
        clc, t = src.read(1), src.transform
    col = np.floor((x - t.c) / t.a).astype(int)
    row = np.floor((y - t.f) / t.e).astype(int)
    inside = (col >= 0) & (col < clc.shape[1]) & (row >= 0) & (row < clc.shape[0])
    got = np.zeros_like(truth)
    got[inside] = clc[row[inside], col[inside]]
    has_class = (got >= 1) & (got <= 44)
    assert has_class.sum() > 1000
    assert np.array_equal(truth[has_class], got[has_class])
    # outside the raster the same landscape goes on: a bigger CLC of the same seed agrees
    big = make_clc(
        tmp_path / "big.tif",
        bounds=(x.min() - 500, y.min() - 500, x.max() + 500, y.max() + 500),
        seed=7,
        holes=False,
    )
    with rasterio.open(big) as src:
        full, tb = src.read(1), src.transform
    col = np.floor((x - tb.c) / tb.a).astype(int)
    row = np.floor((y - tb.f) / tb.e).astype(int)
    assert np.array_equal(truth[~has_class], full[row, col][~has_class])


def test_code_valued_corine_drives_the_scene_too(tmp_path):
    p = make_pair(tmp_path, size=48, seed=4, overlap=1.0, clc_values="code", cloud_fraction=0.0)
    truth = read_truth(p.scene_dir, clc=p.clc_path)
    g = scene_grid(size=48)
    gx, gy = np.meshgrid(g.x, g.y)
    x, y = Transformer.from_crs(32632, 3035, always_xy=True).transform(gx, gy)
    with rasterio.open(p.clc_path) as src:
        assert src.dtypes == ("uint16",)
        codes, t = src.read(1), src.transform
    got = codes[np.floor((y - t.f) / t.e).astype(int), np.floor((x - t.c) / t.a).astype(int)]
    ok = got != 999
    assert ok.mean() > 0.5
    assert np.array_equal(truth[ok], np.vectorize(CLASS_INDEX.get)(got[ok]))


def test_scene_from_real_corine(tmp_path, shared_data):
    clc = shared_data / "corine" / "clc-aachen_clipped.tif"
    d = make_scene(tmp_path, size=160, clc=clc, cloud_fraction=0.0)
    truth = read_truth(d, clc=clc)
    with rasterio.open(clc) as src:
        real = set(np.unique(src.read(1)).tolist()) - {255}
    # the default scene lies inside the Aachen clip, so every pixel takes a real CLC class
    assert set(np.unique(truth).tolist()) <= real
    assert len(set(np.unique(truth).tolist())) >= 3


# ------------------------------------------------------------------------------------------
# the RGB twins
# ------------------------------------------------------------------------------------------
def test_twin_signatures_equal_in_rgb_only():
    for a, b in RGB_TWINS:
        assert SIGNATURES[a][:3] == SIGNATURES[b][:3]
        assert TEMPERATURE[a] == TEMPERATURE[b]
        nir_swir = np.abs(np.subtract(SIGNATURES[a][3:], SIGNATURES[b][3:]))
        assert nir_swir.max() >= 0.05


def balanced_accuracy(xa: np.ndarray, xb: np.ndarray) -> float:
    """Nearest-centroid balanced accuracy separating samples ``xa`` from ``xb`` (features x samples)."""
    ca, cb = xa.mean(axis=1, keepdims=True), xb.mean(axis=1, keepdims=True)

    def closer_to_a(x: np.ndarray) -> np.ndarray:
        return ((x - ca) ** 2).sum(axis=0) < ((x - cb) ** 2).sum(axis=0)

    return float(closer_to_a(xa).mean() / 2 + (~closer_to_a(xb)).mean() / 2)


def test_twins_separable_only_with_nir_swir(twins_scene):
    d = twins_scene
    refl = np.stack([band(d, f"SR_B{n}") * SR_SCALE + SR_OFFSET for n in (1, 2, 3, 4, 5, 7)])
    truth = read_truth(d)
    for a, b in RGB_TWINS:
        ma, mb = truth == CLASS_INDEX[a], truth == CLASS_INDEX[b]
        assert ma.sum() > 300 and mb.sum() > 300, (a, b)
        xa, xb = refl[:, ma], refl[:, mb]
        d_mean = np.abs(xa.mean(axis=1) - xb.mean(axis=1))
        assert d_mean[:3].max() < 0.006, (a, b, d_mean)  # blue, green, red
        assert d_mean[3:].max() > 0.04, (a, b, d_mean)  # nir, swir1, swir2
        # nearest-centroid: chance level on RGB, near perfect with NIR/SWIR
        assert balanced_accuracy(xa[:3], xb[:3]) < 0.6, (a, b)
        assert balanced_accuracy(xa, xb) > 0.9, (a, b)


# ------------------------------------------------------------------------------------------
# L1TP and other sensors
# ------------------------------------------------------------------------------------------
def test_l1tp_dns_and_calibration(tmp_path):
    d = make_scene(tmp_path, size=64, level="L1TP", seed=5)
    pid = d.name
    assert "_L1TP_" in pid
    txt, xml, js = read_mtls(d)
    assert txt == xml == js
    m = txt
    assert "LEVEL2_SURFACE_REFLECTANCE_PARAMETERS" not in m
    resc, k = m["LEVEL1_RADIOMETRIC_RESCALING"], m["LEVEL1_THERMAL_CONSTANTS"]
    sun_el = float(m["IMAGE_ATTRIBUTES"]["SUN_ELEVATION"])
    qa = band(d, "QA_PIXEL")
    clear = (qa & 0b11011) == 0
    for n in range(1, 8):
        with rasterio.open(d / f"{pid}_B{n}.TIF") as src:
            assert src.dtypes == ("uint8",) and src.nodata == 0
            assert src.transform.c % 30 == 15 and src.res == (30.0, 30.0)
            dn = src.read(1)
        assert np.array_equal(dn == 0, (qa & 1) > 0)
        if n == 6:
            rad = float(resc["RADIANCE_MULT_BAND_6"]) * dn[clear] + float(resc["RADIANCE_ADD_BAND_6"])
            bt = float(k["K2_CONSTANT_BAND_6"]) / np.log(float(k["K1_CONSTANT_BAND_6"]) / rad + 1)
            assert 280 < np.median(bt) < 310
        else:
            assert f"RADIANCE_MULT_BAND_{n}" in resc
            mult, add = float(resc[f"REFLECTANCE_MULT_BAND_{n}"]), float(resc[f"REFLECTANCE_ADD_BAND_{n}"])
            toa = mult * dn[clear] + add
            toa /= math.sin(math.radians(sun_el))
            assert 0.0 < np.median(toa) < 0.6
    assert "REFLECTANCE_MULT_BAND_6" not in resc
    # clouds saturate the uint8 blue band: QA_RADSAT bit 0 and SATURATION_BAND_1
    radsat = band(d, "QA_RADSAT")
    b1 = band(d, "B1")
    assert np.array_equal((radsat & 1) > 0, b1 == 255)
    assert m["IMAGE_ATTRIBUTES"]["SATURATION_BAND_1"] == ("Y" if (b1 == 255).any() else "N")


@pytest.mark.parametrize(
    "sensor, level, bands",
    [
        ("LE07", "L2SP", ["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B7", "ST_B6"]),
        ("LC08", "L2SP", ["SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B6", "SR_B7", "ST_B10"]),
        ("LE07", "L1TP", ["B1", "B2", "B3", "B4", "B5", "B6_VCID_1", "B6_VCID_2", "B7", "B8"]),
        ("LC08", "L1TP", [f"B{n}" for n in range(1, 12)]),
    ],
)
def test_other_sensors(tmp_path, sensor, level, bands):
    d = make_scene(tmp_path, size=32, sensor=sensor, level=level)
    assert d.name.startswith(f"{sensor}_{level}_")
    got = {p.name[len(d.name) + 1 : -4] for p in d.glob("*.TIF")}
    assert got == set(bands) | {"QA_PIXEL", "QA_RADSAT"}
    txt, xml, js = read_mtls(d)
    assert txt == xml == js
    pc = txt["PRODUCT_CONTENTS"]
    files = {v for k, v in pc.items() if k.startswith("FILE_NAME_BAND_")}
    assert files == {f"{d.name}_{b}.TIF" for b in bands}
    if "B8" in bands:  # panchromatic at 15 m on the same extent
        with rasterio.open(d / f"{d.name}_B8.TIF") as pan, rasterio.open(d / f"{d.name}_B1.TIF") as b1:
            assert pan.res == (15.0, 15.0) and pan.bounds == b1.bounds
            assert (pan.height, pan.width) == (64, 64)
        assert txt["PROJECTION_ATTRIBUTES"]["PANCHROMATIC_LINES"] == "64"
    if sensor == "LC08":
        qa = band(d, "QA_PIXEL").astype(np.int64)
        assert (((qa >> 14) & 3)[qa != 1] == 1).all()  # cirrus confidence low on OLI


# ------------------------------------------------------------------------------------------
# time stacks, bundles, CLI
# ------------------------------------------------------------------------------------------
def test_acquisitions_share_grid_and_landscape(tmp_path):
    dirs = make_acquisitions(tmp_path, dates=("1995-06-12", "1995-08-31"), size=48, seed=9)
    assert [p.name.split("_")[3] for p in dirs] == ["19950612", "19950831"]
    grids, truths, qas = [], [], []
    for d in dirs:
        with rasterio.open(next(d.glob("*_SR_B1.TIF"))) as src:
            grids.append((src.crs, src.transform, src.shape))
        truths.append(read_truth(d))
        qas.append(band(d, "QA_PIXEL"))
    assert grids[0] == grids[1]
    assert np.array_equal(truths[0], truths[1])
    assert not np.array_equal(qas[0], qas[1])  # different clouds
    sun = [float(read_mtls(d)[0]["IMAGE_ATTRIBUTES"]["SUN_ELEVATION"]) for d in dirs]
    assert sun[0] > sun[1]  # June sun higher than end of August


def test_bundle_is_flat_and_reproducible(pair, tmp_path):
    t1 = make_bundle(pair.scene_dir, out=tmp_path / "one.tar")
    t2 = make_bundle(pair.scene_dir, out=tmp_path / "two.tar")
    assert t1.read_bytes() == t2.read_bytes()
    with tarfile.open(t1) as tar:
        names = sorted(tar.getnames())
        assert names == sorted(p.name for p in pair.scene_dir.iterdir())
        member = tar.extractfile(f"{pair.product_id}_MTL.json")
        assert member is not None and b"LANDSAT_METADATA_FILE" in member.read()
    default = make_bundle(pair.scene_dir)
    assert default == pair.scene_dir.with_name(pair.product_id + ".tar")


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["synth", str(out), "--size", "40", "--seed", "2", "--overlap", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert (out / "clc.tif").is_file() and str(out / "clc.tif") in printed
    (scene,) = [p for p in out.iterdir() if p.is_dir()]
    assert scene.name.startswith("LT05_L2SP_") and str(scene) in printed
    assert len(list(scene.glob("*.TIF"))) == 9
    # again: refuses to overwrite, one line on stderr
    assert main(["synth", str(out), "--size", "40"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("landcover: ") and "--force" in err and "\n" not in err
    assert main(["synth", str(out), "--size", "40", "--force", "--level", "L1TP", "--bundle"]) == 0
    assert (out / "LT05_L1TP_196025_19950714_20200913_02_T1.tar").is_file()
    assert main(["synth", str(out), "--overlap", "1.5"]) == 1
    assert "overlap" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# the CLC-like world (default): real spectra, 25 ha MMU maps, mixed pixels, label noise
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clc_like_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_scene(
        tmp_path_factory.mktemp("clclike"), size=256, seed=3, cloud_fraction=0.0, fill_border=False
    )


@pytest.mark.real
def test_spectra_table_is_derived_from_the_real_lanjaron_pair(shared_data):
    from landcover.testing._spectra import SPECTRA, covariance, derive_spectra

    pair = shared_data / "pairs" / "lanjaron"
    got = derive_spectra(pair / "landsat8_lanjaron_sat_30m.tif", pair / "clc2018_lanjaron.gpkg")
    assert set(got) == set(SPECTRA)
    for code, (n, mean, cov) in got.items():
        assert n == SPECTRA[code][0], code
        assert np.allclose(mean, SPECTRA[code][1], atol=6e-5), code
        assert np.allclose(cov, covariance(code), atol=2e-7), code


def test_outside_rgb_pairs_overlap_partly_in_rgb():
    from landcover.testing._spectra import separability, separability_table

    assert len(OUTSIDE_RGB_PAIRS) >= 3
    for a, b in OUTSIDE_RGB_PAIRS:
        rgb, full = separability(a, b, (0, 1, 2)), separability(a, b)
        # partial, not total, overlap in RGB (the old twins had JM 0 there), and much better with NIR/SWIR
        assert 0.2 < rgb < 0.9 and full > rgb + 0.6, (a, b, rgb, full)
    # the other pairs are not all trivially separable either: the stand-in does not decide the answer
    rest = [full for a, b, _rgb, full in separability_table() if (a, b) not in OUTSIDE_RGB_PAIRS]
    assert min(rest) < 1.0


def test_clc_like_map_respects_the_mmu_and_is_seamless(tmp_path):
    from rasterio.features import shapes

    from landcover.testing._world import MMU_CELLS

    box = (4040000, 3060000, 4052000, 3072000)
    p = make_clc(tmp_path / "a.tif", bounds=box, seed=5, holes=False)
    with rasterio.open(p) as src:
        a = src.read(1)
        assert (
            src.tags()["LANDCOVER_SYNTH_WORLD"] == "clc-like"
            and src.tags()["LANDCOVER_SOURCE"] == "synthetic"
        )
    h, w = a.shape
    small = []
    for geom, _value in shapes(a, connectivity=8):
        ring = np.asarray(geom["coordinates"][0])
        touches = (
            (ring[:, 0].min() <= 0)
            | (ring[:, 1].min() <= 0)
            | (ring[:, 0].max() >= w)
            | (ring[:, 1].max() >= h)
        )
        from shapely.geometry import shape

        area = shape(geom).area
        if not touches and area < MMU_CELLS:
            small.append(area)
    assert not small, small  # every patch inside the map has at least 25 cells (25 ha)
    assert len(np.unique(a)) >= 6
    # a raster over a shifted box agrees where they overlap (tiles on a global grid)
    q = make_clc(tmp_path / "b.tif", bounds=(4046000, 3066000, 4058000, 3078000), seed=5, holes=False)
    with rasterio.open(q) as src:
        b = src.read(1)
    assert np.array_equal(a[:60, 60:], b[60:, :60])


def test_clc_like_scene_has_mixed_pixels_label_noise_and_provenance(clc_like_scene):
    from landcover.testing.provenance import scene_provenance
    from landcover.testing.scenes import _Labels

    d = clc_like_scene
    truth = read_truth(d)
    labels = _Labels(scene_grid(size=256), clc=None, landscape_seed=3, world="clc-like")
    idx, _ = labels.strip(0, 256)
    assert np.array_equal(idx, truth)
    cover = labels.cover(0, 256, idx)
    mixed = (cover != cover[:1]).any(axis=0).mean()
    noise = (cover[0] != truth).mean()
    assert 0.01 < mixed < 0.2  # boundary pixels are mixtures of their sub-pixel covers
    assert 0.03 < noise < 0.2  # 100 m -> 30 m label noise: blocky, generalised labels vs the true cover
    prov = scene_provenance(d)
    assert prov is not None and prov["source"] == "synthetic" and prov["world"] == "clc-like"
    assert prov["outside_rgb_classes"] == list(OUTSIDE_RGB_CLASSES)
    # within-field texture: a class's pixels vary spatially coherently (neighbours correlate)
    refl = band(d, "SR_B4") * SR_SCALE + SR_OFFSET
    code = max(set(np.unique(truth).tolist()), key=lambda v: (truth == v).sum())
    m = (truth == code) & np.roll(truth == code, 1, axis=1) & (cover == code).all(axis=0)
    m &= np.roll((cover == code).all(axis=0), 1, axis=1)
    x, y = refl[m], np.roll(refl, 1, axis=1)[m]
    assert np.corrcoef(x, y)[0, 1] > 0.3


def test_clc_like_nir_swir_help_but_rgb_is_not_useless(clc_like_scene):
    d = clc_like_scene
    refl = np.stack([band(d, f"SR_B{n}") * SR_SCALE + SR_OFFSET for n in (1, 2, 3, 4, 5, 7)])
    truth = read_truth(d)
    idx = {v: k for k, v in CLASS_INDEX.items()}
    tested = 0
    for a, b in OUTSIDE_RGB_PAIRS:
        ma, mb = truth == CLASS_INDEX[a], truth == CLASS_INDEX[b]
        if ma.sum() < 200 or mb.sum() < 200:
            continue
        tested += 1
        xa, xb = refl[:, ma], refl[:, mb]
        rgb, full = balanced_accuracy(xa[:3], xb[:3]), balanced_accuracy(xa, xb)
        assert full > rgb + 0.03, (a, b, rgb, full)
    assert tested >= 2, sorted(idx[v] for v in np.unique(truth))
