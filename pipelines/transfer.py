"""Batch job: the phase-2 transfer experiment from a TOML/YAML config.

Usage::

    python pipelines/transfer.py [CONFIG.toml] [--checkpoint PATH] [--cube STORE ...] [--out DIR]

The config (table ``[transfer]`` or top level) has the fields of
:class:`landcover.transfer.TransferConfig`; command-line values override it; embedded
defaults fill the rest. Errors are printed as one line and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from landcover.cli import run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Phase-2 transfer experiment (report in --out).")
    parser.add_argument("config", nargs="?", help="TOML/YAML/JSON config file")
    parser.add_argument("--checkpoint")
    parser.add_argument("--cube", action="append", dest="cubes")
    parser.add_argument("--out")
    parser.add_argument("--device")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)

    def body() -> int:
        from landcover.config import load_config
        from landcover.transfer import TransferConfig, run_transfer, write_report

        overrides = {
            "checkpoint": args.checkpoint,
            "cubes": tuple(args.cubes) if args.cubes else None,
            "out": args.out,
            "device": args.device,
        }
        cfg = load_config(TransferConfig, args.config, section="transfer", overrides=overrides)
        if args.config:
            base = Path(args.config).parent

            def resolve(p: str) -> str:
                return p if not p or Path(p).is_absolute() else str(base / p)

            from dataclasses import replace

            cfg = replace(
                cfg,
                cubes=tuple(resolve(c) for c in cfg.cubes),
                checkpoint=resolve(cfg.checkpoint),
                out=resolve(cfg.out),
            )
        result = run_transfer(cfg)
        print(f"report: {write_report(result)}")
        return 0

    return run_job("transfer", body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
