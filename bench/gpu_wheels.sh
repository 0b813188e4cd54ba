#!/usr/bin/env bash
# Wheels that bench/gpu_check.py needs on the lent GPU machine, fetched HERE (that machine has no
# network; its python3 is 3.12 with torch, torchvision, numpy, xarray, pandas, tqdm, pyyaml, psutil,
# but not zarr, dask, rasterio, pyproj, rioxarray; xarray, toolz and fsspec are pinned to ours). Versions
# from constraints.txt; the 2026-12-04 run used exactly this set (~56 MB).
#
#   bash bench/gpu_wheels.sh            # -> .whl/ (git-ignored through .git/info/exclude), ~54 MB; the repo travels too: 64 MiB in all
#
# Then ONE device run, carrying .whl (see README "GPU check"):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 &&
#   python3 bench/gpu_check.py --workers 8 2>&1 | tee $OUT/gpu_check.log
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
pkgs=(zarr numcodecs donfig google-crc32c dask partd locket rasterio affine click-plugins cligj pyproj
  rioxarray xbatcher xarray lazy-importer tblib toolz fsspec)
pins=()
for p in "${pkgs[@]}"; do
  pin=$(grep -i -E "^${p}==" constraints.txt || true)
  pins+=("${pin:-$p}")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
du -sh .whl
