"""WRS-2 geometry: the nominal scene centre of a Landsat 4/5/7/8/9 path/row, and the path/row of a point.

The Worldwide Reference System 2 numbers the 233 orbits of a 16-day repeat cycle (paths)
and 248 scene centres along each orbit (rows). On the descending (daytime) half of an
orbit, row 60 lies on the equator and rows grow southwards; path 1 crosses the equator
at 64.60 deg W, and each next path lies 360/233 deg further west. The published orbit
parameters (inclination 98.2096 deg, 233 orbits in 16 days, 248 rows per orbit; the
constants of USGS's path/row <-> latitude/longitude converter) give a scene's nominal
centre on the WGS84 ellipsoid: the sub-satellite point at the row's orbital angle on a
circular orbit, with the Earth turning under it.

The nominal centre differs from a product's corner-derived centre by a few kilometres
(the orbit drifts inside its control band; products are north-up rectangles around the
scene): ``tests/test_wrs2.py`` checks it against the MTL corners and STAC footprints of
every real product in ``../shared/data/real``. Pure computation, no I/O; path/row text is
parsed by :func:`landcover.fetch.query.parse_path_row`.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["PATHS", "ROWS", "scene_centre", "path_row"]

PATHS: Final = 233
"""Orbits (paths) per 16-day cycle."""
ROWS: Final = 248
"""Scene centres (rows) per orbit."""
_DAYS: Final = 16
_INCLINATION: Final = math.radians(98.2096)
_PATH1_EQUATOR_LON: Final = math.radians(-64.60)
"""Longitude where path 1 crosses the equator going south (row 60)."""
_EQUATOR_ROW: Final = 60
_A: Final = 6378137.0  # WGS84 semi-major axis (m)
_B: Final = 6356752.314245  # WGS84 semi-minor axis (m)
_EARTH_PER_ORBIT: Final = _DAYS / PATHS
"""Earth rotation (in turns) while the satellite makes one orbit: 16 days / 233 orbits."""


def _wrap(lon: float) -> float:
    """Longitude in radians wrapped to [-pi, pi)."""
    return (lon + math.pi) % (2 * math.pi) - math.pi


def _orbit_offset(gc_lat: float, angle: float) -> float:
    """Longitude of the sub-satellite point relative to the node, on a non-rotating Earth."""
    return math.atan2(math.tan(gc_lat) / math.tan(_INCLINATION), math.cos(angle) / math.cos(gc_lat))


def scene_centre(path: int, row: int) -> tuple[float, float]:
    """Nominal centre ``(latitude, longitude)`` in degrees (WGS84) of a WRS-2 descending path/row.

    Parameters
    ----------
    path
        1..233.
    row
        1..248 (60: the equator; 1..122 are the daytime rows a Landsat scene normally has).

    Examples
    --------
    >>> lat, lon = scene_centre(193, 24)   # Saxony, Germany
    >>> round(lat, 1), round(lon, 1)
    (51.7, 12.8)
    """
    if not 1 <= path <= PATHS or not 1 <= row <= ROWS:
        raise ValueError(f"WRS-2 path must be 1..{PATHS} and row 1..{ROWS}, got {path}/{row}")
    angle = (row - _EQUATOR_ROW) * 2 * math.pi / ROWS  # orbital angle past the descending node
    gc_lat = math.asin(-math.sin(angle) * math.sin(_INCLINATION))
    lat = math.atan(math.tan(gc_lat) * (_A / _B) ** 2)  # geocentric -> geodetic
    node = _PATH1_EQUATOR_LON - (path - 1) * 2 * math.pi / PATHS
    lon = node - _orbit_offset(gc_lat, angle) - angle * _EARTH_PER_ORBIT
    return math.degrees(lat), math.degrees(_wrap(lon))


def path_row(lat: float, lon: float) -> tuple[int, int]:
    """The descending WRS-2 path/row whose nominal centre is nearest to ``(lat, lon)`` (degrees).

    Latitudes beyond the orbit's reach (about 81.8 deg) are clamped to it.
    """
    limit = math.degrees(math.atan(math.tan(math.pi - _INCLINATION) * (_A / _B) ** 2)) - 1e-6
    phi = math.radians(max(-limit, min(limit, lat)))
    gc_lat = math.atan(math.tan(phi) * (_B / _A) ** 2)
    angle = math.asin(-math.sin(gc_lat) / math.sin(_INCLINATION))
    row = round(angle * ROWS / (2 * math.pi) + _EQUATOR_ROW)
    node = math.radians(lon) + _orbit_offset(gc_lat, angle) + angle * _EARTH_PER_ORBIT
    path = round(_wrap(_PATH1_EQUATOR_LON - node) % (2 * math.pi) * PATHS / (2 * math.pi)) + 1
    return (path - 1) % PATHS + 1, row
