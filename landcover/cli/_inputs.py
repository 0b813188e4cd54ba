"""Inputs shared by commands: scene inputs beyond product paths, and the training commands' cube check.

Scene inputs serve ``scene info``, ``cube build/batch`` and ``predict``; :func:`check_cubes` serves
``train`` and ``compare`` (before any cluster starts).

``--stack FILE`` (repeatable) with ``--bands``/``--scale``/``--offset``/``--sensor``/``--date``/
``--qa``/``--nodata`` reads any multi-band raster (see :mod:`landcover.stack`); the options
apply to every ``--stack`` file (a file with a sidecar needs none of them).

``--stac ITEMS`` (repeatable) reads the COG assets of STAC items (an Item or ItemCollection
JSON file or URL, e.g. written by ``landcover fetch search --source stac --items FILE``) over
HTTP range requests (see :mod:`landcover.stac_scene`); one time step per product.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = [
    "add_stack_arguments",
    "add_stac_arguments",
    "stack_plans",
    "stack_spec",
    "stac_plans",
    "check_cubes",
]


def check_cubes(cubes: Any) -> None:
    """Refuse before any work starts (or a cluster): no cubes, or one that is not a complete cube.

    Raises
    ------
    ConfigError
        When ``cubes`` is empty.
    InputFileError
        Naming the first path that is missing or not a complete landcover cube.
    """
    from ..datasets import inspect_cube
    from ..errors import ConfigError

    if not cubes:
        raise ConfigError("no cubes given (build one with `landcover cube build`)")
    for cube in cubes:
        inspect_cube(cube)


def add_stack_arguments(p: argparse.ArgumentParser, *, many: bool = True, with_file: bool = True) -> None:
    """Add the ``--stack`` options (a raster stack instead of a Landsat product) to ``p``.

    ``with_file=False``: only the options that describe a stack given elsewhere (``predict --scene``).
    """
    g = p.add_argument_group(
        "raster stacks",
        "any multi-band raster (Earth Engine export, other chains) instead of a USGS product; "
        "the same keys may sit in a sidecar FILE.toml/.yaml next to the file",
    )
    if with_file:
        g.add_argument(
            "--stack", action="append" if many else "store", default=None, metavar="FILE",
            help="a multi-band raster" + (" (repeat for several time steps)" if many else ""),
        )  # fmt: skip
    g.add_argument(
        "--bands", default=None, metavar="NAMES",
        help="band of every raster band in order: blue,green,red,nir,swir1,swir2[,thermal] "
        "('-' skips one; default: the band descriptions, e.g. B2..B7 of OLI)",
    )  # fmt: skip
    g.add_argument("--scale", type=float, default=None, metavar="S", help="reflectance = DN * S + O")
    g.add_argument("--offset", type=float, default=None, metavar="O", help="see --scale")
    g.add_argument("--sensor", default=None, metavar="TM|ETM|OLI", help="sensor of the stack")
    g.add_argument("--date", default=None, metavar="YYYY-MM-DD", help="acquisition date (UTC)")
    g.add_argument("--qa", default=None, metavar="FILE", help="Collection 2 QA_PIXEL raster on the same grid")
    g.add_argument("--nodata", type=float, default=None, metavar="V", help="fill value (default: the file's)")


def stack_spec(args: argparse.Namespace) -> Any:
    """The :class:`~landcover.stack.StackSpec` of the command line, or None when no option was given."""
    from ..stack import StackSpec

    keys = ("bands", "scale", "offset", "sensor", "date", "qa", "nodata")
    given: dict[str, Any] = {k: getattr(args, k, None) for k in keys}
    if all(v is None for v in given.values()):
        return None
    return StackSpec(**given)


def stack_plans(args: argparse.Namespace) -> list[Any]:
    """One ``ScenePlan`` per ``--stack`` file (the options, else each file's sidecar)."""
    from ..errors import ConfigError
    from ..stack import plan_stack

    files = getattr(args, "stack", None)
    if files is None:
        files = []
    elif isinstance(files, str):
        files = [files]
    spec = stack_spec(args)
    if spec is not None and not files:
        raise ConfigError("--bands/--scale/--offset/--sensor/--date/--qa/--nodata describe a --stack FILE")
    plans = []
    for f in files:
        plan = plan_stack(f, spec)
        for w in plan.warnings:
            print(f"landcover: warning: {w}", file=sys.stderr)
        plans.append(plan)
    return plans


def add_stac_arguments(p: argparse.ArgumentParser, *, sign: bool = True) -> None:
    """Add ``--stac ITEMS`` (and ``--sign``, ``--stac-href``) to ``p``."""
    g = p.add_argument_group(
        "STAC items", "Landsat Collection 2 Level-2 scenes read lazily from COGs over HTTP"
    )
    g.add_argument(
        "--stac", action="append", default=None, metavar="ITEMS",
        help="STAC Item / ItemCollection JSON file or URL (repeat); SR and ST items of a product are merged",
    )  # fmt: skip
    if sign:
        g.add_argument(
            "--sign", default=None, metavar="NAME",
            help="sign asset URLs: planetary-computer (needs the planetary-computer package)",
        )  # fmt: skip
    g.add_argument(
        "--stac-href", choices=("href", "s3"), default="href",
        help="read the assets' https hrefs (default) or their alternate s3:// hrefs (requester-pays: "
        "AWS credentials and AWS_REQUEST_PAYER=requester must be set for GDAL)",
    )  # fmt: skip


def stac_plans(args: argparse.Namespace) -> list[Any]:
    """One ``ScenePlan`` per product in the ``--stac`` items."""
    from ..stac_scene import plan_stac_scenes

    refs = getattr(args, "stac", None) or []
    if not refs:
        return []
    return plan_stac_scenes(refs, sign=getattr(args, "sign", None), href=getattr(args, "stac_href", "href"))
