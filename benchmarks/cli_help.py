"""How fast the command line answers: writes the "Command-line help" section of BENCHMARKS.md.

    python benchmarks/cli_help.py [--quick] [--no-write]

Wall time of `python lab.py --help` (median of 5 fresh processes), against a process that builds
the full parser (every command module imported, with torch, Lightning and Optuna: what `--help`
cost before the commands were imported lazily). Also checked: whether `--help` imports torch.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _report import device_name, markdown_table, smoke_args, write_section  # noqa: E402

COMMANDS = {
    "python lab.py --help": [sys.executable, "lab.py", "--help"],
    "full parser (all command modules imported)": [
        sys.executable, "-c", "from xvol_lab.cli.main import build_parser; build_parser().format_help()"],
}
TORCH_CHECK = [sys.executable, "-c", "import sys; from xvol_lab.cli import main\n"
               "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
               "print('torch' in sys.modules, file=sys.stderr)"]


def wall_seconds(command: list[str], runs: int) -> list[float]:
    """Wall seconds of `runs` fresh processes running `command` from the repository root."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    args = smoke_args(__doc__, "one run each (a smoke run)")
    runs = 1 if args.quick else 5
    rows = []
    for name, command in COMMANDS.items():
        times = wall_seconds(command, runs)
        rows.append([name, f"{statistics.median(times):.3f}", f"{min(times):.3f}", f"{max(times):.3f}"])
    imports = subprocess.run(TORCH_CHECK, cwd=ROOT, check=True, capture_output=True, text=True)
    torch_imported = imports.stderr.strip().splitlines()[-1] == "True"
    body = (f"Machine: {device_name()}. Wall seconds of fresh processes, median (min, max) of {runs}.\n\n"
            + markdown_table(["command", "median s", "min s", "max s"], rows)
            + f"\n\n`lab.py --help` imports torch: {'yes' if torch_imported else 'no'}.\n")
    print(body)
    if not args.no_write:
        write_section("Command-line help (benchmarks/cli_help.py, cpu)", body)


if __name__ == "__main__":
    main()
