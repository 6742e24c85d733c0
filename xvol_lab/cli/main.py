"""Entry point: builds the parser from the command modules and turns bad input into exit code 2.

Only the command being run imports its module (and with it torch, Lightning, Optuna): the other
commands are listed by name and help line alone, so `lab.py --help` answers without importing torch.
`lab.py`, `python -m xvol_lab` and the `xvol-lab` console script all call `main`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Collection, Sequence

from xvol_lab.allocator import keep_freed_memory
from xvol_lab.cli.args import split_set_lists
from xvol_lab.errors import ConfigError
from xvol_lab.quiet import log_to_stderr, quiet_lightning

log = logging.getLogger("xvol_lab")

# Command groups, in `--help` order, with their help lines. Each module xvol_lab/cli/<name>.py defines
# `add_parser(subparsers)` (the same help line); the parser it adds sets `func(args) -> int`.
COMMANDS = {
    "train": "train one model from a config and a spec",
    "study": "architecture searches (Optuna) from studies/*.yaml",
    "predict": "run an exported model on images",
    "data": "make synthetic datasets, count images",
    "bench": "run a benchmark (writes its section of BENCHMARKS.md)",
}


def build_parser(full: Collection[str] = tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The `lab.py` parser; the commands in `full` get their own parsers (their modules are imported),
    the others only their name and help line."""
    parser = argparse.ArgumentParser(
        prog="lab.py", description="xvol_lab: where does attention belong in a CNN?")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_line in COMMANDS.items():
        if name in full:
            importlib.import_module(f"xvol_lab.cli.{name}").add_parser(sub)
        else:
            sub.add_parser(name, help=help_line)
    return parser


def chosen_command(argv: Sequence[str]) -> str | None:
    """The command `argv` runs: its first word that is not an option (None: none, e.g. `--help`)."""
    words = [word for word in argv if not word.startswith("-")]
    return words[0] if words else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run `lab.py`; returns the process exit code."""
    argv = split_set_lists(sys.argv[1:] if argv is None else argv)
    parser = build_parser(full={chosen_command(argv)} & set(COMMANDS))
    args = parser.parse_args(argv)
    log_to_stderr(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    keep_freed_memory()
    quiet_lightning()
    try:
        return int(args.func(args) or 0)
    except ConfigError as err:
        for line in str(err).splitlines():  # one line per problem (a resume lists each changed key)
            print(f"lab.py: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lab.py: interrupted", file=sys.stderr)
        return 130
