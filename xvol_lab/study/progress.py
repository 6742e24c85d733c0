"""What a study worker shows while it runs: a live panel on a terminal, log lines otherwise.

Both views take the same calls from the worker: `state` (counts, best value, estimate of the time
left), `trial_started`, `trial_progress` (the trial process's progress.json), `trial_finished`.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Protocol

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from xvol_lab.study.ledger import Tally, counted
from xvol_lab.study.standing import best_trials

log = logging.getLogger("xvol_lab.study")


@dataclass(frozen=True)
class StudyState:
    """A snapshot of the shared study, for display."""

    name: str
    n_trials: int
    tally: Tally
    best: str
    remaining_s: float | None
    kernel_failures: str = ""  # `xvol_lab.study.environment.build_failure_text` of the trials, '' if none


def format_duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def best_text(trials: list[FrozenTrial], metrics: list[str], directions: list[str]) -> str:
    """``val/acc1 0.8125 (trial 3)``, or the Pareto front size with several objectives."""
    done = [t for t in counted(trials) if t.state == TrialState.COMPLETE and t.values is not None]
    if not done:
        return "no complete trial yet"
    if len(metrics) > 1:
        front = best_trials(done, directions)
        return f"Pareto front: {len(front)} trial(s) ({', '.join(str(t.number) for t in front[:8])})"
    sign = 1.0 if directions[0] == "maximize" else -1.0
    best = max(done, key=lambda t: sign * t.values[0])
    return f"{metrics[0]} {best.values[0]:.4f} (trial {best.number})"


def remaining_seconds(trials: list[FrozenTrial], n_trials: int, tally: Tally) -> float | None:
    """Mean trial duration times the trials left, shared among the running workers."""
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in counted(trials)
                 if t.datetime_complete and t.datetime_start and t.state != TrialState.FAIL]
    if not durations:
        return None
    left = max(0, n_trials - tally.finished)
    return statistics.mean(durations) * left / max(1, tally.running)


class View(Protocol):
    """The calls a worker makes."""

    def state(self, state: StudyState) -> None: ...
    def trial_started(self, number: int, arch: str) -> None: ...
    def trial_progress(self, progress: dict[str, Any] | None) -> None: ...
    def trial_finished(self, number: int, state: str, text: str) -> None: ...
    def close(self) -> None: ...


class LogView:
    """One log line per trial start and end (for files and CI logs)."""

    def __init__(self) -> None:
        self._state: StudyState | None = None
        self._started = time.time()

    def state(self, state: StudyState) -> None:
        if state.kernel_failures and state.kernel_failures != (self._state and self._state.kernel_failures):
            log.warning("%s: %s", state.name, state.kernel_failures)
        self._state = state

    def trial_started(self, number: int, arch: str) -> None:
        done = self._state.tally.finished if self._state else 0
        total = self._state.n_trials if self._state else "?"
        log.info("trial %d started (%d/%s finished): %s", number, done, total, arch)

    def trial_progress(self, progress: dict[str, Any] | None) -> None:
        pass

    def trial_finished(self, number: int, state: str, text: str) -> None:
        extra = ""
        if self._state is not None:
            extra = (f" | best {self._state.best} | elapsed {format_duration(time.time() - self._started)}, "
                     f"~{format_duration(self._state.remaining_s)} left")
        log.info("trial %d %s: %s%s", number, state, text, extra)

    def close(self) -> None:
        pass


class LiveView:
    """A rich panel: trial i/N, the running trial's epoch and batch, best value, elapsed and left."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._state: StudyState | None = None
        self._trial: tuple[int, str] | None = None
        self._progress: dict[str, Any] | None = None
        self._trial_started = time.time()
        self._started = time.time()
        self._live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
        self._live.start()

    def _render(self) -> Table:
        table = Table.grid(padding=(0, 1))
        s = self._state
        if s is not None:
            t = s.tally
            counts = (f" {t.finished}/{s.n_trials} finished ({t.complete} complete, {t.pruned} pruned, "
                      f"{t.failed} failed; {t.running} running)")
            table.add_row(Text.assemble((s.name, "bold"), counts))
            table.add_row(Text(f"best {s.best}"))
            if s.kernel_failures:
                table.add_row(Text(s.kernel_failures, style="bold yellow"))
            table.add_row(Text(f"elapsed {format_duration(time.time() - self._started)}, "
                               f"~{format_duration(s.remaining_s)} left"))
        if self._trial is not None:
            number, arch = self._trial
            p = self._progress or {}
            where = "starting"
            if p.get("epoch"):
                where = f"epoch {p['epoch']}/{p.get('epochs', '?')}"
                if p.get("batches"):
                    where += f", batch {p.get('batch', 0)}/{p['batches']}"
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted((p.get("metrics") or {}).items()))
            table.add_row(Text(f"trial {number}: {arch}"))
            table.add_row(Text(f"  {where} ({format_duration(time.time() - self._trial_started)})"
                               + (f"  last val: {metrics}" if metrics else "")))
        return table

    def _refresh(self) -> None:
        self._live.update(self._render(), refresh=True)

    def state(self, state: StudyState) -> None:
        self._state = state
        self._refresh()

    def trial_started(self, number: int, arch: str) -> None:
        self._trial, self._progress, self._trial_started = (number, arch), None, time.time()
        self._refresh()

    def trial_progress(self, progress: dict[str, Any] | None) -> None:
        self._progress = progress
        self._refresh()

    def trial_finished(self, number: int, state: str, text: str) -> None:
        self._trial = None
        self.console.print(Text(f"trial {number} {state}: {text}"))
        self._refresh()

    def close(self) -> None:
        self._live.stop()


def make_view(live: bool | None = None) -> View:
    """A live panel when stderr is a terminal (or `live` is True), else log lines."""
    console = Console(stderr=True)
    if live if live is not None else console.is_terminal:
        return LiveView(console)
    return LogView()
