"""Where a study lives: an Optuna RDB storage (default: SQLite file runs/<study>/study.db).

Several workers given the same storage join the same study. A worker records a heartbeat for
the trial it runs every `heartbeat` seconds; a RUNNING trial whose heartbeat is older than the
grace period (`grace_seconds`) is failed by the next worker that looks and queued again
(`xvol_lab.study.ledger.RetryCrashes`: a lost worker is a crash, retried at most budget.max_retries
times, with its intermediate values). For SQLite the busy timeout of a worker is shorter than the grace period less one
heartbeat, so that a worker waiting for the database cannot be taken for a dead one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import stat
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import optuna
from optuna.storages import RDBStorage
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from xvol_lab.errors import ConfigError
from xvol_lab.study.config import StudyConfig
from xvol_lab.study.ledger import RetryCrashes

log = logging.getLogger(__name__)

IDENTITY = "xvol:study"
GRACE_FACTOR = 3

OPEN_ATTEMPTS = 3
STORAGE_ENV = "XVOL_STORAGE"  # the storage URL, for workers that are given no --storage
MIN_SECRET = 3  # shorter "passwords" are not searched for in free text (they would mask every word)
_USER_PASSWORD = re.compile(r"(://[^/?#@:]*:)(.*)@")  # greedy: up to the last @
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)


def busy_timeout(heartbeat: int | None) -> float:
    """Seconds a SQLite connection waits for the database: 120 without heartbeats (readers, trial
    processes), else max(5, 2 x heartbeat) (a heartbeat is late by at most this plus one interval)."""
    return 120.0 if heartbeat is None else max(5.0, 2.0 * heartbeat)


def grace_seconds(heartbeat: int) -> float:
    """A RUNNING trial whose last heartbeat is older than this is stale: longer than
    GRACE_FACTOR heartbeats and than the busy timeout plus two heartbeats."""
    return max(GRACE_FACTOR * heartbeat, busy_timeout(heartbeat) + 2 * heartbeat)


def default_storage_url(runs: Path, name: str) -> str:
    """The storage of a study given no ``--storage``: ``$XVOL_STORAGE`` if set (a server shared by
    the workers, the password kept off the command line), else ``sqlite:///<runs>/<name>/study.db``."""
    if os.environ.get(STORAGE_ENV):
        return came_from(os.environ[STORAGE_ENV], f"${STORAGE_ENV}")
    return f"sqlite:///{(runs / name / 'study.db').resolve()}"


def read_storage_file(path: Path) -> str:
    """The storage URL in file `path` (its first line that is not blank or a ``#`` comment); the file
    must be readable by its owner only, since the URL may hold the database password."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise ConfigError(f"--storage-file {path}: {err.strerror or err}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"--storage-file {path}: not a file; expected a file holding the storage URL")
    if mode & 0o044:
        shown = f"{stat.S_IMODE(mode):04o}"
        raise ConfigError(f"--storage-file {path}: group or others can read it (mode {shown}); expected a "
                          f"file only its owner can read (chmod 600 {path})")
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--storage-file {path}: cannot read it ({err})") from None
    url = next((line for line in lines if line and not line.startswith("#")), None)
    if url is None:
        raise ConfigError(f"--storage-file {path}: empty; expected a storage URL on its first line")
    return came_from(url, f"--storage-file {path}")


_ORIGINS: dict[str, str] = {}  # URL -> where this process last took it from (`came_from`)


def came_from(url: str, origin: str) -> str:
    """Record that `url` was given by `origin` (``--storage``, ``--storage-file PATH``,
    ``$XVOL_STORAGE``), for the messages about it; returns `url`."""
    _ORIGINS[url] = origin
    return url


def _origin(url: str) -> str:
    """Where `url` came from; '' for one the user did not give (the default storage, or code)."""
    if url in _ORIGINS:
        return _ORIGINS[url]
    return f"${STORAGE_ENV}" if os.environ.get(STORAGE_ENV) == url else ""


def described(url: str) -> str:
    """`url` for messages, password masked, with where it came from: ``--storage URL``,
    ``--storage-file PATH (URL)``, ``$XVOL_STORAGE (URL)``, or the URL alone (the default storage)."""
    origin = _origin(url)
    if origin in ("", "--storage"):
        return f"{origin} {shown_url(url)}".lstrip()
    return f"{origin} ({shown_url(url)})"


def check_url(url: str) -> None:
    """ConfigError, naming where the URL came from but never the URL, for one that does not parse,
    or parses otherwise than written (an unencoded ``@`` in the password: the driver would take part
    of the password for the host and print it)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"{_origin(url) or 'the storage URL'}: not a storage URL SQLAlchemy can parse "
                          "(expected e.g. sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB); "
                          "the URL is not shown, as it may hold a password") from None
    written = _USER_PASSWORD.search(url)
    if written is not None and unquote(written.group(2)) != (parsed.password or ""):
        raise ConfigError(f"{_origin(url) or 'the storage URL'}: the storage URL does not parse as written: "
                          "its password holds an unencoded '@' (percent-encode it as %40); the URL is not "
                          "shown, as it holds a password")


def has_password(url: str) -> bool:
    """Whether `url` carries a password (in its user part or as a ``password=`` query parameter)."""
    return shown_url(url) != url


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL, else None."""
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) else None


def shown_url(url: str) -> str:
    """`url` with any password masked, for messages, logs, reports and trial attributes.

    Does not parse the URL: everything between the user name and the last ``@`` becomes ``***``
    (also in URLs no parser accepts, and with an unencoded ``@`` in the password), and so do
    ``password=`` query parameters."""
    masked = _USER_PASSWORD.sub(r"\1***@", url, count=1)
    return _QUERY_PASSWORD.sub(r"\1***", masked)


def redact(text: str, url: str) -> str:
    """`text` (e.g. a driver's error message) with the password of `url` masked wherever it appears."""
    text = text.replace(url, shown_url(url))
    secrets = {m.group(2) for pattern in (_USER_PASSWORD, _QUERY_PASSWORD) for m in pattern.finditer(url)}
    secrets |= {unquote(secret) for secret in secrets}
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, "***")
    return text


def open_storage(url: str, *, heartbeat: int | None = None, create: bool = True,
                 max_retries: int | None = None) -> RDBStorage:
    """The RDB storage at `url`; with `heartbeat`, stale trials are failed and retried.

    A missing SQLite file is created only with `create`; unreachable servers, unknown schemes and
    missing drivers are `ConfigError`.
    """
    check_url(url)
    path = sqlite_file(url)
    engine: dict[str, Any] = {}
    if path is not None:
        if not path.is_file() and not create:
            raise ConfigError(f"{path}: no study storage here yet (run `lab.py study run` first)")
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": busy_timeout(heartbeat)}}  # several processes write here
    else:
        engine = {"pool_pre_ping": True}
    attempt = 1
    while True:
        try:
            return _rdb(url, engine, heartbeat, max_retries)
        except Exception as err:  # bad URL, missing driver, refused connection, authentication
            if not (isinstance(err, (ImportError, ValueError, optuna.exceptions.StorageInternalError))
                    or type(err).__module__.startswith("sqlalchemy")):
                raise
            # Workers starting together on an empty database race to create Optuna's tables: the
            # losers fail once ("already exists") and find the tables on the next attempt.
            if attempt < OPEN_ATTEMPTS and not isinstance(err, (ImportError, ValueError)):
                attempt += 1
                time.sleep(1.0 + random.random())
                continue
            detail = redact(" ".join(str(err).split()), url)[:300]
            raise ConfigError(f"{described(url)}: cannot open ({detail})") from None


def _rdb(url: str, engine: dict[str, Any], heartbeat: int | None, max_retries: int | None) -> RDBStorage:
    with warnings.catch_warnings():  # the heartbeat arguments and the retry callback are experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat is None:
            return RDBStorage(url, engine_kwargs=engine)
        return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                          grace_period=int(math.ceil(grace_seconds(heartbeat))),
                          heartbeat_stale_trial_callback=RetryCrashes(max_retries))


def find_study(storage: RDBStorage, name: str) -> optuna.Study | None:
    """Study `name` in `storage` (plain sampler; for reading), or None if it does not exist."""
    if name not in {s.study_name for s in storage.get_all_studies()}:
        return None
    return optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())


def create_study(url: str, name: str, config: StudyConfig) -> optuna.Study:
    """Study `name` at `url`, created with the study's objectives if it does not exist yet."""
    return optuna.create_study(study_name=name, storage=open_storage(url), directions=config.directions,
                               load_if_exists=True)


def join_study(storage: RDBStorage, name: str, config: StudyConfig, *,
               sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Create study `name` or join it; a study made from a different study file is refused."""
    identity = json.loads(json.dumps(config.identity()))
    existing = find_study(storage, name)
    if existing is not None:
        _check_identity(existing, name, identity, storage.url)
    study = optuna.create_study(study_name=name, storage=storage, directions=config.directions,
                                load_if_exists=True, sampler=sampler, pruner=pruner)
    if IDENTITY not in study.user_attrs:
        study.set_user_attr(IDENTITY, identity)
    _check_identity(study, name, identity, storage.url)
    return study


def identity_difference(study: optuna.Study, config: StudyConfig) -> str | None:
    """How the settings that made `study` differ from `config`: every differing key with both values
    (``base.optim.lr: stored 0.1, now 0.05; budget.epochs: ...``), or None when they agree (or the
    study records none)."""
    differences = identity_differences(study, config)
    return "; ".join(differences) if differences else None


def identity_differences(study: optuna.Study, config: StudyConfig) -> list[str]:
    """Every key in which the study file and overrides that made `study` differ from `config`."""
    return _differences(study, json.loads(json.dumps(config.identity())))


def _differences(study: optuna.Study, identity: dict[str, Any]) -> list[str]:
    stored = study.user_attrs.get(IDENTITY)
    if stored is None or stored == identity:
        return []
    keyed = sorted((_study_key(path), old, new) for path, old, new in _walk(stored, identity))
    return [f"{key}: stored {old!r}, now {new!r}" for key, old, new in keyed]


def _check_identity(study: optuna.Study, name: str, identity: dict[str, Any], url: str) -> None:
    differences = _differences(study, identity)
    if not differences:
        return
    raise ConfigError(f"{described(url)}: study {name!r} there was made from a different study file or "
                      f"--set ({'; '.join(differences)}); use another storage, or the study file and --set "
                      "it was made from")


# `StudyConfig.identity` keys -> the study file's keys (what --set takes).
_IDENTITY_KEYS = {"epochs": "budget.epochs", "seeds": "budget.seeds", "seed": "base.seed", "data": "base.data",
                  "model": "base.model", "optim": "base.optim"}
_STAGE_ITEM = re.compile(r"^base\.model\.stages\.(\d+)")


def _study_key(path: str) -> str:
    """An identity key path as the study file writes it: ``base.model.stage3.op`` (stages 1-based)."""
    head, dot, rest = path.partition(".")
    key = _IDENTITY_KEYS.get(head, head) + dot + rest
    return _STAGE_ITEM.sub(lambda m: f"base.model.stage{int(m[1]) + 1}", key)


def _walk(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(key path, old value, new value) of every leaf in which `old` and `new` differ."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _walk(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new, strict=True)) for d in _walk(a, b, f"{path}.{i}")]
    return [(path, old, new)]
