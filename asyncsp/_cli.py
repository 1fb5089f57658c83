"""The ``asyncsp`` command line (for now: the offline demo)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from ._demo import run_demo

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 finding/failure, 2 usage)."""
    parser = argparse.ArgumentParser(prog="asyncsp", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="an offline tour on loopback servers")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return asyncio.run(run_demo(sys.stdout))
    return 2
