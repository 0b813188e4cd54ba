"""Batch job: search USGS and download the matching Landsat scenes (verified, resumable).

Usage::

    python pipelines/fetch_scenes.py {search,download} [--config FETCH.toml] [filters ...] [--out DIR]

The config file (table ``[fetch]`` or top level) holds the fields of
:class:`landcover.fetch.job.FetchConfig`; command-line flags override it and the
embedded defaults fill the rest. Credentials (M2M route) come from
``$LANDCOVER_USGS_USERNAME``/``$LANDCOVER_USGS_TOKEN`` or ``~/.netrc``. Errors print one
line and exit 1; a rerun skips scenes already complete in ``OUT/manifest.json``.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from landcover.cli import run_job
    from landcover.cli.fetch import register_actions

    parser = argparse.ArgumentParser(description="Search and download Landsat scenes from USGS.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    register_actions(parser.add_subparsers(dest="action", required=True, metavar="{search,download}"))
    args = parser.parse_args(argv)
    return run_job("fetch_scenes", lambda: args.func(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
