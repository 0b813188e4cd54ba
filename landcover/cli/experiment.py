"""``landcover experiment run FILE``: an experiment file, end to end (fetch -> cubes -> compare -> report)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._types import DEVICE_HELP, device


def register(sub: Any) -> None:
    p = sub.add_parser(
        "experiment",
        help="run an experiment file (experiments/*.toml): fetch -> cubes -> compare -> report",
        description="Experiments as files: see landcover.experiments for the TOML format.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="{run,check}")
    run_p = actions.add_parser("run", help="run the experiment's steps")
    run_p.add_argument("file", type=Path, help="experiment TOML file")
    run_p.add_argument(
        "--steps",
        nargs="+",
        choices=["fetch", "cubes", "compare", "report"],
        default=None,
        help="steps to run (default all; later steps reuse earlier outputs under the experiment's out)",
    )
    run_p.add_argument("--m2m-url", default=None, help="USGS M2M API base URL (a mirror or test server)")
    run_p.add_argument("--stac-url", default=None, help="STAC API URL")
    run_p.add_argument(
        "--device",
        type=device,
        default=None,
        metavar="DEVICE",
        help=f"{DEVICE_HELP} (default: the experiment file's)",
    )
    run_p.set_defaults(func=run)
    check_p = actions.add_parser("check", help="parse and check the file; print what it would run")
    check_p.add_argument("file", type=Path, help="experiment TOML file")
    check_p.set_defaults(func=check)


def run(args: argparse.Namespace) -> int:
    from ..experiments import STEPS, load_experiment, run_experiment
    from .fetch import credentials_for

    exp = load_experiment(args.file)
    report = run_experiment(
        exp,
        credentials=credentials_for,
        steps=tuple(args.steps) if args.steps else STEPS,
        fetch_overrides={"m2m_url": args.m2m_url, "stac_url": args.stac_url},
        compare_overrides={"device": args.device},
        progress=not args.quiet,
    )
    if report is not None:
        print(report)
    return 0


def check(args: argparse.Namespace) -> int:
    from ..experiments import load_experiment

    exp = load_experiment(args.file)
    print(f"experiment {exp.name}: output {exp.out}")
    for e in exp.epochs:
        months = list(e.months)
        print(f"  epoch {e.name}: {e.start}..{e.end} months {months} CORINE {e.corine} ({e.clc_edition})")
    for r in exp.regions:
        held = " (held out: test)" if r.name in exp.holdout else ""
        print(f"  region {r.name} [{r.country}]: path/rows {list(r.path_rows)} bbox {r.bbox}{held}")
    return 0
