"""Where the trials of a study stand: each trial's state and reason, and the best trials.

One wording for `lab.py study status` and the report, and one selection of the best trials
(Optuna's `Study.best_trials`: the Pareto front, or every trial tied at the best value with one
objective) among the counted complete trials.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial

from xvol_lab.study.ledger import VOID, counted, retry_history, retry_of


def retried_as(trials: Iterable[FrozenTrial]) -> dict[int, int]:
    """Interrupted trial number -> the number of the trial that retried it."""
    return {n: t.number for t in trials for n in retry_history(t)[-1:]}


def state_and_reason(trial: FrozenTrial, retries: Mapping[int, int]) -> tuple[str, str]:
    """(state, reason): complete, pruned, failed, running, waiting, interrupted or void; `retries`
    is `retried_as` of the study's trials."""
    if trial.system_attrs.get(VOID):
        return "void", str(trial.user_attrs.get("fail_reason", "budget taken by other workers"))
    if trial.number in retries:
        return "interrupted", f"retried as trial {retries[trial.number]}"
    retry = f"retry of trial {retry_of(trial)}" if retry_of(trial) is not None else ""
    if trial.state == TrialState.PRUNED:
        return "pruned", str(trial.user_attrs.get("prune_reason") or retry)
    if trial.state == TrialState.FAIL:
        return "failed", str(trial.user_attrs.get("fail_reason") or "interrupted (not retried)")
    return trial.state.name.lower(), retry


def complete_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The counted trials that completed with values, by number."""
    return sorted((t for t in counted(trials) if t.state == TrialState.COMPLETE and t.values is not None),
                  key=lambda t: t.number)


def in_memory_study(directions: Sequence[str]) -> optuna.Study:
    """A new in-memory study with `directions`, created without Optuna's log line."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.create_study(directions=list(directions))
    finally:
        optuna.logging.set_verbosity(verbosity)


def best_trials(trials: Sequence[FrozenTrial], directions: Sequence[str]) -> list[FrozenTrial]:
    """The counted complete trials that no other dominates (`Study.best_trials` of an in-memory study
    holding their values), best first objective first, ties by number."""
    done = complete_trials(trials)
    if not done:
        return []
    study = in_memory_study(directions)
    study.add_trials([create_trial(values=list(t.values)) for t in done])  # numbered 0.. like `done`
    front = [done[t.number] for t in study.best_trials]
    sign = 1.0 if directions[0] == "maximize" else -1.0
    return sorted(front, key=lambda t: (-sign * t.values[0], t.number))
