"""Batch job: phase-1 comparison (native vs ImageNet-RGB) on cubes, with a report.

Usage: python pipelines/compare.py [--config compare.toml] [CUBE ...] [--scheduler ADDRESS] [...]
Same options as ``landcover compare``; embedded defaults in ``landcover.experiment.CompareConfig``.
Exit status 0 on success, 1 with a one-line error on bad input.
"""

import sys

from landcover.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
