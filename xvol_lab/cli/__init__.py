"""The `lab.py` command line: one module per command group, each with `add_parser(subparsers)`."""

from xvol_lab.cli.main import main

__all__ = ["main"]
