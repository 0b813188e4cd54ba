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


# -- old USGS metadata (issue 14): pre-Collection and early Collection 1 Level-1 MTL files -------

# A pre-Collection (LPGS, about 2009) Landsat 5 TM L1T MTL: scene id only, old group and key names.
OLD_TM = """GROUP = L1_METADATA_FILE
  GROUP = METADATA_FILE_INFO
    REQUEST_ID = "0101106220001_00001"
    LANDSAT_SCENE_ID = "LT51930242009173KIS00"
    PRODUCT_CREATION_TIME = 2009-07-01T10:11:12Z
  END_GROUP = METADATA_FILE_INFO
  GROUP = PRODUCT_METADATA
    PRODUCT_TYPE = "L1T"
    SPACECRAFT_ID = "Landsat5"
    SENSOR_ID = "TM"
    ACQUISITION_DATE = 2009-06-22
    SCENE_CENTER_SCAN_TIME = 09:51:21.1230000Z
    WRS_PATH = 193
    STARTING_ROW = 24
    BAND1_FILE_NAME = "LT51930242009173KIS00_B1.TIF"
    BAND2_FILE_NAME = "LT51930242009173KIS00_B2.TIF"
    BAND3_FILE_NAME = "LT51930242009173KIS00_B3.TIF"
    BAND4_FILE_NAME = "LT51930242009173KIS00_B4.TIF"
    BAND5_FILE_NAME = "LT51930242009173KIS00_B5.TIF"
    BAND6_FILE_NAME = "LT51930242009173KIS00_B6.TIF"
    BAND7_FILE_NAME = "LT51930242009173KIS00_B7.TIF"
  END_GROUP = PRODUCT_METADATA
  GROUP = MIN_MAX_RADIANCE
    LMAX_BAND1 = 193.000
    LMIN_BAND1 = -1.520
    LMAX_BAND2 = 365.000
    LMIN_BAND2 = -2.840
    LMAX_BAND3 = 264.000
    LMIN_BAND3 = -1.170
    LMAX_BAND4 = 221.000
    LMIN_BAND4 = -1.510
    LMAX_BAND5 = 30.200
    LMIN_BAND5 = -0.370
    LMAX_BAND6 = 15.303
    LMIN_BAND6 = 1.238
    LMAX_BAND7 = 16.500
    LMIN_BAND7 = -0.150
  END_GROUP = MIN_MAX_RADIANCE
  GROUP = MIN_MAX_PIXEL_VALUE
    QCALMAX_BAND1 = 255.0
    QCALMIN_BAND1 = 1.0
    QCALMAX_BAND2 = 255.0
    QCALMIN_BAND2 = 1.0
    QCALMAX_BAND3 = 255.0
    QCALMIN_BAND3 = 1.0
    QCALMAX_BAND4 = 255.0
    QCALMIN_BAND4 = 1.0
    QCALMAX_BAND5 = 255.0
    QCALMIN_BAND5 = 1.0
    QCALMAX_BAND6 = 255.0
    QCALMIN_BAND6 = 1.0
    QCALMAX_BAND7 = 255.0
    QCALMIN_BAND7 = 1.0
  END_GROUP = MIN_MAX_PIXEL_VALUE
  GROUP = PRODUCT_PARAMETERS
    SUN_AZIMUTH = 143.1234567
    SUN_ELEVATION = 59.7654321
  END_GROUP = PRODUCT_PARAMETERS
END_GROUP = L1_METADATA_FILE
END
"""


def test_pre_collection_tm_mtl_converts(tmp_path: Path) -> None:
    """LMAX/LMIN/QCAL -> radiance; TOA from ESUN (Chander 2009) and the date's Earth-Sun distance; K1/K2."""
    import math
    import re

    padded = OLD_TM.replace("\n", "\r\n").encode() + b"\x00" * 300  # CRLF and NUL padding, as shipped
    (tmp_path / "LT51930242009173KIS00_MTL.txt").write_bytes(padded)
    m = read_mtl(tmp_path / "LT51930242009173KIS00_MTL.txt")
    assert (m.product_id, m.sensor, m.level, m.collection) == ("LT51930242009173KIS00", "LT05", "L1T", 0)
    assert (m.wrs_path, m.wrs_row) == (193, 24)
    assert m.acquired_datetime64 == np.datetime64("2009-06-22T09:51:21.123", "ns")
    assert m.sun_elevation == pytest.approx(59.7654321)
    assert m.band_files["B1"] == "LT51930242009173KIS00_B1.TIF" and "B6" in m.band_files
    gain = (193.0 + 1.52) / 254.0  # typed by hand: (LMAX - LMIN) / (QCALMAX - QCALMIN)
    assert m.radiance["B1"].mult == pytest.approx(gain, rel=1e-12)
    assert m.radiance["B1"].add == pytest.approx(-1.52 - gain * 1.0, rel=1e-12)
    # 22 June (day 173): Earth-Sun distance 1.01637 AU (Chander 2009 table), ESUN(TM5 B4) = 1031
    d = 1.01637
    f = math.pi * d * d / 1031.0
    g4 = (221.0 + 1.51) / 254.0
    assert m.toa_reflectance["B4"].mult == pytest.approx(g4 * f, rel=5e-4)  # d from the date: +-1e-4 AU
    assert m.toa_reflectance["B4"].add == pytest.approx((-1.51 - g4) * f, rel=5e-4)
    assert m.thermal_constants == {"B6": (607.76, 1260.56)}
    assert set(m.derived) >= {
        "radiance from LMAX/LMIN/QCAL",
        "TOA reflectance from ESUN (Chander et al. 2009)",
    }
    # the same limits under another old group name, and the 2012 key names, give the same radiance
    renamed = parse_mtl(OLD_TM.replace("MIN_MAX_RADIANCE", "RADIANCE_SCALING"))
    assert renamed.radiance == m.radiance
    new_keys = OLD_TM
    renames = {
        "LMAX_BAND": "RADIANCE_MAXIMUM_BAND_",
        "LMIN_BAND": "RADIANCE_MINIMUM_BAND_",
        "QCALMAX_BAND": "QUANTIZE_CAL_MAX_BAND_",
        "QCALMIN_BAND": "QUANTIZE_CAL_MIN_BAND_",
    }
    for old, new in renames.items():
        new_keys = re.sub(rf"\b{old}(\d)", rf"{new}\1", new_keys)
    assert parse_mtl(new_keys).radiance == m.radiance
    with pytest.raises(InputFileError, match="lacks QCALMIN_BAND7"):
        parse_mtl(OLD_TM.replace("    QCALMIN_BAND7 = 1.0\n", ""))


def test_c1_without_reflectance_rescaling(shared_data: Path) -> None:
    """The real C1 TM and ETM+ MTLs with their REFLECTANCE_* and K1/K2 lines removed (as in pre-Collection
    files): TOA factors = pi d^2 / ESUN(Chander 2009) * RADIANCE_MULT, computed here from the text.

    USGS's own C1 factors imply other ESUN values (TM5 B5: 209.6 instead of 220.0), so they differ by up
    to 5 %; the MTL's REFLECTANCE_MULT is used whenever the file has it.
    """
    import math
    import re

    esun = {
        "LT05": {"1": 1983.0, "2": 1796.0, "3": 1536.0, "4": 1031.0, "5": 220.0, "7": 83.44},
        "LE07": {"1": 1997.0, "2": 1812.0, "3": 1533.0, "4": 1039.0, "5": 230.8, "7": 84.90},
    }
    d = shared_data / "landsat" / UKIS
    for name in ("LT05_L1TP_193024_20050516_20161127_01_T1", "LE07_L1TP_193024_20100420_20161215_01_T1"):
        text = (d / f"{name}_MTL.txt").read_text()
        usgs = parse_mtl(text)
        old = "\n".join(
            ln for ln in text.splitlines() if "REFLECTANCE_" not in ln and "_CONSTANT_BAND_" not in ln
        )
        m = parse_mtl(old)
        assert "TOA reflectance from ESUN (Chander et al. 2009)" in m.derived
        dist = float(re.search(r"EARTH_SUN_DISTANCE = (\S+)", text).group(1))  # type: ignore[union-attr]
        for n, e in esun[name[:4]].items():
            mult = float(re.search(rf"RADIANCE_MULT_BAND_{n} = (\S+)", text).group(1))  # type: ignore[union-attr]
            add = float(re.search(rf"RADIANCE_ADD_BAND_{n} = (\S+)", text).group(1))  # type: ignore[union-attr]
            f = math.pi * dist * dist / e
            assert m.toa_reflectance[f"B{n}"] == Scale(mult * f, add * f)
            assert m.toa_reflectance[f"B{n}"].mult == pytest.approx(
                usgs.toa_reflectance[f"B{n}"].mult, rel=0.06
            )
        assert m.thermal_constants == usgs.thermal_constants  # Chander's K1/K2 are what USGS ships


def test_pre_collection_product_directory(tmp_path: Path) -> None:
    """A synthetic L1 product renamed to pre-Collection names with an old-style MTL opens as TOA + BT,
    equal to the Collection product's values (same DNs; ESUN route vs the MTL's REFLECTANCE_MULT)."""
    import re

    from landcover.landsat import open_scene, plan_scene
    from landcover.testing import make_scene

    prod = make_scene(tmp_path, size=32, level="L1TP", seed=2, date="2009-06-22")
    text = next(prod.glob("*_MTL.txt")).read_text()

    def val(key: str) -> float:
        mm = re.search(rf"^\s*{key} = (\S+)", text, re.M)
        assert mm, key
        return float(mm.group(1).strip('"'))

    old_dir = tmp_path / "old"
    old_dir.mkdir()
    sid = "LT51960252009173KIS00"
    lines = []
    for n in "1234567":
        (old_dir / f"{sid}_B{n}.TIF").write_bytes((prod / f"{prod.name}_B{n}.TIF").read_bytes())
        g, b = val(f"RADIANCE_MULT_BAND_{n}"), val(f"RADIANCE_ADD_BAND_{n}")
        lines.append((n, b + g * 255.0, b + g * 1.0))
    mtl = OLD_TM.replace("LT51930242009173KIS00", sid)
    for n, lmax, lmin in lines:
        mtl = re.sub(rf"\bLMAX_BAND{n} = \S+", f"LMAX_BAND{n} = {lmax:.9f}", mtl)
        mtl = re.sub(rf"\bLMIN_BAND{n} = \S+", f"LMIN_BAND{n} = {lmin:.9f}", mtl)
    mtl = mtl.replace("SUN_ELEVATION = 59.7654321", f"SUN_ELEVATION = {val('SUN_ELEVATION')}")
    mtl = mtl.replace(
        "  GROUP = PRODUCT_PARAMETERS\n",
        f"  GROUP = PRODUCT_PARAMETERS\n    EARTH_SUN_DISTANCE = {val('EARTH_SUN_DISTANCE')}\n",
    )
    (old_dir / f"{sid}_MTL.txt").write_text(mtl)
    plan = plan_scene(old_dir)
    assert plan.meta.sensor_code == "LT05" and plan.level == "L1T" and plan.thermal is not None
    a = open_scene(plan, chunks=16).compute()
    b = open_scene(prod, chunks=16).compute()
    # the MTL rounds REFLECTANCE_MULT to 5 digits (1.2531E-03): agreement to about 1e-4, not bits
    np.testing.assert_allclose(a["reflectance"].values, b["reflectance"].values, rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(a["thermal"].values, b["thermal"].values, rtol=1e-6)
    assert plan_scene(old_dir / f"{sid}_B3.TIF").layout == "directory"  # a band file names its product
