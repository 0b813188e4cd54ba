"""Benchmark open_scene: lazy decoded read of a Collection 2 L2SP product vs plain rasterio.

Usage: .venv/bin/python bench/landsat_open.py [--size N] [--chunk C] [--keep DIR]

Writes a random L2SP-like product (6 SR bands + ST_B6 + QA_PIXEL, tiled DEFLATE GeoTIFFs,
written in row strips) of N x N pixels, then times in the same run:

* baseline: rasterio reads every band file whole and decodes it with numpy (``DN*s+o``, NaN at 0),
* open_scene: plan (headers), then a streamed reduction (per-band mean) over the dask graph,
  from the directory and from the unextracted ``.tar`` bundle,

and prints seconds, MB/s of decoded float32 and the peak-RSS increase of each step.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

PID = "LT05_L2SP_193024_20050516_20200901_02_T1"
BANDS = ["1", "2", "3", "4", "5", "7"]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_product(root: Path, size: int) -> Path:
    d = root / PID
    d.mkdir(parents=True)
    left, top = 300015.0, 5700015.0
    transform = Affine(30.0, 0.0, left, 0.0, -30.0, top)
    prof = dict(
        driver="GTiff",
        height=size,
        width=size,
        count=1,
        dtype="uint16",
        crs="EPSG:32632",
        transform=transform,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
    )
    rng = np.random.default_rng(0)
    suffixes = [f"SR_B{b}" for b in BANDS] + ["ST_B6", "QA_PIXEL"]
    for s in suffixes:
        with rasterio.open(d / f"{PID}_{s}.TIF", "w", nodata=None if s == "QA_PIXEL" else 0, **prof) as dst:
            for r in range(0, size, 512):
                h = min(512, size - r)
                if s == "QA_PIXEL":
                    data = rng.choice(np.array([5440, 5440, 5896, 1], "uint16"), (h, size))
                else:
                    data = rng.integers(7273, 43636, (h, size), dtype="uint16")
                dst.write(data, 1, window=rasterio.windows.Window(0, r, size, h))
    names = "\n".join(
        [f'    FILE_NAME_BAND_{b} = "{PID}_SR_B{b}.TIF"' for b in BANDS]
        + [
            f'    FILE_NAME_BAND_ST_B6 = "{PID}_ST_B6.TIF"',
            f'    FILE_NAME_QUALITY_L1_PIXEL = "{PID}_QA_PIXEL.TIF"',
        ]
    )
    sr = "\n".join(
        f"    REFLECTANCE_MULT_BAND_{b} = 2.75e-05\n    REFLECTANCE_ADD_BAND_{b} = -0.2" for b in BANDS
    )
    (d / f"{PID}_MTL.txt").write_text(f"""GROUP = LANDSAT_METADATA_FILE
  GROUP = PRODUCT_CONTENTS
    LANDSAT_PRODUCT_ID = "{PID}"
    PROCESSING_LEVEL = "L2SP"
{names}
  END_GROUP = PRODUCT_CONTENTS
  GROUP = IMAGE_ATTRIBUTES
    SPACECRAFT_ID = "LANDSAT_5"
    SENSOR_ID = "TM"
    WRS_PATH = 193
    WRS_ROW = 024
    DATE_ACQUIRED = 2005-05-16
    SCENE_CENTER_TIME = "09:50:14.7670750Z"
    SUN_AZIMUTH = 148.7
    SUN_ELEVATION = 54.3
  END_GROUP = IMAGE_ATTRIBUTES
  GROUP = PROJECTION_ATTRIBUTES
    MAP_PROJECTION = "UTM"
    UTM_ZONE = 32
    GRID_CELL_SIZE_REFLECTIVE = 30.00
    REFLECTIVE_LINES = {size}
    REFLECTIVE_SAMPLES = {size}
    CORNER_UL_PROJECTION_X_PRODUCT = {left + 15}
    CORNER_UL_PROJECTION_Y_PRODUCT = {top - 15}
    CORNER_LR_PROJECTION_X_PRODUCT = {left + 30 * size - 15}
    CORNER_LR_PROJECTION_Y_PRODUCT = {top - 30 * size + 15}
  END_GROUP = PROJECTION_ATTRIBUTES
  GROUP = LEVEL2_SURFACE_REFLECTANCE_PARAMETERS
{sr}
  END_GROUP = LEVEL2_SURFACE_REFLECTANCE_PARAMETERS
  GROUP = LEVEL2_SURFACE_TEMPERATURE_PARAMETERS
    TEMPERATURE_MULT_BAND_ST_B6 = 0.00341802
    TEMPERATURE_ADD_BAND_ST_B6 = 149.0
  END_GROUP = LEVEL2_SURFACE_TEMPERATURE_PARAMETERS
END_GROUP = LANDSAT_METADATA_FILE
END
""")
    return d


def baseline(d: Path) -> np.ndarray:
    means = []
    for b in BANDS:
        with rasterio.open(d / f"{PID}_SR_B{b}.TIF") as src:
            dn = src.read(1)
        v = dn.astype("float32") * np.float32(2.75e-05) - np.float32(0.2)
        v[dn == 0] = np.nan
        means.append(np.nanmean(v))
        del dn, v
    return np.array(means)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--keep", type=Path, default=None, help="write the product here and keep it")
    args = ap.parse_args()
    import dask

    from landcover.landsat import open_scene, plan_scene

    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-landsat-"))
    try:
        t = time.perf_counter()
        d = write_product(root, args.size)
        print(f"wrote {args.size}x{args.size} product in {time.perf_counter() - t:.1f} s")
        bundle = root / f"{PID}.tar"
        with tarfile.open(bundle, "w") as tar:
            for f in sorted(d.iterdir()):
                tar.add(f, arcname=f.name)
        mb = 6 * args.size * args.size * 4 / 1e6  # decoded float32 reflectance
        rows = []

        t = time.perf_counter()
        plan = plan_scene(d)
        rows.append(("plan_scene (headers only)", time.perf_counter() - t, 0.0))
        results = []
        _ = open_scene(d).reflectance[0, :8, :8].values  # warm-up: imports, thread pool
        # streamed reads first: peak RSS only grows, so the whole-band baseline goes last
        for label, src in (("open_scene directory", d), ("open_scene .tar bundle", bundle)):
            m0 = peak_mb()
            t = time.perf_counter()
            ds = open_scene(src, chunks=args.chunk)
            with dask.config.set(scheduler="threads"):
                results.append(ds.reflectance.mean(["y", "x"]).values)
            rows.append((label, time.perf_counter() - t, peak_mb() - m0))
        m0 = peak_mb()
        t = time.perf_counter()
        ref = baseline(d)
        tb = time.perf_counter() - t
        rows.append(("rasterio whole-band baseline", tb, peak_mb() - m0))
        for got in results:
            np.testing.assert_allclose(got, ref, rtol=1e-4)
        del plan
        print(f"{'step':32s} {'seconds':>8s} {'MB/s':>8s} {'x baseline':>10s} {'peak RSS +MB':>13s}")
        for label, sec, mem in rows:
            print(f"{label:32s} {sec:8.2f} {mb / sec:8.0f} {sec / tb:10.2f} {mem:13.0f}")
        print(
            f"(decoded reflectance = {mb:.0f} MB; chunk {args.chunk}; peak RSS is monotone, "
            "so each row shows growth beyond the earlier peaks)"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
