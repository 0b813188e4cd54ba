"""Per-sensor band tables for the synthetic Collection 2 products (LT05, LE07, LC08)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["L1Band", "SensorSpec", "SENSORS", "BASE_BANDS"]

#: The six TM-equivalent reflective bands the class signatures are defined on.
BASE_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir1", "swir2")

#: Linear mixes of the base bands (weights over BASE_BANDS, offset) for derived bands.
_COASTAL = ((1.05, 0.0, 0.0, 0.0, 0.0, 0.0), 0.005)
_CIRRUS = ((0.0, 0.0, 0.0, 0.0, 0.0, 0.0), 0.002)
_TIRS_GAIN = 3.342e-04
_NOMIX: tuple[tuple[float, ...], float] = ((0.0,) * 6, 0.0)
_PAN = ((0.0, 0.4, 0.4, 0.2, 0.0, 0.0), 0.0)


def _one(i: int) -> tuple[tuple[float, ...], float]:
    w = [0.0] * 6
    w[i] = 1.0
    return (tuple(w), 0.0)


@dataclass(frozen=True)
class L1Band:
    """One Level-1 band file: name suffix, MTL key suffix and calibration.

    ``kind`` is ``reflective`` (TOA reflectance from a base-band mix), ``thermal``
    (brightness temperature) or ``pan`` (reflective at half the pixel size).
    """

    suffix: str
    key: str
    kind: Literal["reflective", "thermal", "pan"]
    mix: tuple[tuple[float, ...], float] = ((0.0,) * 6, 0.0)
    radiance_mult: float = 0.0
    radiance_add: float = 0.0
    esun: float = 0.0
    k1: float = 0.0
    k2: float = 0.0


@dataclass(frozen=True)
class SensorSpec:
    """Band naming and calibration of one Landsat sensor."""

    code: str
    spacecraft: str
    sensor_id: str
    scene_prefix: str
    l2_reflective: tuple[tuple[str, tuple[tuple[float, ...], float]], ...]
    l2_thermal: str
    l1_bands: tuple[L1Band, ...]
    l1_dtype: Literal["uint8", "uint16"]
    #: Fixed L1 reflectance rescaling (OLI); None derives it from radiance and ESUN (TM/ETM+).
    l1_reflectance: tuple[float, float] | None = None
    cirrus_bits: bool = False

    @property
    def l1_qmax(self) -> int:
        """Largest Level-1 DN."""
        return 255 if self.l1_dtype == "uint8" else 65535


_TM_L2 = tuple((str(n), _one(i)) for i, n in enumerate((1, 2, 3, 4, 5, 7)))

SENSORS: dict[str, SensorSpec] = {
    "LT05": SensorSpec(
        code="LT05",
        spacecraft="LANDSAT_5",
        sensor_id="TM",
        scene_prefix="LT5",
        l2_reflective=_TM_L2,
        l2_thermal="ST_B6",
        l1_bands=(
            L1Band("B1", "1", "reflective", _one(0), 0.76583, -2.28583, 1983.0),
            L1Band("B2", "2", "reflective", _one(1), 1.4482, -4.28819, 1796.0),
            L1Band("B3", "3", "reflective", _one(2), 1.0440, -2.21398, 1536.0),
            L1Band("B4", "4", "reflective", _one(3), 0.87602, -2.38602, 1031.0),
            L1Band("B5", "5", "reflective", _one(4), 0.12035, -0.49035, 220.0),
            L1Band("B6", "6", "thermal", radiance_mult=0.055375, radiance_add=1.18243, k1=607.76, k2=1260.56),
            L1Band("B7", "7", "reflective", _one(5), 0.065551, -0.21555, 83.44),
        ),
        l1_dtype="uint8",
    ),
    "LE07": SensorSpec(
        code="LE07",
        spacecraft="LANDSAT_7",
        sensor_id="ETM",
        scene_prefix="LE7",
        l2_reflective=_TM_L2,
        l2_thermal="ST_B6",
        l1_bands=(
            L1Band("B1", "1", "reflective", _one(0), 0.77874, -6.97874, 1970.0),
            L1Band("B2", "2", "reflective", _one(1), 0.79882, -7.19882, 1842.0),
            L1Band("B3", "3", "reflective", _one(2), 0.62165, -5.62165, 1547.0),
            L1Band("B4", "4", "reflective", _one(3), 0.96929, -6.06929, 1044.0),
            L1Band("B5", "5", "reflective", _one(4), 0.12622, -1.12622, 225.7),
            L1Band(
                "B6_VCID_1",
                "6_VCID_1",
                "thermal",
                radiance_mult=0.067087,
                radiance_add=-0.06709,
                k1=666.09,
                k2=1282.71,
            ),
            L1Band(
                "B6_VCID_2",
                "6_VCID_2",
                "thermal",
                radiance_mult=0.037205,
                radiance_add=3.16280,
                k1=666.09,
                k2=1282.71,
            ),
            L1Band("B7", "7", "reflective", _one(5), 0.043898, -0.39390, 82.06),
            L1Band("B8", "8", "pan", _PAN, 0.97559, -5.67559, 1369.0),
        ),
        l1_dtype="uint8",
    ),
    "LC08": SensorSpec(
        code="LC08",
        spacecraft="LANDSAT_8",
        sensor_id="OLI_TIRS",
        scene_prefix="LC8",
        l2_reflective=(("1", _COASTAL),) + tuple((str(n), _one(i)) for i, n in enumerate((2, 3, 4, 5, 6, 7))),
        l2_thermal="ST_B10",
        l1_bands=(
            L1Band("B1", "1", "reflective", _COASTAL, 1.2443e-02, -62.21446),
            L1Band("B2", "2", "reflective", _one(0), 1.2742e-02, -63.70837),
            L1Band("B3", "3", "reflective", _one(1), 1.1741e-02, -58.70671),
            L1Band("B4", "4", "reflective", _one(2), 9.9010e-03, -49.50481),
            L1Band("B5", "5", "reflective", _one(3), 6.0589e-03, -30.29447),
            L1Band("B6", "6", "reflective", _one(4), 1.5068e-03, -7.53396),
            L1Band("B7", "7", "reflective", _one(5), 5.0787e-04, -2.53935),
            L1Band("B8", "8", "pan", _PAN, 1.1205e-02, -56.02582),
            L1Band("B9", "9", "reflective", _CIRRUS, 2.3680e-03, -11.83977),
            L1Band("B10", "10", "thermal", _NOMIX, _TIRS_GAIN, 0.1, 0.0, 774.8853, 1321.0789),
            L1Band("B11", "11", "thermal", _NOMIX, _TIRS_GAIN, 0.1, 0.0, 480.8883, 1201.1442),
        ),
        l1_dtype="uint16",
        l1_reflectance=(2.0e-05, -0.1),
        cirrus_bits=True,
    ),
}
