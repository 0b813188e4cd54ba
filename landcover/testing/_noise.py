"""Counter-based (hash) noise: deterministic functions of integer lattice coordinates.

Everything here is a pure function of coordinates and a key, so any block of a
field can be evaluated on its own and neighbouring blocks agree exactly. That is
what lets the generator stream a 7000 x 7000 scene in row strips.
"""

from __future__ import annotations

import numpy as np

_U64 = np.uint64
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def key(*parts: int) -> int:
    """Combine integers (seed, salt, ...) into one 64-bit key."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = _mix_int((h ^ (int(p) & _MASK)) * _GOLDEN & _MASK)
    return h


def _mix_int(h: int) -> int:
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _MASK
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _MASK
    h ^= h >> 31
    return h


def _mix(h: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    h = h ^ (h >> _U64(30))
    h = h * _U64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> _U64(27))
    h = h * _U64(0x94D049BB133111EB)
    out: np.ndarray = h ^ (h >> _U64(31))
    return out


def hash2(ix: np.ndarray, iy: np.ndarray, k: int) -> np.ndarray:
    """64-bit hash of integer lattice coordinates ``(ix, iy)`` under key ``k``."""
    ux = np.asarray(ix, dtype=np.int64).view(np.uint64)
    uy = np.asarray(iy, dtype=np.int64).view(np.uint64)
    h = _mix(ux + _U64(k))
    return _mix(h ^ (uy * _U64(_GOLDEN)))


def unit(h: np.ndarray) -> np.ndarray:
    """Map 64-bit hashes to float64 uniform in ``[0, 1)``."""
    return (h >> _U64(11)).astype(np.float64) * (1.0 / (1 << 53))


def rehash(h: np.ndarray, salt: int) -> np.ndarray:
    """A new, independent hash derived from ``h``."""
    return _mix(np.asarray(h ^ _U64(key(salt))))


def _smooth(t: np.ndarray) -> np.ndarray:
    out: np.ndarray = t * t * (3.0 - 2.0 * t)
    return out


def value_noise(xs: np.ndarray, ys: np.ndarray, *, wavelength: float, k: int) -> np.ndarray:
    """Smooth value noise in ``[0, 1]`` on the regular grid ``ys x xs``.

    Parameters
    ----------
    xs, ys
        1-D float64 coordinates of the columns and rows (any units).
    wavelength
        Lattice spacing in the same units.
    k
        Key (see :func:`key`).

    Returns
    -------
    numpy.ndarray
        float32 ``(len(ys), len(xs))``.
    """
    u = np.asarray(xs, dtype=np.float64) / wavelength
    v = np.asarray(ys, dtype=np.float64) / wavelength
    iu = np.floor(u).astype(np.int64)
    iv = np.floor(v).astype(np.int64)
    tu = _smooth(u - iu).astype(np.float32)
    tv = _smooth(v - iv).astype(np.float32)
    u0, v0 = int(iu.min()), int(iv.min())
    lat_u = np.arange(u0, int(iu.max()) + 2, dtype=np.int64)
    lat_v = np.arange(v0, int(iv.max()) + 2, dtype=np.int64)
    lattice = unit(hash2(lat_u[None, :], lat_v[:, None], k)).astype(np.float32)
    cu = iu - u0
    # interpolate along x for each lattice row, then along y
    along_x = lattice[:, cu] * (1.0 - tu) + lattice[:, cu + 1] * tu
    cv = iv - v0
    out: np.ndarray = along_x[cv] * (1.0 - tv)[:, None] + along_x[cv + 1] * tv[:, None]
    return out


def fbm(xs: np.ndarray, ys: np.ndarray, *, wavelength: float, octaves: int, k: int) -> np.ndarray:
    """Fractal sum of :func:`value_noise` octaves, rescaled to ``[0, 1]`` (float32)."""
    total = np.zeros((len(ys), len(xs)), dtype=np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        total += np.float32(amp) * value_noise(xs, ys, wavelength=wavelength / 2**o, k=key(k, o))
        norm += amp
        amp *= 0.5
    total /= np.float32(norm)
    return total


def worley(x: np.ndarray, y: np.ndarray, *, cell: float, k: int) -> np.ndarray:
    """Hash of the nearest jittered feature point (one per lattice cell): Voronoi patch ids.

    Parameters
    ----------
    x, y
        float64 arrays of the same shape (coordinates, any units).
    cell
        Lattice spacing; patches are about this size.
    k
        Key.

    Returns
    -------
    numpy.ndarray
        uint64 array of the same shape: one hash per patch (equal within a patch).
    """
    cx = np.floor(x / cell).astype(np.int64)
    cy = np.floor(y / cell).astype(np.int64)
    best = np.full(x.shape, np.inf)
    best_x = cx.copy()
    best_y = cy.copy()
    for dj in (-1, 0, 1):
        for di in (-1, 0, 1):
            ix = cx + di
            iy = cy + dj
            h = hash2(ix, iy, k)
            px = (ix + unit(h)) * cell
            py = (iy + unit(rehash(h, 1))) * cell
            d = (x - px) ** 2 + (y - py) ** 2
            closer = d < best
            best = np.where(closer, d, best)
            best_x = np.where(closer, ix, best_x)
            best_y = np.where(closer, iy, best_y)
    return hash2(best_x, best_y, key(k, 99))
