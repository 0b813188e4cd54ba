"""Batch job: run an experiment file end to end (fetch -> cubes -> compare -> report).

Usage: python pipelines/experiment.py experiments/phase1-europe-tm.toml [--steps ...] [--m2m-url URL]
"""

import sys

from landcover.cli import main

if __name__ == "__main__":
    sys.exit(main(["experiment", "run", *sys.argv[1:]]))
