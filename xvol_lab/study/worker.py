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
import logging
import shutil
import subprocess
import threading
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from xvol_lab.config import RunConfig
from xvol_lab.schema import to_dict
from xvol_lab.study.config import StudyConfig
from xvol_lab.study.files import LOG, PROGRESS, REQUEST, read_json, write_json
from xvol_lab.study.launch import start_trial, stop_trial, trial_command
from xvol_lab.study.ledger import VOID, Tally, is_fresh, slots, tally
from xvol_lab.study.outcome import Outcome, combine, finished_outcome, read_outcome
from xvol_lab.study.progress import LogView, StudyState, View, best_text, remaining_seconds
from xvol_lab.study.samplers import PlannedSampler, base_sampler_factory, make_pruner
from xvol_lab.study.space import suggest_spec
from xvol_lab.study.storage import default_storage_url, join_study, open_storage

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
        self.storage = open_storage(self.url, heartbeat=config.heartbeat)
        factory = base_sampler_factory(config.sampler, len(config.objectives))
        self.sampler = PlannedSampler(config.plan, factory, config.sampler.seed)
        self.study = join_study(self.storage, name, config, sampler=self.sampler,
                                pruner=make_pruner(config.pruner, self.steps))
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
        """Train the trial's configuration once per seed (stopping at the first seed that does not
        complete) and combine the seeds' outcomes (`xvol_lab.study.outcome.combine`)."""
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
            runs.append((seed, outcome))
            if outcome.state != "complete":
                break
        return combine(runs, len(seeds))

    def _trial_dir(self, trial: optuna.Trial) -> Path:
        """The folder of the configuration: a retry continues the folder of the trial it retries
        (its finished seeds are kept); a new trial gets trial_<n>, created empty."""
        frozen = next(t for t in self.study.get_trials(deepcopy=False) if t.number == trial.number)
        inherited = frozen.user_attrs.get("trial_dir")
        if not is_fresh(frozen) and inherited and Path(inherited).is_dir():
            return Path(inherited)
        return _fresh_dir(self.folder / f"trial_{trial.number}")

    def _train_seed(self, trial: optuna.Trial, run_dir: Path, run_config: RunConfig, index: int) -> Outcome:
        """Train one seed of the configuration in `run_dir` (a trial-process run folder)."""
        if run_dir.exists():  # an attempt interrupted before its result: start this seed over
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        epochs = self.config.budget.epochs
        write_json(run_dir / REQUEST, {
            "study": self.name, "trial_id": trial._trial_id, "trial_number": trial.number,
            "seed": run_config.seed, "config": to_dict(run_config), "objectives": self.config.metric_names,
            "report": self.config.metric_names[0] if self.config.pruner.name != "none" else None,
            "pruner": to_dict(self.config.pruner), "epochs": epochs, "step_offset": index * epochs,
            "steps": self.steps})
        command = trial_command(run_dir, self.devices, self.nodes)
        return run_trial(run_dir, command, self.url, self.view)

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
