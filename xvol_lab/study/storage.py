"""Where a study lives: an Optuna RDB storage (default: SQLite file runs/<study>/study.db).

Several workers given the same storage join the same study. A worker records a heartbeat for
the trial it runs every `heartbeat` seconds; a RUNNING trial whose heartbeat is older than
``3 * heartbeat`` seconds is failed by the next worker that looks and queued again
(`RetryHeartbeatStaleTrialCallback`).
"""

from __future__ import annotations

import json
import logging
import random
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from xvol_lab.errors import ConfigError
from xvol_lab.study.config import StudyConfig

log = logging.getLogger(__name__)

IDENTITY = "xvol:study"
GRACE_FACTOR = 3
OPEN_ATTEMPTS = 3


def default_storage_url(runs: Path, name: str) -> str:
    """``sqlite:///<runs>/<name>/study.db`` (absolute)."""
    return f"sqlite:///{(runs / name / 'study.db').resolve()}"


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL, else None."""
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) else None


def shown_url(url: str) -> str:
    """`url` with any password masked, for messages."""
    try:
        import sqlalchemy

        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: the caller reports it
        return url


def open_storage(url: str, *, heartbeat: int | None = None, create: bool = True) -> RDBStorage:
    """The RDB storage at `url`; with `heartbeat`, stale trials are failed and retried.

    A missing SQLite file is created only with `create`; unreachable servers, unknown schemes and
    missing drivers are `ConfigError`.
    """
    path = sqlite_file(url)
    engine: dict[str, Any] = {}
    if path is not None:
        if not path.is_file() and not create:
            raise ConfigError(f"{path}: no study storage here yet (run `lab.py study run` first)")
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 120}}  # several processes write to one file
    else:
        engine = {"pool_pre_ping": True}
    attempt = 1
    while True:
        try:
            return _rdb(url, engine, heartbeat)
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
            detail = " ".join(str(err).split())[:300]
            raise ConfigError(f"--storage {shown_url(url)}: cannot open ({detail})") from None


def _rdb(url: str, engine: dict[str, Any], heartbeat: int | None) -> RDBStorage:
    with warnings.catch_warnings():  # the heartbeat arguments and the retry callback are experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat is None:
            return RDBStorage(url, engine_kwargs=engine)
        return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                          grace_period=GRACE_FACTOR * heartbeat,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())


def find_study(storage: RDBStorage, name: str) -> optuna.Study | None:
    """Study `name` in `storage` (plain sampler; for reading), or None if it does not exist."""
    if name not in {s.study_name for s in storage.get_all_studies()}:
        return None
    return optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())


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


def _check_identity(study: optuna.Study, name: str, identity: dict[str, Any], url: str) -> None:
    stored = study.user_attrs.get(IDENTITY)
    if stored is None or stored == identity:
        return
    key = _first_difference(stored, identity)
    raise ConfigError(f"--storage {shown_url(url)}: study {name!r} there was made from a different study "
                      f"file ({key}); use another --storage, or the study file it was made from")


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            if old.get(k) != new.get(k):
                return _first_difference(old.get(k), new.get(k), f"{path}.{k}" if path else k)
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=False)):
            if a != b:
                return _first_difference(a, b, f"{path}.{i}")
    return f"{path}: stored {old!r}, now {new!r}"
