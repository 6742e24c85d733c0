"""`lab.py train`: train one model (any task) from a config file, an architecture spec and overrides."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from xvol_lab.errors import ConfigError
from xvol_lab.schema import with_overrides
from xvol_lab.tasks import NonFiniteLossError, fit
from xvol_lab.tasks.config import PRECISIONS, STRATEGIES, RunConfig, dump_run_config, load_run_config
from xvol_lab.tasks.resume import resumed_config, stored_config
from xvol_lab.tasks.runner import resolve_resume

# DDP worker processes re-run this command line; they take the default run dir from rank 0.
RUN_DIR_ENV = "XVOL_LAB_TRAIN_RUN_DIR"

DESCRIPTION = """\
Train one model (any task). The config is built in this order: the defaults of the task that
--config or --set chooses (classification: 32 px shapes, resnet18 with a small stem at width 0.25,
SGD + cosine; the others: their record in xvol_lab/tasks/registry.py, a quick run), then --config, then
--arch (replaces `model`), then --devices/--strategy/--precision/--max-epochs, then each --set.
With --resume, the run's config.yaml takes the place of the defaults, and only trainer.max_epochs
(and the devices from an epoch-end checkpoint) may differ from it. Stages are numbered 1..4 as
in the paper: --set model.stage3.op=xvol_pssa.
`--set init.path=PATH` starts the backbone from a run, checkpoint, export or torchvision weights.
The run directory gets
config.yaml, spec.json, metrics.csv, tb/, checkpoints/{best,last}.ckpt and results.json.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `train` command."""
    p = subparsers.add_parser("train", help="train one model from a config and a spec",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", type=Path,
                   help="run config YAML with sections task, seed, data, model, optim, trainer; "
                        "keys left out keep their defaults")
    p.add_argument("--arch", metavar="SPEC.json", type=Path,
                   help="architecture spec JSON (a run's spec.json or BackboneSpec.to_json()); "
                        "replaces model")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. optim.lr=0.05 or model.stage3.op=xvol_pssa "
                        "(repeatable, applied last; values are parsed as YAML)")
    p.add_argument("--run-dir", metavar="DIR", type=Path,
                   help="directory for the run's files (default: runs/train/<timestamp>)")
    p.add_argument("--resume", metavar="CKPT|last",
                   help="continue training from a checkpoint; 'last' is <run-dir>/checkpoints/last.ckpt "
                        "(needs --run-dir). The run's config.yaml is the config (never rewritten); flags "
                        "and --set may change trainer.max_epochs, and trainer.devices/strategy/num_nodes "
                        "from an epoch-end checkpoint, and nothing else")
    p.add_argument("--devices", metavar="N", type=int, help="devices (processes) per node: trainer.devices")
    p.add_argument("--strategy", choices=STRATEGIES, help="distributed strategy: trainer.strategy")
    p.add_argument("--precision", choices=PRECISIONS, help="numeric precision: trainer.precision")
    p.add_argument("--max-epochs", metavar="N", type=int, help="epochs to train: trainer.max_epochs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or model summary")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML and exit (nothing is written)")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace, base: RunConfig | None) -> RunConfig:
    """The task's defaults (or `base`, a resumed run's config), then --config, --arch, the flags, --set."""
    task = [text for text in args.overrides if text.partition("=")[0].strip() == "task"]  # picks the defaults
    config = load_run_config(args.config, task, arch=args.arch, base=base)
    for flag, key in (("devices", "devices"), ("strategy", "strategy"), ("precision", "precision"),
                      ("max_epochs", "max_epochs")):
        value = getattr(args, flag)
        if value is not None:
            config = with_overrides(config, [f"trainer.{key}={value}"], label=f"--{flag.replace('_', '-')}")
    return with_overrides(config, args.overrides, label="--set")


def default_run_dir() -> Path:
    """runs/train/<YYYYmmdd-HHMMSS>, with a -N suffix if that exists (or the one rank 0 chose)."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    base = Path("runs/train") / time.strftime("%Y%m%d-%H%M%S")
    path, n = base, 1
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def run(args: argparse.Namespace) -> int:
    """Build the config, train, print the best epoch's metrics. Exit 1 if the run diverged."""
    if args.resume == "last" and args.run_dir is None:
        raise ConfigError("--resume last: needs --run-dir (the run to continue)")
    run_dir = args.run_dir or default_run_dir()
    checkpoint = resolve_resume(run_dir, args.resume)
    stored = stored_config(run_dir) if checkpoint is not None else None
    config = build_config(args, stored)
    if stored is not None and checkpoint is not None:
        config = resumed_config(stored, config, checkpoint, run_dir)
    if args.print_config:
        print(dump_run_config(config), end="")
        return 0
    os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        result = fit(config, run_dir, progress=not args.no_progress, resume=args.resume)
    except NonFiniteLossError as err:
        print(f"lab.py train: {run_dir}: the run diverged: {err}", file=sys.stderr)
        return 1
    finally:
        del os.environ[RUN_DIR_ENV]
    if rank_zero_only.rank == 0:
        print(f"run: {run_dir}")
        for key, value in result.items():
            print(f"  {key}: {value:.4f}" if key.startswith(("val/", "train/")) else f"  {key}: {value:g}")
    return 0
