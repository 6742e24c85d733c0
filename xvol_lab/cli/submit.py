"""`lab.py study submit`: write the SLURM batch script of a study worker, print it, submit it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from xvol_lab.atomic import write_text
from xvol_lab.data.config import check_batches
from xvol_lab.paths import REPO_ROOT
from xvol_lab.study.config import load_study_config, resolve_study_path
from xvol_lab.study.sbatch import batch_script, check_request, check_storage, resources, script_path, submit
from xvol_lab.study.storage import STORAGE_ENV, read_storage_file

SUBMIT_HELP = f"""\
Write the SLURM batch script of one worker of study NAME to <runs>/<study>/submit_<time>.sbatch,
print it, and submit it with sbatch where sbatch exists (not with --dry-run); a job the cluster
can never run (`sbatch --test-only` says no) is refused before anything is written. Each job (each task
with --array K) runs one study process on --nodes N nodes with --gpus-per-node G GPUs; each of
its trials is an srun step on all of them. The job asks for the preemption signal and is
requeued after it. The storage is --storage-file PATH or ${STORAGE_ENV} (exported by sbatch);
the script never holds the password. See studies/README.md, "SLURM".
"""


def add_submit_parser(study_subparsers: argparse._SubParsersAction) -> None:
    """Add `submit` to the `lab.py study` sub-commands."""
    p = study_subparsers.add_parser("submit", help="write and submit the SLURM batch script of a worker",
                                    description=SUBMIT_HELP,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help="a study in studies/ or a path to a study YAML file")
    p.add_argument("--nodes", required=True, metavar="N", help="nodes per job (each trial spans them all)")
    p.add_argument("--gpus-per-node", required=True, metavar="G",
                   help="GPUs per node, one trial process each (0: a CPU job, one process per node)")
    p.add_argument("--array", metavar="K", help="K jobs (a job array): K workers sharing the study")
    p.add_argument("--time", metavar="T", help="time limit per job (minutes, HH:MM:SS, D-HH:MM, ...)")
    p.add_argument("--partition", metavar="P", help="SLURM partition(s)")
    p.add_argument("--cpus-per-gpu", default="4", metavar="C",
                   help="CPUs per trial process, for its data loader workers (default: 4)")
    p.add_argument("--storage-file", type=Path, metavar="PATH",
                   help=f"a file only you can read holding the storage URL (default: ${STORAGE_ENV}, else "
                        "the study's SQLite file)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                   help="override study keys in the workers' `study run`, e.g. budget.epochs=90")
    p.add_argument("--runs", type=Path, default=Path("runs"), metavar="DIR",
                   help="runs folder, shared by the nodes (default: runs)")
    p.add_argument("--dry-run", action="store_true", help="write and print the script, do not submit it")
    p.set_defaults(func=cmd_submit)


def cmd_submit(args: argparse.Namespace) -> int:
    """Check everything, then write the script, print it and submit it."""
    overrides = [text for group in args.overrides for text in group]
    name, config = load_study_config(args.name, overrides)
    res = resources(args.nodes, args.gpus_per_node, array=args.array, time_limit=args.time,
                    partition=args.partition, cpus_per_gpu=args.cpus_per_gpu)
    if args.storage_file is not None:
        read_storage_file(args.storage_file)  # private and readable, or refused before anything is written
    check_storage(res, args.storage_file, os.environ)
    check_batches(config.base.data, res.nodes * res.tasks_per_node, "base.data.")
    study_args = [str(resolve_study_path(args.name).resolve()), *(["--set", *overrides] if overrides else [])]
    text = batch_script(study_args, name, res, runs=args.runs, workdir=Path.cwd(), python=sys.executable,
                        lab=REPO_ROOT / "lab.py", storage_file=args.storage_file,
                        storage_in_env=bool(os.environ.get(STORAGE_ENV)))
    if not args.dry_run:
        check_request(text, res)  # a job the cluster can never run is refused before anything is written
    path = script_path(args.runs, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)
    print(text, end="")
    if args.dry_run:
        print(f"written {path} (--dry-run: not submitted)")
        return 0
    job = submit(path)
    if job is None:
        print(f"written {path}; sbatch is not here: submit it with `sbatch {path}` where SLURM is")
    else:
        print(f"submitted batch job {job}: {path}")
    return 0
