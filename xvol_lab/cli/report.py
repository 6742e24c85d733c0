"""`lab.py study report|export|results`: the report folder of a study, its best trials as deployable
files, and RESULTS.md (the paper's claims against the shipped studies' storages)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import optuna

from xvol_lab.cli.args import positive_int
from xvol_lab.cli.storage_args import add_storage_arguments, storage_argument
from xvol_lab.study.export import ExportCheckError, export_study
from xvol_lab.study.report import FORMATS, load_study_data, write_report
from xvol_lab.study.results import RESULTS_MD, write_results

REPORT_HELP = """\
Write the report of study NAME to a folder (default <runs>/<study>/report/): report.md with the
summary, the ablation (mean and 95% interval over seeds, difference to all-conv paired by seed,
Holm-corrected p), per-stage effects, parameter importances and the best trial / Pareto front,
every table as a file in --format, and PNG plots. Works while the study still runs.
The folder is replaced whole; on any error nothing is written.
"""

EXPORT_HELP = """\
Export the best trial of study NAME (several objectives: its Pareto front; --top K: the K best)
to a folder (default <runs>/<study>/export/), one trial_<n>/ per trial with spec.json, the
trained checkpoint, the re-parameterized deploy checkpoint, an ONNX model and a model card.
Each export is checked: the deploy and ONNX models must reproduce the trained model's outputs
on validation images (exit code 1 otherwise, and nothing is written).
"""

RESULTS_HELP = """\
Write RESULTS.md from the storages of the shipped studies (<runs>/<study>/study.db): the paper's
claims (X-volution beats conv in stage 3; replacing stage 4 hurts ResNet-50; PSSA is about as
good as global SA), each reproduced, contradicted or not distinguishable at this budget, with
the measured ablations (intervals, paired differences), each study's budget and the commands
that regenerate it. A study without a storage is listed as not run.
"""


def _common(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("name", metavar="NAME", help="a study in studies/ or a path to a study YAML file")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help=f"{what} folder (default: <runs>/<study>/{what})")
    add_storage_arguments(parser)
    parser.add_argument("--runs", type=Path, default=Path("runs"), metavar="DIR",
                        help="runs folder (default: runs)")


def _allow_mixed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-mixed", action="store_true",
                        help="compare trials that ran in different environments (threads, kernel backend, "
                             "device, precision, versions: their fingerprints); the output is marked")


def add_study_commands(study_subparsers: argparse._SubParsersAction) -> None:
    """Add `report`, `export` and `results` to the `lab.py study` sub-commands."""
    report = study_subparsers.add_parser("report", help="tables, plots and report.md of a study",
                                         description=REPORT_HELP,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(report, "report")
    report.add_argument("--format", choices=list(FORMATS), default="md", help="format of the table files")
    _allow_mixed(report)
    report.set_defaults(func=cmd_report)

    export = study_subparsers.add_parser("export", description=EXPORT_HELP,
                                         help="the best trial(s) as spec, checkpoints, ONNX, model card",
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(export, "export")
    export.add_argument("--top", type=positive_int, metavar="K",
                        help="export the K best trials (several objectives: by Pareto rank)")
    export.set_defaults(func=cmd_export)

    results = study_subparsers.add_parser("results", description=RESULTS_HELP,
                                          help="RESULTS.md: the paper's claims against the storages",
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    results.add_argument("--out", type=Path, default=Path(RESULTS_MD), metavar="FILE",
                         help=f"where to write it (default: {RESULTS_MD})")
    results.add_argument("--runs", type=Path, default=Path("runs"), metavar="DIR",
                         help="runs folder holding <study>/study.db (default: runs)")
    _allow_mixed(results)
    results.set_defaults(func=cmd_results)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report folder and print where report.md is."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_study_data(args.name, runs=args.runs, storage_url=storage_argument(args))
    path = write_report(data, args.out or args.runs / data.name / "report", args.format,
                        allow_mixed=args.allow_mixed)
    print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export and check the best trial(s); print each folder. Exit 1 if a check fails."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_study_data(args.name, runs=args.runs, storage_url=storage_argument(args))
    try:
        folders = export_study(data, args.out or args.runs / data.name / "export", args.top)
    except ExportCheckError as err:
        print(f"lab.py: error: {err}", file=sys.stderr)
        return 1
    for folder in folders:
        print(folder)
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    """Write RESULTS.md and print its path."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(write_results(args.out, args.runs, allow_mixed=args.allow_mixed))
    return 0
