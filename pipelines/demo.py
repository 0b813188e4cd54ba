"""Batch job: the whole pipeline on embedded defaults (what ``make demo`` runs).

Usage: python pipelines/demo.py [--out DIR] [--config demo.toml] [--size N] [--epochs N]
"""

import sys

from landcover.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
