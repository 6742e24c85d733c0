"""The storage options shared by the study commands: ``--storage URL`` or ``--storage-file PATH``
(else ``$XVOL_STORAGE``, else the study's SQLite file; see `xvol_lab.study.storage`)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from xvol_lab.study.storage import STORAGE_ENV, came_from, has_password, read_storage_file, shown_url

log = logging.getLogger(__name__)


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the mutually exclusive ``--storage`` and ``--storage-file`` to `parser`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--storage", metavar="URL",
                       help=f"Optuna RDB URL shared by the workers (default: ${STORAGE_ENV}, else "
                            "sqlite:///<runs>/<study>/study.db); a password here is visible to every user "
                            f"of the machine (ps): use ${STORAGE_ENV} or --storage-file for one")
    group.add_argument("--storage-file", type=Path, metavar="PATH",
                       help="a file only you can read (chmod 600) holding the storage URL on its first line")


def storage_argument(args: argparse.Namespace) -> str | None:
    """The storage URL given by ``--storage`` or ``--storage-file``, or None (ConfigError for a bad file)."""
    if getattr(args, "storage_file", None) is not None:
        return read_storage_file(args.storage_file)
    if args.storage is not None and has_password(args.storage):
        log.warning("--storage carries a password, which every user of this machine can read (ps); "
                    "put the URL in $%s or in a file given with --storage-file", STORAGE_ENV)
    return None if args.storage is None else came_from(args.storage, "--storage")


def storage_named(args: argparse.Namespace) -> tuple[str, str]:
    """How the user named the storage (``--runs runs``, ``--storage URL``, ``--storage-file PATH`` or
    ``$XVOL_STORAGE``), and how to name another one, for messages."""
    if getattr(args, "storage_file", None) is not None:
        return f"--storage-file {args.storage_file}", "another --storage-file"
    if args.storage is not None:
        return f"--storage {shown_url(args.storage)}", "another --storage"
    if os.environ.get(STORAGE_ENV):
        return f"${STORAGE_ENV} ({shown_url(os.environ[STORAGE_ENV])})", f"another ${STORAGE_ENV}"
    return f"--runs {args.runs}", "another --runs"
