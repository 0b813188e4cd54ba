"""Batch job: train one model on cubes (same options as ``landcover train``).

Usage: python pipelines/train.py CUBE [...] --model native --out runs/native [--config train.toml]
"""

import sys

from landcover.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
