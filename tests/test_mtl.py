"""MTL parsing: three encodings, Collection 1 and 2, per-group constants, clear errors."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from landcover.errors import InputFileError
from landcover.mtl import Mtl, Scale, parse_mtl, read_mtl

LT05 = "LT05_L2SP_090084_19980308_20200909_02_T1"
UKIS = "ukis_pysat_p193r024_germany"


@pytest.fixture(scope="module")
def lt05_dir(shared_data: Path) -> Path:
    return shared_data / "landsat" / LT05


def _typed(m: Mtl) -> dict[str, object]:
    d = {k: getattr(m, k) for k in m.__dataclass_fields__ if k not in ("path", "encoding")}
    return d


def test_three_encodings_give_the_same_typed_metadata(lt05_dir: Path) -> None:
    odl = read_mtl(lt05_dir / f"{LT05}_MTL.txt")
    xml = read_mtl(lt05_dir / f"{LT05}_MTL.xml")
    js = read_mtl(lt05_dir / f"{LT05}_MTL.json")
    assert (odl.encoding, xml.encoding, js.encoding) == ("odl", "xml", "json")
    assert _typed(odl) == _typed(xml) == _typed(js)
    # The raw groups agree value by value too (strings as written, quotes removed).
    assert odl.groups == xml.groups == js.groups
    assert len(odl.groups) >= 10


def test_lt05_l2sp_values_read_by_hand(lt05_dir: Path) -> None:
    m = read_mtl(lt05_dir / f"{LT05}_MTL.txt")
    assert m.product_id == LT05
    assert (m.sensor, m.spacecraft, m.sensor_id) == ("LT05", "LANDSAT_5", "TM")
    assert (m.collection, m.category, m.level) == (2, "T1", "L2SP")
    assert (m.wrs_path, m.wrs_row) == (90, 84)
    assert m.acquired == datetime(1998, 3, 8, 23, 26, 47, 294081, tzinfo=UTC)
    assert m.acquired_datetime64 == np.datetime64("1998-03-08T23:26:47.294081000", "ns")
    assert m.sun_azimuth == pytest.approx(61.29879916)
    assert m.sun_elevation == pytest.approx(41.58326399)
    assert m.earth_sun_distance == pytest.approx(0.9927805)
    assert (m.cloud_cover, m.cloud_cover_land) == (12.0, 10.0)
    assert (m.utm_zone, m.epsg, m.grid_cell_size) == (55, 32655, 30.0)
    assert (m.lines, m.samples) == (7311, 8071)
    assert m.corners == (638100.0, -3724800.0, 880200.0, -3944100.0)
    assert m.band_files["SR_B1"] == f"{LT05}_SR_B1.TIF"
    assert m.band_files["ST_B6"] == f"{LT05}_ST_B6.TIF"
    assert m.band_files["QA_PIXEL"] == f"{LT05}_QA_PIXEL.TIF"
    # the L2 product's own file list only (the L1 source's B1.TIF etc. live in another group)
    assert "B1" not in m.band_files and "SR_B6" not in m.band_files
    assert set(m.sr_scale) == {"SR_B1", "SR_B2", "SR_B3", "SR_B4", "SR_B5", "SR_B7"}
    assert m.sr_scale["SR_B4"] == Scale(2.75e-05, -0.2)
    assert m.st_scale == {"ST_B6": Scale(0.00341802, 149.0)}


def test_l1_and_l2_groups_reuse_key_names_but_stay_apart(lt05_dir: Path) -> None:
    """DOMAIN §1.4: REFLECTANCE_MULT_BAND_n is TOA in LEVEL1_* and SR in LEVEL2_*."""
    m = read_mtl(lt05_dir / f"{LT05}_MTL.xml")
    assert m.toa_reflectance["B1"] == Scale(1.2198e-03, -0.003641)
    assert m.toa_reflectance["B7"] == Scale(2.4680e-03, -0.008116)
    assert m.sr_scale["SR_B1"] == Scale(2.75e-05, -0.2)
    assert m.radiance["B6"] == Scale(5.5375e-02, 1.18243)
    assert m.thermal_constants == {"B6": (607.76, 1260.56)}
    assert m.groups["LEVEL1_RADIOMETRIC_RESCALING"]["REFLECTANCE_MULT_BAND_1"] == "1.2198E-03"
    assert m.groups["LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"]["REFLECTANCE_MULT_BAND_1"] == "2.75e-05"


# fmt: off
EXPECTED_MTL_ONLY = {
    # product id: (level, path, row, epsg, sun elevation, cloud cover, ul corner)
    "LT05_L2SP_010020_19860219_20200918_02_T1": ("L2SP", 10, 20, 32620, 18.19826473, 53.0, (459600.0, 6465000.0)),  # noqa: E501
    "LT05_L2SP_010067_19860424_20200918_02_T2": ("L2SP", 10, 67, 32617, 46.93006922, 23.0, (416700.0, -1014300.0)),  # noqa: E501
    "LT05_L2SP_058014_20110312_20200823_02_T1": ("L2SP", 58, 14, 32609, 20.49968487, 0.0, (339300.0, 7392900.0)),  # noqa: E501
    "LT05_L2SR_087017_20090621_20200827_02_T2": ("L2SR", 87, 17, 32601, 50.60672167, 25.0, (328200.0, 6932700.0)),  # noqa: E501
}
# fmt: on


@pytest.mark.parametrize("product_id", sorted(EXPECTED_MTL_ONLY))
def test_mtl_only_xml_files(shared_data: Path, product_id: str) -> None:
    m = read_mtl(shared_data / "landsat" / "mtl_only" / f"{product_id}_MTL.xml")
    level, path, row, epsg, sun_el, cloud, ul = EXPECTED_MTL_ONLY[product_id]
    assert (m.product_id, m.level, m.wrs_path, m.wrs_row, m.epsg) == (product_id, level, path, row, epsg)
    assert m.sun_elevation == pytest.approx(sun_el)
    assert m.cloud_cover == cloud
    assert m.corners is not None and m.corners[:2] == ul
    assert m.acquired.strftime("%Y%m%d") == product_id.split("_")[3]
    assert m.sr_scale["SR_B3"] == Scale(2.75e-05, -0.2)
    if level == "L2SR":  # SR-only product: no surface temperature band or factors
        assert m.st_scale == {} and "ST_B6" not in m.band_files
    else:
        assert m.st_scale["ST_B6"] == Scale(0.00341802, 149.0)
    assert m.is_level2


def test_collection1_mtl_txt(shared_data: Path) -> None:
    d = shared_data / "landsat" / UKIS
    le07 = read_mtl(d / "LE07_L1TP_193024_20100420_20161215_01_T1_MTL.txt")
    assert (le07.sensor, le07.level, le07.collection, le07.category) == ("LE07", "L1TP", 1, "T1")
    assert (le07.wrs_path, le07.wrs_row, le07.epsg) == (193, 24, 32633)
    assert le07.sun_elevation == pytest.approx(47.23638449)
    assert le07.acquired_datetime64 == np.datetime64("2010-04-20T09:55:09.7994828", "ns")
    assert le07.toa_reflectance["B1"] == Scale(1.8388e-03, -0.011495)
    assert le07.radiance["B6_VCID_1"] == Scale(6.7087e-02, -0.06709)
    assert le07.thermal_constants["B6_VCID_1"] == (666.09, 1282.71)
    assert "B6_VCID_2" in le07.band_files and "BQA" in le07.band_files
    assert le07.sr_scale == {} and le07.st_scale == {}
    assert not le07.is_level2
    lc08 = read_mtl(d / "LC08_L1TP_193024_20200509_20200509_01_RT_MTL.txt")
    assert (lc08.sensor, lc08.category) == ("LC08", "RT")
    assert lc08.thermal_constants["B10"] == (774.8853, 1321.0789)  # TIRS_THERMAL_CONSTANTS group
    assert lc08.toa_reflectance["B2"] == Scale(2.0e-05, -0.1)
    lt05 = read_mtl(d / "LT05_L1TP_193024_20050516_20161127_01_T1_MTL.txt")
    assert lt05.thermal_constants == {"B6": (607.76, 1260.56)}
    assert lt05.sun_elevation == pytest.approx(54.3102529)


def test_lc08_l2_json(shared_data: Path) -> None:
    pid = "LC08_L2SP_017036_20130419_20200913_02_T2"
    m = read_mtl(shared_data / "landsat" / pid / f"{pid}_MTL.json")
    assert m.st_scale == {"ST_B10": Scale(0.00341802, 149.0)}
    assert "SR_B1" in m.sr_scale and "SR_B6" in m.sr_scale
    assert m.thermal_constants["B10"] == (774.8853, 1321.0789)
    assert m.cloud_cover == 100.0


def test_mtl_pickles_and_parses_from_memory(lt05_dir: Path) -> None:
    text = (lt05_dir / f"{LT05}_MTL.txt").read_text()
    a = parse_mtl(text, source="x_MTL.txt")
    b = parse_mtl(text.encode(), source="x_MTL.txt")
    assert _typed(a) == _typed(b)
    c = pickle.loads(pickle.dumps(a))
    assert _typed(c) == _typed(a)
    assert hash(a) == hash(b)


# -- errors -----------------------------------------------------------------------------------


def _one_line_naming(exc: InputFileError, path: Path) -> str:
    msg = str(exc)
    assert "\n" not in msg
    assert str(path) in msg
    return msg


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "empty"),
        ("hello world", "not a valid MTL"),
        ("GROUP = LANDSAT_METADATA_FILE\n  GROUP = PRODUCT_CONTENTS\n    A = 1\n", "truncated"),
        ('{"SOMETHING": {}}', "no LANDSAT_METADATA_FILE"),
        ("<FOO><BAR/></FOO>", "root element"),
        ("<LANDSAT_METADATA_FILE><A>", "not a valid MTL XML"),
        ("{not json", "not a valid MTL JSON"),
    ],
)
def test_unparsable_mtl(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "X_MTL.txt"
    path.write_text(content)
    with pytest.raises(InputFileError) as err:
        read_mtl(path)
    assert needle in _one_line_naming(err.value, path)


def _mutate(lt05_dir: Path, tmp_path: Path, old: str, new: str) -> Path:
    text = (lt05_dir / f"{LT05}_MTL.txt").read_text()
    assert old in text
    path = tmp_path / f"{LT05}_MTL.txt"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("    SUN_ELEVATION = 41.58326399\n", "", "lacks SUN_ELEVATION"),
        ("SUN_ELEVATION = 41.58326399", "SUN_ELEVATION = high", "not a number"),
        ("DATE_ACQUIRED = 1998-03-08", "DATE_ACQUIRED = 1998-13-08", "not a valid date"),
        (f'LANDSAT_PRODUCT_ID = "{LT05}"', 'LANDSAT_PRODUCT_ID = "foo"', "not a Landsat product id"),
        ("  END_GROUP = IMAGE_ATTRIBUTES", "  END_GROUP = OTHER", "unmatched END_GROUP"),
    ],
)
def test_mtl_missing_or_bad_fields(lt05_dir: Path, tmp_path: Path, old: str, new: str, needle: str) -> None:
    path = _mutate(lt05_dir, tmp_path, old, new)
    with pytest.raises(InputFileError) as err:
        read_mtl(path)
    assert needle in _one_line_naming(err.value, path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not found") as err:
        read_mtl(tmp_path / "nope_MTL.txt")
    _one_line_naming(err.value, tmp_path / "nope_MTL.txt")
    with pytest.raises(InputFileError, match="directory"):
        read_mtl(tmp_path)


def test_json_numbers_are_accepted(lt05_dir: Path, tmp_path: Path) -> None:
    """Some tools write MTL JSON with bare numbers instead of strings."""
    obj = json.loads((lt05_dir / f"{LT05}_MTL.json").read_text())
    obj["LANDSAT_METADATA_FILE"]["IMAGE_ATTRIBUTES"]["SUN_ELEVATION"] = 41.58326399
    obj["LANDSAT_METADATA_FILE"]["IMAGE_ATTRIBUTES"]["WRS_PATH"] = 90
    path = tmp_path / "x_MTL.json"
    path.write_text(json.dumps(obj))
    m = read_mtl(path)
    assert m.sun_elevation == pytest.approx(41.58326399) and m.wrs_path == 90
