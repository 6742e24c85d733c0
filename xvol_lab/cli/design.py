"""`lab.py study power|calibrate`: what a study's budget can detect, and where its baseline sits.

- power: from a study's storage, per row of its ablation (controls included) the spread of the
  paired differences to the baseline, the minimum detectable difference now, and the seeds that
  would detect a difference of --effect (80% power, two-sided alpha 0.05 at Holm's first step);
- calibrate: the baseline alone over N seeds at several budgets (`xvol_lab.study.calibrate`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import optuna
import pandas as pd

from xvol_lab.cli.args import positive_int
from xvol_lab.cli.storage_args import add_storage_arguments, storage_argument
from xvol_lab.errors import ConfigError
from xvol_lab.markdown import markdown_table
from xvol_lab.study import stats
from xvol_lab.study.config import load_study_config
from xvol_lab.study.report import ablation_table, load_study_data
from xvol_lab.study.report.columns import CONFIGURATION
from xvol_lab.study.report.tables import objective_column

POWER_HELP = """\
For each row of study NAME's ablation (its storage under --runs), compared with the all-conv
baseline on --metric (default: the first objective): the pairs of seeds, the standard deviation
of the paired differences, the minimum detectable difference (MDE) with those pairs, and the seeds
that would detect a difference of D (in the metric's units) with 80% power at two-sided alpha 0.05
after Holm over the table's rows (its first step, 0.05 / rows).
"""
CALIBRATE_HELP = """\
Train study NAME's all-conv baseline alone over N seeds (default: the most the study trains) at
each budget in epochs (default: the study's), and print where it sits on the primary metric: mean,
sd, min, max, floor (chance) and ceiling, its position in the metric's range, and whether the runs
split into two clusters. Runs go to <runs>/<study>/calibrate/epochs_<E>/seed_<s>/ (rerun to resume);
the table also to <runs>/<study>/calibrate/calibration.md and .csv. Runs train as many at once as
the study's trials would (on the CPU with base.trainer.threads set: cores / threads), else one at
a time.
"""


def add_design_commands(study_subparsers: argparse._SubParsersAction) -> None:
    """Add `power` and `calibrate` to the `lab.py study` sub-commands."""
    power = study_subparsers.add_parser("power", description=POWER_HELP, help="seeds needed to detect an effect",
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
    power.add_argument("name", metavar="NAME", help="a study in studies/ or a path to a study YAML file")
    power.add_argument("--effect", type=float, required=True, metavar="D",
                       help="the difference to detect, in the metric's units (> 0)")
    power.add_argument("--metric", metavar="M", help="an objective of the study (default: the first)")
    add_storage_arguments(power)
    power.add_argument("--runs", type=Path, default=Path("runs"), metavar="DIR", help="runs folder (default: runs)")
    power.set_defaults(func=cmd_power)

    cal = study_subparsers.add_parser("calibrate", description=CALIBRATE_HELP,
                                      help="the baseline alone over seeds and budgets",
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    cal.add_argument("name", metavar="NAME", help="a study in studies/ or a path to a study YAML file")
    cal.add_argument("--seeds", type=positive_int, metavar="N", help="seeds per budget")
    cal.add_argument("--budgets", type=positive_int, nargs="+", metavar="E", help="budgets in epochs")
    cal.add_argument("--runs", type=Path, default=Path("runs"), metavar="DIR", help="runs folder (default: runs)")
    cal.set_defaults(func=cmd_calibrate)


def power_table(table: pd.DataFrame, label: str, effect: float) -> pd.DataFrame:
    """Per row other than the baseline: runs, sd of the paired differences, MDE now, and the seeds
    needed to detect `effect` at the Holm first step over the tested rows."""
    rows = table[table[f"{label} p_seq"].notna()]
    level = stats.ALPHA / max(len(rows), 1)
    needed = [stats.seeds_needed(sd, effect, level) for sd in rows[f"{label} diff_std"]]
    return pd.DataFrame({
        CONFIGURATION: rows[CONFIGURATION], "runs": rows[f"{label} n"].astype(int),
        "sd of paired differences": rows[f"{label} diff_std"], "MDE now": rows[f"{label} mde"],
        f"seeds to detect {effect:g}": ["more than 100000" if n is None else str(n) for n in needed],
    }).reset_index(drop=True)


def cmd_power(args: argparse.Namespace) -> int:
    """Print the power table."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name, config = load_study_config(args.name)
    metric = args.metric or config.metric_names[0]
    if metric not in config.metric_names:
        raise ConfigError(f"--metric: got {metric!r}, expected an objective of {name}: "
                          f"{', '.join(config.metric_names)}")
    if not math.isfinite(args.effect) or args.effect <= 0:
        raise ConfigError(f"--effect: got {args.effect:g}, expected a positive difference in {metric}'s units")
    data = load_study_data(args.name, runs=args.runs, storage_url=storage_argument(args))
    table = ablation_table(data)
    label = objective_column(metric)
    if table.empty or "baseline" not in table.attrs:
        raise ConfigError(f"study {name}: no complete all-conv baseline with paired rows yet")
    print(f"{name}: {metric}, detect {args.effect:g} with 80% power at two-sided alpha 0.05 after Holm")
    print(markdown_table(power_table(table, label, args.effect)))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Run (or read back) the calibration and print its table."""
    from xvol_lab.study.calibrate import calibrate, calibration_markdown  # imports Lightning

    name, config = load_study_config(args.name)
    budgets = args.budgets or [config.budget.epochs]
    table = calibrate(name, config, runs=args.runs, seeds=args.seeds or config.budget.max_seeds, budgets=budgets)
    print(calibration_markdown(name, config, table), end="")
    return 0
