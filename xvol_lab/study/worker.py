"""A study worker: the loop of `lab.py study run`. Several may share one study (same storage).

Each round: fail and queue again the trials whose worker stopped (heartbeat), count the budget
(`xvol_lab.study.ledger`), ask Optuna for a trial, pick its architecture in this process
(`suggest_spec`), train it in a trial process (`xvol_lab.study.trial`) while recording a heartbeat
and showing progress, then tell the study how it ended, with user attrs: every metric of
result.json, ``params_m``, ``latency_ms``, ``arch``, ``run_dir`` and ``fail_reason`` /
``prune_reason``. Stops when n_trials counted trials have finished.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from xvol_lab.config import RunConfig
from xvol_lab.schema import to_dict
from xvol_lab.study.config import MEASURED, StudyConfig
from xvol_lab.study.files import LOG, PROGRESS, REQUEST, RESULT, read_json, write_json
from xvol_lab.study.launch import start_trial, stop_trial, trial_command
from xvol_lab.study.ledger import VOID, Tally, is_fresh, slots, tally
from xvol_lab.study.progress import LogView, StudyState, View, best_text, remaining_seconds
from xvol_lab.study.samplers import PlannedSampler, base_sampler_factory, make_pruner
from xvol_lab.study.space import suggest_spec
from xvol_lab.study.storage import default_storage_url, join_study, open_storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How a trial ended: state, reason (pruned/failed), objective values, attrs for the storage."""

    state: Literal["complete", "pruned", "failed"]
    reason: str | None = None
    values: list[float] | None = None
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)


class Heartbeat:
    """Records the heartbeat of one trial every `interval` seconds while in the `with` block."""

    def __init__(self, storage: RDBStorage, trial_id: int, interval: int) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="xvol-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as err:  # a storage hiccup: the next beat may get through
                log.warning("heartbeat of trial id %d not recorded: %s", self.trial_id, err)

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _exit_text(code: int) -> str:
    if code < 0:
        import signal

        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exited with code {code}"


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def read_outcome(trial_dir: Path, returncode: int) -> Outcome:
    """The outcome in trial_dir/result.json, or a failure naming how the trial process ended."""
    result = read_json(trial_dir / RESULT)
    if result is None or result.get("state") not in ("complete", "pruned", "failed"):
        last = _last_line(trial_dir / LOG)
        return Outcome("failed", f"trial process {_exit_text(returncode)} without a result"
                       + (f"; last output: {last}" if last else ""))
    attrs = {k: v for k, v in (result.get("metrics") or {}).items()}
    attrs.update({k: result[k] for k in MEASURED if k in result})
    return Outcome(result["state"], result.get("reason"), result.get("values"), attrs)


def run_trial(trial_dir: Path, command: list[str], storage_url: str, view: View,
              poll: float = 0.5) -> Outcome:
    """Run the trial process to its end (showing its progress) and read its outcome."""
    proc = start_trial(command, trial_dir / LOG, storage_url)
    try:
        while True:
            try:
                proc.wait(poll)
                break
            except subprocess.TimeoutExpired:
                view.trial_progress(read_json(trial_dir / PROGRESS))
    finally:
        stop_trial(proc)
    return read_outcome(trial_dir, proc.returncode)


def _distributed(config: RunConfig) -> RunConfig:
    """DDP when the trial spans several processes and the strategy was left to Lightning."""
    t = config.trainer
    if t.devices * t.num_nodes > 1 and t.strategy == "auto":
        return dataclasses.replace(config, trainer=dataclasses.replace(t, strategy="ddp"))
    return config


def _fresh_dir(path: Path) -> Path:
    """`path`, created empty; a leftover folder of the same name (old storage) is moved aside."""
    if path.exists():
        aside = path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("%s exists but its trial is new in the storage: moved to %s", path, aside.name)
        shutil.move(str(path), str(aside))
    path.mkdir(parents=True)
    return path


class Worker:
    """Runs trials of study `name` until its budget is spent (see the module docstring)."""

    def __init__(self, name: str, config: StudyConfig, *, runs: Path = Path("runs"),
                 storage_url: str | None = None, view: View | None = None, poll: float = 2.0) -> None:
        self.name, self.config, self.poll = name, config, poll
        self.folder = runs / name
        self.url = storage_url or default_storage_url(runs, name)
        self.view = view or LogView()
        self.storage = open_storage(self.url, heartbeat=config.heartbeat)
        factory = base_sampler_factory(config.sampler, len(config.objectives))
        self.sampler = PlannedSampler(config.plan, factory, config.sampler.seed)
        self.study = join_study(self.storage, name, config, sampler=self.sampler,
                                pruner=make_pruner(config.pruner, config.budget.epochs))
        self.devices = config.base.trainer.devices
        self.nodes = config.base.trainer.num_nodes
        trial_command(self.folder, self.devices, self.nodes)  # check the resources before any trial

    def _recover(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def _snapshot(self) -> tuple[list[optuna.trial.FrozenTrial], Tally]:
        trials = self.study.get_trials(deepcopy=False)
        t = tally(trials)
        self.view.state(StudyState(self.name, self.config.n_trials, t,
                                   best_text(trials, self.config.metric_names, self.config.directions),
                                   remaining_seconds(trials, self.config.n_trials, t)))
        return trials, t

    def run(self) -> Tally:
        """Run trials until the study has n_trials counted finished trials; the final counts."""
        n = self.config.n_trials
        waiting_logged = False
        while True:
            self._recover()
            _, t = self._snapshot()
            if t.finished >= n:
                return t
            if t.finished + t.running + t.waiting >= n and not t.waiting:
                if not waiting_logged:
                    log.info("%s: the last %d trial(s) run in other workers; waiting for them", self.name,
                             t.running)
                    waiting_logged = True
                time.sleep(self.poll)
                continue
            waiting_logged = False
            self._run_one(n)

    def _run_one(self, n: int) -> None:
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize"
            warnings.simplefilter("ignore", UserWarning)
            trial = self.study.ask()
        with Heartbeat(self.storage, trial._trial_id, self.config.heartbeat):
            trials = self.study.get_trials(deepcopy=False)
            frozen = next(u for u in trials if u.number == trial.number)
            slot = slots(trials).get(trial.number)
            if slot is None or (is_fresh(frozen) and slot >= n):
                self._void(trial, n)
                return
            self._snapshot()  # counts this trial as running
            plan = self.config.plan
            self.sampler.assign(trial.number, plan[slot] if slot < len(plan) else None)
            try:
                outcome = self._train(trial)
            except (KeyboardInterrupt, SystemExit):
                self._interrupted(trial)
                raise
            except Exception as err:  # this process failed around the trial: record it, go on
                log.exception("trial %d: error in the study process", trial.number)
                outcome = Outcome("failed", f"study process error: {type(err).__name__}: {err}")
            self._tell(trial, outcome)

    def _train(self, trial: optuna.Trial) -> Outcome:
        spec = suggest_spec(trial, self.config.space, self.config.base.model)
        run_config = _distributed(self.config.run_config(spec))
        trial_dir = _fresh_dir(self.folder / f"trial_{trial.number}")
        trial.set_user_attr("arch", f"[{', '.join(stage.describe() for stage in spec.stages)}]")
        trial.set_user_attr("run_dir", str(trial_dir.resolve()))
        write_json(trial_dir / REQUEST, {
            "study": self.name, "trial_id": trial._trial_id, "trial_number": trial.number,
            "config": to_dict(run_config), "objectives": self.config.metric_names,
            "report": self.config.metric_names[0] if self.config.pruner.name != "none" else None,
            "pruner": to_dict(self.config.pruner), "epochs": self.config.budget.epochs})
        self.view.trial_started(trial.number, spec.describe())
        command = trial_command(trial_dir, self.devices, self.nodes)
        return run_trial(trial_dir, command, self.url, self.view)

    def _tell(self, trial: optuna.Trial, outcome: Outcome) -> None:
        try:
            for key, value in outcome.attrs.items():
                trial.set_user_attr(key, value)
            if outcome.state == "complete":
                self.study.tell(trial, outcome.values)
            elif outcome.state == "pruned":
                trial.set_user_attr("prune_reason", outcome.reason)
                self.study.tell(trial, state=TrialState.PRUNED)
            else:
                trial.set_user_attr("fail_reason", outcome.reason)
                self.study.tell(trial, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial %d was declared stale by another worker (heartbeat lost) and queued again; "
                        "this result is dropped", trial.number)
            return
        if outcome.state == "complete":
            pairs = zip(self.config.metric_names, outcome.values or [], strict=True)
            text = ", ".join(f"{m} {v:.4f}" for m, v in pairs)
        else:
            text = outcome.reason or ""
        self._snapshot()
        self.view.trial_finished(trial.number, outcome.state, text)

    def _void(self, trial: optuna.Trial, n: int) -> None:
        """A trial created past the budget (another worker took the last slot): failed, not counted."""
        self.storage.set_trial_system_attr(trial._trial_id, VOID, True)
        trial.set_user_attr("fail_reason", f"not run: the budget of {n} trials was taken by other workers")
        self.study.tell(trial, state=TrialState.FAIL)

    def _interrupted(self, trial: optuna.Trial) -> None:
        """This worker is stopping mid-trial: fail the trial and queue it again."""
        try:
            self.study.tell(trial, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # already failed and queued again by another worker
        frozen = self.storage.get_trial(trial._trial_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            RetryHeartbeatStaleTrialCallback()(self.study, frozen)
        log.warning("trial %d interrupted; it is queued again and runs when the study resumes", trial.number)


def run_study(name: str, config: StudyConfig, *, runs: Path = Path("runs"), storage_url: str | None = None,
              view: View | None = None) -> Tally:
    """Work on study `name` until its budget is spent; returns the final counts."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker = Worker(name, config, runs=runs, storage_url=storage_url, view=view)
    try:
        return worker.run()
    finally:
        worker.view.close()
