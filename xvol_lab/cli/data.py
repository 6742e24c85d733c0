"""`lab.py data make|info`: generate a synthetic dataset, or count a dataset's images per class."""

from __future__ import annotations

import argparse
from collections import Counter

from xvol_lab.data import DATASET_NAMES, SYNTHETIC_NAMES, DataConfig, build_datamodule, generate_dataset
from xvol_lab.data.synthetic import SyntheticDataModule
from xvol_lab.errors import ConfigError
from xvol_lab.schema import from_dict, to_dict, with_overrides


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `data make` and `data info`."""
    parser = subparsers.add_parser("data", help="make synthetic datasets, count images",
                                   description="Synthetic datasets and dataset summaries.")
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(metavar="ACTION")
    make = sub.add_parser("make", help="generate a synthetic dataset and print its folder",
                          description=f"Generate a synthetic dataset ({', '.join(SYNTHETIC_NAMES)}) "
                                      "unless it exists, and print its folder.")
    info = sub.add_parser("info", help="print image counts per split and class",
                          description=f"Count images per split and class ({', '.join(DATASET_NAMES)}).")
    for p in (make, info):
        p.add_argument("name", metavar="NAME", help=f"dataset: {', '.join(DATASET_NAMES)}")
        p.add_argument("--root", default=DataConfig.root, help="dataset root (default: %(default)s)")
        p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                       help="DataConfig fields, e.g. --set num_train=500 image_size=64 (repeatable)")
    make.set_defaults(func=run_make)
    info.set_defaults(func=run_info)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def config_from_args(args: argparse.Namespace) -> DataConfig:
    """DataConfig from NAME, --root and --set overrides (bad values raise ConfigError)."""
    data = to_dict(DataConfig()) | {"name": args.name, "root": args.root}
    return with_overrides(from_dict(DataConfig, data), args.overrides)


def run_make(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if cfg.name not in SYNTHETIC_NAMES:
        raise ConfigError(f"data make: {cfg.name!r} is not generated; expected one of "
                          f"{', '.join(SYNTHETIC_NAMES)} (see data/README.md for {cfg.name})")
    print(generate_dataset(cfg))
    return 0


def run_info(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    dm = build_datamodule(cfg)
    dm.setup("fit")
    where = dm.folder if isinstance(dm, SyntheticDataModule) else cfg.root
    if not hasattr(dm.train_set, "targets"):  # segmentation / detection: no label per image
        print(f"{cfg.name} at {where}: {len(dm.classes)} classes ({', '.join(map(str, dm.classes))})")
        print(f"images: train {len(dm.train_set)}, val {len(dm.val_set)}")
        return 0
    counts = {"train": Counter(dm.train_set.targets), "val": Counter(dm.val_set.targets)}
    width = max(len("total"), *(len(c) for c in dm.classes))
    print(f"{cfg.name} at {where}: {len(dm.classes)} classes")
    print(f"{'class':<{width}}  {'train':>7}  {'val':>7}")
    for label, name in enumerate(dm.classes):
        print(f"{name:<{width}}  {counts['train'][label]:>7}  {counts['val'][label]:>7}")
    print(f"{'total':<{width}}  {len(dm.train_set):>7}  {len(dm.val_set):>7}")
    return 0
