"""`lab.py study list|run|status|report|export`: run the searches of studies/*.yaml and use them."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import yaml
from rich.console import Console

from xvol_lab.cli.args import positive_int
from xvol_lab.cli.design import add_design_commands
from xvol_lab.cli.report import add_study_commands
from xvol_lab.cli.storage_args import add_storage_arguments, storage_argument, storage_named
from xvol_lab.cli.submit import add_submit_parser
from xvol_lab.data.config import check_batches
from xvol_lab.errors import ConfigError
from xvol_lab.schema import to_dict
from xvol_lab.study.config import StudyConfig, list_study_files, load_study_config, resolve_study_path, study_name
from xvol_lab.study.launch import trial_command
from xvol_lab.study.one_shot import work_one_shot
from xvol_lab.study.one_shot_report import one_shot_lines, one_shot_summary
from xvol_lab.study.pool import local_workers, run_workers, worker_environments
from xvol_lab.study.progress import make_view
from xvol_lab.study.settings import RunSettings, check_continues, store_settings, stored_settings
from xvol_lab.study.storage import STORAGE_ENV, create_study, default_storage_url
from xvol_lab.study.summary import existing_study, progress_text, status
from xvol_lab.study.worker import work

log = logging.getLogger(__name__)

RUN_HELP = """\
Run study NAME (a file studies/NAME.yaml, or a path to a study YAML file) until it has
budget.n_trials finished trials. Run the same command again to resume after an interruption,
or in several shells / on several machines with one --storage to share the work.
--set, --trials and --seeds are stored in the storage: `study run NAME` alone continues with them
(and `status` and `report` count the same budget); a --set that changes what the study was made
with is refused, every differing key named.
Each trial trains in its own process; files go to <runs>/<study>/trial_<n>/.
"""


RUNS = Path("runs")
RUNS_HELP = "runs folder: <runs>/<study>/ holds study.db and the trial folders (default: runs)"




def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `study` command group."""
    p = subparsers.add_parser("study", help="architecture searches (Optuna) from studies/*.yaml")
    sub = p.add_subparsers(dest="study_command", required=True,
                           metavar="{list,run,status,report,export,results,power,calibrate,submit}")

    ls = sub.add_parser("list", help="the shipped studies and the state of their default storage")
    ls.add_argument("--runs", type=Path, default=RUNS, metavar="DIR", help=RUNS_HELP)
    ls.set_defaults(func=cmd_list)

    run = sub.add_parser("run", help="run (or resume, or join) a study", description=RUN_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("name", metavar="NAME", help="a study in studies/ or a path to a study YAML file")
    run.add_argument("--trials", type=positive_int, metavar="N",
                     help="finished trials to end with (budget.n_trials)")
    run.add_argument("--seeds", type=positive_int, metavar="N",
                     help="train every configuration with N seeds, base.seed + 0 .. N-1 (budget.seeds)")
    run.add_argument("--workers", metavar="K",
                     help="run K trials at once on this machine, each on its own GPUs (K x --devices of "
                          "them) and cores/K CPU threads (default: cores / base.trainer.threads where "
                          "the trials train on the CPU and the study sets it, else 1)")
    add_storage_arguments(run)
    run.add_argument("--devices", type=positive_int, metavar="N",
                     help="processes (devices) per trial and node")
    run.add_argument("--nodes", type=positive_int, metavar="M",
                     help="nodes per trial (inside a SLURM allocation)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", nargs="+",
                     help="override study keys, e.g. base.data.name=imagefolder budget.epochs=90 "
                          "base.model.stage3.op=sa (stored in the storage: a later run continues with them)")
    run.add_argument("--print-config", action="store_true",
                     help="print the resolved study config as YAML and exit (nothing is written)")
    run.add_argument("--runs", type=Path, default=RUNS, metavar="DIR", help=RUNS_HELP)
    live = run.add_mutually_exclusive_group()
    live.add_argument("--live", dest="live", action="store_true", default=None,
                      help="live panel (default on a terminal)")
    live.add_argument("--no-live", dest="live", action="store_false",
                      help="log lines instead of the live panel")
    run.set_defaults(func=cmd_run)

    st = sub.add_parser("status", help="trials, counts and the best trial of a study")
    st.add_argument("name", metavar="NAME", help="a study in studies/ or a path to a study YAML file")
    add_storage_arguments(st)
    st.add_argument("--runs", type=Path, default=RUNS, metavar="DIR", help=RUNS_HELP)
    st.set_defaults(func=cmd_status)
    add_study_commands(sub)
    add_design_commands(sub)
    add_submit_parser(sub)


def cmd_run(args: argparse.Namespace) -> int:
    """Work on the study until its budget is spent, with the settings stored in its storage and then
    the given ones (`xvol_lab.study.settings`)."""
    given = RunSettings(tuple(text for group in args.overrides for text in group), args.trials, args.seeds)
    resources = [f"{key}={getattr(args, flag)}" for flag, key in (("devices", "base.trainer.devices"),
                                                                   ("nodes", "base.trainer.num_nodes"))
                 if getattr(args, flag) is not None]
    asked = _workers(args.workers)
    name = study_name(resolve_study_path(args.name))
    url = storage_argument(args) or default_storage_url(args.runs, name)
    study = existing_study(name, url)
    settings = stored_settings(study).then(given)
    overrides = settings.override_list() + resources
    name, config = load_study_config(args.name, overrides)
    # A one-shot study's trials are the paths its search chose (its stored enqueue): checked when joined.
    if study is not None and config.search != "one_shot":
        where, fresh = storage_named(args)
        check_continues(study, args.name, config, given, resources, where, fresh)
    if args.print_config:
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return 0
    trainer = config.base.trainer
    check_batches(config.base.data, trainer.devices * trainer.num_nodes, "base.data.")  # before any write
    workers = asked or _default_workers(config)
    environments = worker_environments(workers, trainer.devices, trainer.accelerator != "cpu")
    if config.search == "one_shot" and workers > 1:
        raise ConfigError(f"--workers {workers}: a one-shot study (search: one_shot) runs in one worker")
    trial_command(args.runs / name, trainer.devices, trainer.num_nodes)  # refused resources: nothing written
    store_settings(create_study(url, name, config), settings, config)
    if config.search == "one_shot":
        work_one_shot(name, config, runs=args.runs, storage_url=url, view=make_view(args.live))
        summary = one_shot_summary(name, config, url)
        for line in one_shot_lines(summary) if summary is not None else []:
            print(line)
        code = 0
    elif workers > 1:
        code = run_workers(args.name, args.runs, overrides, environments, {STORAGE_ENV: url})
    else:
        work(name, config, runs=args.runs, storage_url=url, view=make_view(args.live))
        code = 0
    for line in status(name, config, url)[1]:
        print(line)
    return code


def _workers(text: str | None) -> int | None:
    """``--workers K``: an integer >= 1 (one line and exit code 2 otherwise); None where not given."""
    if text is None:
        return None
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"--workers {text}: expected an integer >= 1")
    return int(text)


def _default_workers(config: StudyConfig) -> int:
    """The workers of a `study run` without ``--workers`` (`local_workers`; one for a one-shot study)."""
    if config.search == "one_shot":
        return 1
    workers = local_workers(config.base.trainer)
    if workers > 1:
        log.info("%d trials at once: %d cores, base.trainer.threads %d (--workers K to choose)",
                 workers, len(os.sched_getaffinity(0)), config.base.trainer.threads)
    return workers


def cmd_list(args: argparse.Namespace) -> int:
    """The shipped studies with their sampler, budget and progress in their default storage."""
    for path in list_study_files():
        try:
            name, config = load_study_config(path)
        except ConfigError as err:
            print(f"{path.stem:<18} invalid: {err}")
            continue
        print(f"{name:<18} {config.sampler.name:<6} {config.n_trials:>3} trials  "
              f"{progress_text(name, config, args.runs)}")
        print(f"{'':<18} {' '.join(config.description.split())}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Every trial of the study, the counts and the best trial."""
    name, config = load_study_config(args.name)
    table, lines = status(name, config, storage_argument(args) or default_storage_url(args.runs, name))
    console = Console(highlight=False)
    console.print(table)
    for line in lines:
        console.print(line, markup=False)
    return 0
