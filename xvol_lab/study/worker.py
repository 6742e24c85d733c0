"""A study worker: the loop of `lab.py study run`. Several may share one study (same storage).

Each round: fail and queue again the trials whose worker stopped (heartbeat), count the budget
(`xvol_lab.study.ledger`), ask Optuna for a trial, pick its architecture in this process
(`suggest_spec`), train it once per seed (budget.seeds), each seed in a trial process
(`xvol_lab.study.trial`) with its run folder trial_<n>/seed_<s>/, while recording a heartbeat and
showing progress, then tell the study how the configuration ended (`xvol_lab.study.outcome`):
values = mean over seeds, user attrs ``seeds``, ``per_seed``, every metric's mean, ``arch``,
``trial_dir``, ``run_dir`` (the first seed's run folder) and ``fail_reason`` / ``prune_reason``.
Stops when n_trials counted trials (configurations) have finished.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import shutil
import subprocess
import threading
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from xvol_lab.schema import to_dict
from xvol_lab.study.config import StudyConfig
from xvol_lab.study.faults import fault_point
from xvol_lab.study.files import LOG, PROGRESS, REQUEST, read_json, write_json
from xvol_lab.study.launch import start_trial, stop_trial, trial_command
from xvol_lab.study.ledger import STARTED, VOID, Tally, is_fresh, retry_callback, retry_history, slots, tally
from xvol_lab.study.lock import StudyLock
from xvol_lab.study.outcome import Outcome, combine, finished_outcome, read_outcome
from xvol_lab.study.progress import LogView, StudyState, View, best_text, remaining_seconds
from xvol_lab.study.samplers import PlannedSampler, base_sampler_factory, make_pruner
from xvol_lab.study.signals import deferred
from xvol_lab.study.space import suggest_spec
from xvol_lab.study.storage import default_storage_url, grace_seconds, join_study, open_storage, sqlite_file
from xvol_lab.tasks.config import RunConfig
from xvol_lab.tasks.runner import CHECKPOINT_DIR

log = logging.getLogger(__name__)


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


def seed_dir(trial_dir: Path, seed: int) -> Path:
    """The run folder of `seed` in a trial folder."""
    return trial_dir / f"seed_{seed}"


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
        self.steps = config.budget.epochs * config.budget.seeds  # pruning steps of one configuration
        self.storage = open_storage(self.url, heartbeat=config.heartbeat,
                                    max_retries=config.budget.max_retries)
        self.lock = StudyLock(sqlite_file(self.url))
        factory = base_sampler_factory(config.sampler, len(config.objectives))
        self.sampler = PlannedSampler(config.plan, factory, config.sampler.seed)
        self.study = join_study(self.storage, name, config, sampler=self.sampler,
                                pruner=make_pruner(config.pruner, self.steps))
        self.study_id = self.storage.get_study_id_from_name(name)
        self.devices = config.base.trainer.devices
        self.nodes = config.base.trainer.num_nodes
        trial_command(self.folder, self.devices, self.nodes)  # check the resources before any trial

    def _id(self, number: int) -> int:
        """The storage's id of trial `number` (for heartbeats and system attrs)."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def _recover(self) -> None:
        """Fail and queue again the trials whose worker is gone: heartbeat older than the grace
        period (Optuna), or asked for and never started (no heartbeat: killed right after the ask)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace_seconds(self.config.heartbeat))
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            started = t.system_attrs.get(STARTED) == t.number  # a retry inherits its original's mark
            if not started and t.datetime_start is not None and t.datetime_start < cutoff:
                log.warning("trial %d was asked for by a worker that stopped before its first heartbeat",
                            t.number)
                self._hand_back(t.number)

    def _hand_back(self, number: int, reason: str = "interrupted") -> None:
        """Fail trial `number` and queue it again (the retry continues its folder), unless another
        worker failed it first, or it was retried budget.max_retries times already (then it stays
        failed with `reason` and counts). Under the lock; the state change is atomic in the storage."""
        trial_id = self._id(number)
        retries = self.config.budget.max_retries
        frozen = self.storage.get_trial(trial_id)
        if frozen.state.is_finished():
            return
        if len(retry_history(frozen)) >= retries:
            self.storage.set_trial_user_attr(trial_id, "fail_reason",
                                             f"{reason}; not retried (budget.max_retries is {retries})")
        try:
            if not self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                return
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # failed (and queued again) by another worker
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry_callback(retries)(self.study, self.storage.get_trial(trial_id))

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
            claim = None
            try:
                with deferred(), self.lock.held():
                    self._recover()
                    _, t = self._snapshot()
                    if t.finished >= n:
                        return t
                    busy = t.finished + t.running + t.waiting >= n and not t.waiting
                    claim = None if busy else self._claim(n)
            except KeyboardInterrupt:  # a stop signal held during the locked step: hand its trial back
                if claim is not None:
                    with deferred(), self.lock.held():
                        self._hand_back(claim[0].number)
                raise
            if busy:
                if not waiting_logged:
                    log.info("%s: the last %d trial(s) run in other workers; waiting for them", self.name,
                             t.running)
                    waiting_logged = True
                time.sleep(self.poll)
                continue
            waiting_logged = False
            if claim is not None:
                self._run_claimed(*claim)

    def _claim(self, n: int) -> tuple[optuna.Trial, int, int] | None:
        """Ask for a trial, record its first heartbeat and mark it started, then take its slot:
        (trial, id, slot), or None when it is over the budget (voided). Called under the lock."""
        with warnings.catch_warnings():  # "heartbeat is supposed to be used with Study.optimize"
            warnings.simplefilter("ignore", UserWarning)
            trial = self.study.ask()
        fault_point("after_ask")
        trial_id = self._id(trial.number)
        self.storage.record_heartbeat(trial_id)
        self.storage.set_trial_system_attr(trial_id, STARTED, trial.number)
        slot = slots(self.study.get_trials(deepcopy=False)).get(trial.number)
        if slot is None or slot >= n:
            self._void(trial, trial_id, n)
            fault_point("after_void")
            return None
        return trial, trial_id, slot

    def _run_claimed(self, trial: optuna.Trial, trial_id: int, slot: int) -> None:
        with Heartbeat(self.storage, trial_id, self.config.heartbeat):
            self._snapshot()  # counts this trial as running
            plan = self.config.plan
            self.sampler.assign(trial.number, plan[slot] if slot < len(plan) else None)
            try:
                outcome = self._train(trial)
            except (KeyboardInterrupt, SystemExit):
                with deferred(), self.lock.held():
                    self._hand_back(trial.number)
                log.warning("trial %d interrupted; it is queued again and continues when the study resumes",
                            trial.number)
                raise
            except Exception as err:  # this process failed around the trial: record it, go on
                log.exception("trial %d: error in the study process", trial.number)
                outcome = Outcome("failed", f"study process error: {type(err).__name__}: {err}")
            if outcome.state == "interrupted":
                log.warning("trial %d: %s; it is queued again", trial.number, outcome.reason)
                with deferred(), self.lock.held():
                    self._hand_back(trial.number, outcome.reason or "interrupted")
            else:
                with deferred():
                    self._tell(trial, outcome)

    def _train(self, trial: optuna.Trial) -> Outcome:
        """Train the trial's configuration once per seed (stopping at the first seed that does not
        complete) and combine the seeds' outcomes (`xvol_lab.study.outcome.combine`). Seeds that
        finished in an interrupted attempt are kept; an interrupted seed continues from its last
        checkpoint."""
        spec = suggest_spec(trial, self.config.space, self.config.base.model)
        trial_dir = self._trial_dir(trial)
        seeds = self.config.seeds
        trial.set_user_attr("arch", f"[{', '.join(stage.describe() for stage in spec.stages)}]")
        trial.set_user_attr("trial_dir", str(trial_dir.resolve()))
        trial.set_user_attr("run_dir", str(seed_dir(trial_dir, seeds[0]).resolve()))
        runs: list[tuple[int, Outcome]] = []
        for index, seed in enumerate(seeds):
            run_dir = seed_dir(trial_dir, seed)
            outcome = finished_outcome(run_dir)
            if outcome is not None:
                log.info("trial %d: seed %d finished in an earlier attempt (%s); kept", trial.number, seed,
                         outcome.state)
            else:
                label = spec.describe() + (f" seed {seed}" if len(seeds) > 1 else "")
                self.view.trial_started(trial.number, label)
                outcome = self._train_seed(trial, run_dir, _distributed(self.config.run_config(spec, seed)),
                                           index)
                if outcome.state == "interrupted":
                    return outcome
            runs.append((seed, outcome))
            if outcome.state != "complete":
                break
        return combine(runs, len(seeds))

    def _trial_dir(self, trial: optuna.Trial) -> Path:
        """The folder of the configuration: a retry continues the folder of the trial it retries;
        a new trial gets trial_<n>, created empty."""
        frozen = self.storage.get_trial(self._id(trial.number))
        inherited = frozen.user_attrs.get("trial_dir")
        if not is_fresh(frozen) and inherited and Path(inherited).is_dir():
            return Path(inherited)
        return _fresh_dir(self.folder / f"trial_{trial.number}")

    def _train_seed(self, trial: optuna.Trial, run_dir: Path, run_config: RunConfig, index: int) -> Outcome:
        """Train one seed of the configuration in `run_dir` (a trial-process run folder): from its
        last checkpoint when an earlier attempt left one, else from the start."""
        resume = None
        if (run_dir / CHECKPOINT_DIR / "last.ckpt").is_file():
            resume = "last"
            log.info("trial %d: %s continues from its last checkpoint", trial.number, run_dir.name)
        elif run_dir.exists():  # interrupted before its first checkpoint: start over, keep the log
            for entry in run_dir.iterdir():
                if entry.is_dir():
                    shutil.rmtree(entry)
                elif entry.name != LOG:
                    entry.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        epochs = self.config.budget.epochs
        write_json(run_dir / REQUEST, {
            "study": self.name, "trial_number": trial.number, "seed": run_config.seed,
            "config": to_dict(run_config), "objectives": self.config.metric_names,
            "report": self.config.metric_names[0] if self.config.pruner.name != "none" else None,
            "pruner": to_dict(self.config.pruner), "epochs": epochs, "step_offset": index * epochs,
            "steps": self.steps, "resume": resume})
        command = trial_command(run_dir, self.devices, self.nodes)
        return run_trial(run_dir, command, self.url, self.view)

    def _tell(self, trial: optuna.Trial, outcome: Outcome) -> None:
        """Tell the study how the trial ended (with its attrs). A trial that another worker failed
        meanwhile (heartbeat lost) is left as it is: its retry finds this attempt's seed results."""
        fault_point("in_tell")
        try:
            for key, value in outcome.attrs.items():
                trial.set_user_attr(key, value)
            if outcome.state == "complete":
                self.study.tell(trial, outcome.values, skip_if_finished=True)
            elif outcome.state == "pruned":
                trial.set_user_attr("prune_reason", outcome.reason)
                self.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            else:
                trial.set_user_attr("fail_reason", outcome.reason)
                self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial %d was declared stale by another worker (heartbeat lost) and queued again; "
                        "its retry keeps this attempt's finished seeds", trial.number)
            return
        if outcome.state == "complete":
            pairs = zip(self.config.metric_names, outcome.values or [], strict=True)
            text = ", ".join(f"{m} {v:.4f}" for m, v in pairs)
        else:
            text = outcome.reason or ""
        self._snapshot()
        self.view.trial_finished(trial.number, outcome.state, text)

    def _void(self, trial: optuna.Trial, trial_id: int, n: int) -> None:
        """A trial over the budget (another worker took the last slot, or the retry of such a
        trial): failed at once and not counted."""
        self.storage.set_trial_system_attr(trial_id, VOID, True)
        trial.set_user_attr("fail_reason", f"not run: the budget of {n} trials was taken by other workers")
        self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


def run_study(name: str, config: StudyConfig, *, runs: Path = Path("runs"), storage_url: str | None = None,
              view: View | None = None) -> Tally:
    """Work on study `name` until its budget is spent; returns the final counts."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker = Worker(name, config, runs=runs, storage_url=storage_url, view=view)
    try:
        return worker.run()
    finally:
        worker.view.close()
