"""Reading a study back for `lab.py study list|status`: counts, best trial, one row per trial."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial
from rich.table import Table
from rich.text import Text

from xvol_lab.errors import ConfigError
from xvol_lab.study.config import StudyConfig
from xvol_lab.study.environment import build_failure_text
from xvol_lab.study.ledger import tally
from xvol_lab.study.progress import best_text, format_duration
from xvol_lab.study.settings import with_stored_settings
from xvol_lab.study.standing import best_trials, retried_as, state_and_reason
from xvol_lab.study.storage import (
    default_storage_url,
    find_study,
    identity_difference,
    open_storage,
    shown_url,
    sqlite_file,
)


def existing_study(name: str, url: str) -> optuna.Study | None:
    """Study `name` at `url` if both exist; nothing is created."""
    path = sqlite_file(url)
    if path is not None and not path.is_file():
        return None
    return find_study(open_storage(url, create=False), name)


def progress_text(name: str, config: StudyConfig, runs: Path) -> str:
    """``3/10 finished, best val/acc1 0.8125 (trial 2)`` from the default storage, or ``not started``."""
    study = existing_study(name, default_storage_url(runs, name))
    if study is None:
        return "not started"
    try:
        config = with_stored_settings(config, study)
    except ConfigError as err:  # the study file changed under the stored --set
        return f"made with settings that no longer fit the study file ({err})"
    trials = study.get_trials(deepcopy=False)
    done = f"{tally(trials).finished}/{config.n_trials} finished"
    difference = identity_difference(study, config)
    if difference is not None or [d.name.lower() for d in study.directions] != config.directions:
        return f"{done} in a storage made from a different study file ({difference or 'objectives'})"
    return f"{done}, best {best_text(trials, config.metric_names, config.directions)}"


def counts_text(name: str, config: StudyConfig, trials: list[FrozenTrial]) -> str:
    """``name: 3/10 finished (2 complete, 1 pruned, 0 failed), 1 running, 0 queued, ...``."""
    c = tally(trials)
    return (f"{name}: {c.finished}/{config.n_trials} finished ({c.complete} complete, {c.pruned} pruned, "
            f"{c.failed} failed), {c.running} running, {c.waiting} queued, {c.interrupted} interrupted, "
            f"{c.void} void")


def trial_table(config: StudyConfig, trials: list[FrozenTrial]) -> Table:
    """One row per trial: number, state, stage operators, objective values, epochs, time, why it ended."""
    retries = retried_as(trials)
    table = Table("#", "state", "arch", *config.metric_names, "epochs", "time", "note", box=None)
    for t in trials:
        state, reason = state_and_reason(t, retries)
        values = [f"{v:.4f}" for v in t.values] if t.values else [""] * len(config.metric_names)
        duration = ((t.datetime_complete - t.datetime_start).total_seconds()
                    if t.datetime_complete and t.datetime_start else None)
        epochs = t.user_attrs.get("epochs")
        cells = [str(t.number), state, str(t.user_attrs.get("arch", "")), *values,
                 f"{epochs:g}" if isinstance(epochs, (int, float)) else "",
                 format_duration(duration) if duration is not None else "", reason]
        table.add_row(*(Text(c) for c in cells))  # plain text: "[conv, sa]" is not markup
    return table


def best_lines(config: StudyConfig, trials: list[FrozenTrial]) -> list[str]:
    """The best value (or Pareto front) and, for one objective, the best trial's params and folder."""
    lines = [f"best: {best_text(trials, config.metric_names, config.directions)}"]
    best_list = best_trials(trials, config.directions)
    if best_list and len(config.metric_names) == 1:
        best = best_list[0]
        lines.append(f"best params: {best.params}  run dir: {best.user_attrs.get('run_dir', '?')}")
    return lines


def status(name: str, config: StudyConfig, url: str) -> tuple[Table, list[str]]:
    """The trial table and the summary lines of study `name` at `url` (ConfigError if it does not exist),
    counted with the settings stored in the study (`xvol_lab.study.settings`)."""
    study = existing_study(name, url)
    if study is None:
        raise ConfigError(f"study {name}: nothing in {shown_url(url)} yet (run `lab.py study run` first)")
    config = with_stored_settings(config, study)
    trials = study.get_trials(deepcopy=False)
    failures = build_failure_text(trials)
    return trial_table(config, trials), [f"{counts_text(name, config, trials)} [{shown_url(url)}]",
                                         *best_lines(config, trials), *([failures] if failures else [])]
