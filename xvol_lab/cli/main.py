"""Entry point: builds the parser from the command modules and turns bad input into exit code 2."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from xvol_lab.allocator import keep_freed_memory
from xvol_lab.cli.args import split_set_lists
from xvol_lab.errors import ConfigError

log = logging.getLogger("xvol_lab")

# Command groups, in `--help` order. Each module defines `add_parser(subparsers)`; the parser it
# adds sets `func(args) -> int`.
COMMANDS = ("train", "study", "predict", "data", "bench")


def build_parser() -> argparse.ArgumentParser:
    """The full `lab.py` parser."""
    parser = argparse.ArgumentParser(
        prog="lab.py", description="xvol_lab: where does attention belong in a CNN?")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"xvol_lab.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `lab.py`; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(split_set_lists(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    keep_freed_memory()
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        for line in str(err).splitlines():  # one line per problem (a resume lists each changed key)
            print(f"lab.py: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lab.py: interrupted", file=sys.stderr)
        return 130
