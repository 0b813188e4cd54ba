"""The ``--system-malloc`` option the benchmarks share (one definition, not a copy per script).

By default a benchmark keeps freed memory for reuse, in its process and the processes it
starts (:func:`landcover.allocator.keep_freed_memory`, what the ``landcover`` command does), so
that its baselines run as users' jobs do; ``--system-malloc`` leaves the C allocator as
configured.
"""

from __future__ import annotations

import argparse


def add_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--system-malloc`` to ``parser``."""
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="leave the C allocator as configured (default: freed memory kept for reuse, as the CLI does)",
    )


def apply(args: argparse.Namespace) -> bool:
    """Keep freed memory unless ``--system-malloc``; True if kept (call before threads or workers start)."""
    from landcover.allocator import keep_freed_memory

    return not args.system_malloc and keep_freed_memory()
