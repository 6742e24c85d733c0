"""`lab.py bench NAME [args]`: run a benchmark script of benchmarks/ (it writes its BENCHMARKS.md section)."""

from __future__ import annotations

import argparse
import subprocess
import sys

from xvol_lab.errors import ConfigError
from xvol_lab.paths import REPO_ROOT

BENCHMARKS_DIR = REPO_ROOT / "benchmarks"


def available() -> list[str]:
    """Names of the benchmark scripts (benchmarks/<name>.py, helpers starting with _ left out)."""
    return sorted(p.stem for p in BENCHMARKS_DIR.glob("*.py") if not p.name.startswith("_"))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `bench`."""
    p = subparsers.add_parser("bench", help="run a benchmark (writes its section of BENCHMARKS.md)",
                              description="Run benchmarks/NAME.py; arguments after NAME go to the script "
                                          "(e.g. --quick, --device cuda).")
    p.add_argument("name", metavar="NAME", help=f"one of: {', '.join(available()) or '(none found)'}")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark script")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name not in available():
        raise ConfigError(f"bench {args.name!r}: no {BENCHMARKS_DIR / (args.name + '.py')}; expected one of "
                          f"{', '.join(available()) or 'none (benchmarks/ is in the source checkout only)'}")
    return subprocess.call([sys.executable, str(BENCHMARKS_DIR / f"{args.name}.py"), *args.args])
