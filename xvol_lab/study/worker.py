"""A study worker: the loop of `lab.py study run`. Several may share one study (same storage).

Each round, under the study lock: recover the trials whose worker stopped, count the budget
(`xvol_lab.study.ledger`) and claim a trial (`xvol_lab.study.protocol`); then pick its architecture
in this process (`suggest_spec`), train it once per seed (`xvol_lab.study.seeds`) while recording a
heartbeat and showing progress, and tell the study how the configuration ended
(`xvol_lab.study.outcome`): values = mean over seeds, user attrs ``seeds``, ``per_seed``, every
metric's mean, ``arch``, ``trial_dir``, ``run_dir`` (the first seed's run folder) and
``fail_reason`` / ``prune_reason``. Stops when n_trials counted trials (configurations) have finished.
While the last trials run in other workers, a worker trains the seeds they offer (`seed_share`)
before it waits.

``python -m xvol_lab.study.worker STUDY --runs DIR [--set KEY=VALUE ...]`` runs one worker on the
storage named by $XVOL_STORAGE: the process `lab.py study run --workers K` starts K times
(`xvol_lab.study.pool`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import optuna

from xvol_lab.allocator import keep_freed_memory
from xvol_lab.data.config import check_batches
from xvol_lab.errors import ConfigError
from xvol_lab.quiet import log_to_stderr
from xvol_lab.study import roles, signals
from xvol_lab.study.config import StudyConfig, load_study_config
from xvol_lab.study.environment import build_failure_text
from xvol_lab.study.launch import trial_command, watch_lifeline
from xvol_lab.study.ledger import Tally, tally
from xvol_lab.study.outcome import Outcome
from xvol_lab.study.progress import LogView, StudyState, View, best_text, remaining_seconds
from xvol_lab.study.protocol import Claim, SharedStudy
from xvol_lab.study.samplers import PlannedSampler, base_sampler_factory, make_pruner
from xvol_lab.study.seeds import SeedRunner, fresh_dir, seed_dir
from xvol_lab.study.signals import deferred
from xvol_lab.study.storage import STORAGE_ENV, default_storage_url, open_storage

log = logging.getLogger(__name__)


class Worker:
    """Runs trials of study `name` until its budget is spent (see the module docstring)."""

    def __init__(self, name: str, config: StudyConfig, *, runs: Path = Path("runs"),
                 storage_url: str | None = None, view: View | None = None, poll: float = 2.0) -> None:
        self.name, self.config, self.poll = name, config, poll
        self.folder = runs / name
        url = storage_url or default_storage_url(runs, name)
        self.view = view or LogView()
        trainer = config.base.trainer
        trial_command(self.folder, trainer.devices, trainer.num_nodes)  # check the resources before any trial
        check_batches(config.base.data, trainer.devices * trainer.num_nodes, "base.data.")
        storage = open_storage(url, heartbeat=config.heartbeat, max_retries=config.budget.max_retries)
        factory = base_sampler_factory(config.sampler, len(config.objectives))
        self.sampler = PlannedSampler([item.point for item in config.schedule], factory, config.sampler.seed)
        pruner = make_pruner(config.pruner, config.budget.epochs * config.budget.max_seeds)
        self.shared = SharedStudy(storage, url, name, config, self.sampler, pruner)
        self.seeds = SeedRunner(name, config, url, self.view)

    def _snapshot(self) -> Tally:
        trials = self.shared.trials()
        t = tally(trials)
        self.view.state(StudyState(self.name, self.config.n_trials, t,
                                   best_text(trials, self.config.metric_names, self.config.directions),
                                   remaining_seconds(trials, self.config.n_trials, t),
                                   build_failure_text(trials)))
        return t

    def run(self) -> Tally:
        """Run trials until the study has n_trials counted finished trials; the final counts."""
        n = self.config.n_trials
        shared = self.shared
        waiting_logged = False
        while True:
            claim = None
            try:
                with deferred(), shared.lock.held():
                    shared.recover()
                    t = self._snapshot()
                    if t.finished >= n:
                        return t
                    busy = t.finished + t.running + t.waiting >= n and not t.waiting
                    claim = None if busy else shared.claim(n)
            except KeyboardInterrupt:  # a stop signal held during the locked step: hand its trial back
                if claim is not None:
                    with deferred(), shared.lock.held():
                        shared.hand_back(claim.trial.number, "stop signal", planned=True)
                raise
            if busy:
                if self.seeds.help(self.folder):  # a seed of a running trial (`seed_share`)
                    continue
                if not waiting_logged:
                    log.info("%s: the last %d trial(s) run in other workers; waiting for them", self.name,
                             t.running)
                    waiting_logged = True
                time.sleep(self.poll)
                continue
            waiting_logged = False
            if claim is not None:
                self._run_claimed(claim)

    def _run_claimed(self, claim: Claim) -> None:
        trial, shared = claim.trial, self.shared
        with shared.heartbeat(claim):
            self._snapshot()  # counts this trial as running
            plan = self.config.schedule
            item = plan[claim.slot] if claim.slot < len(plan) else None
            self.sampler.assign(trial.number, item.point if item else None)
            try:
                outcome = self._train(trial, item.role if item else None)
            except (KeyboardInterrupt, SystemExit):
                with deferred(), shared.lock.held():
                    shared.hand_back(trial.number, "stop signal to the study process", planned=True)
                log.warning("trial %d interrupted by a stop signal (planned, not counted against "
                            "budget.max_retries); it is queued again and continues when the study resumes",
                            trial.number)
                raise
            except Exception as err:  # this process failed around the trial: record it, go on
                log.exception("trial %d: error in the study process", trial.number)
                outcome = Outcome("failed", f"study process error: {type(err).__name__}: {err}")
            if outcome.state == "interrupted":
                log.warning("trial %d: %s (planned stop, not counted against budget.max_retries); it is "
                            "queued again", trial.number, outcome.reason)
                with deferred(), shared.lock.held():
                    shared.hand_back(trial.number, outcome.reason or "interrupted", planned=True)
            else:
                with deferred():
                    self._tell(trial, outcome)

    def _train(self, trial: optuna.Trial, role: str | None) -> Outcome:
        """Pick the trial's architecture (a control's from the study file), record it, and train it
        once per seed (`SeedRunner`), stopping early where the seed design allows (`roles`)."""
        spec = roles.trial_spec(self.config, trial, role)
        seeds = roles.trial_seeds(self.config, role)
        trial_dir = self.shared.inherited_dir(trial.number) or fresh_dir(self.folder / f"trial_{trial.number}")
        trial.set_user_attr("arch", f"[{', '.join(stage.describe() for stage in spec.stages)}]")
        trial.set_user_attr("trial_dir", str(trial_dir.resolve()))
        trial.set_user_attr("run_dir", str(seed_dir(trial_dir, seeds[0]).resolve()))
        return self.seeds.run(trial.number, spec, trial_dir, seeds=seeds,
                              order_seeds=roles.trial_order_seeds(self.config, role),
                              decided=roles.stop_rule(self.config, self.shared.trials, role),
                              prune=role not in self.config.controls.roles)

    def _tell(self, trial: optuna.Trial, outcome: Outcome) -> None:
        """Tell the study how the trial ended and show it (`SharedStudy.tell`)."""
        if not self.shared.tell(trial, outcome):
            return
        if outcome.state == "complete":
            pairs = zip(self.config.metric_names, outcome.values or [], strict=True)
            text = ", ".join(f"{m} {v:.4f}" for m, v in pairs)
        else:
            text = outcome.reason or ""
        self._snapshot()
        self.view.trial_finished(trial.number, outcome.state, text)


def run_study(name: str, config: StudyConfig, *, runs: Path = Path("runs"), storage_url: str | None = None,
              view: View | None = None) -> Tally:
    """Work on study `name` until its budget is spent; returns the final counts."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker = Worker(name, config, runs=runs, storage_url=storage_url, view=view)
    try:
        return worker.run()
    finally:
        worker.view.close()


def work(name: str, config: StudyConfig, *, runs: Path, storage_url: str, view: View) -> Tally:
    """`run_study` with the stop signals handled: SIGTERM, SIGUSR1 and Ctrl-C hand the running trial
    back (`xvol_lab.study.signals`)."""
    restore = signals.install()
    try:
        return run_study(name, config, runs=runs, storage_url=storage_url, view=view)
    finally:
        restore()


def main(argv: list[str] | None = None) -> int:
    """Entry point of a worker of `lab.py study run --workers K` (module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m xvol_lab.study.worker")
    parser.add_argument("study", help="a study in studies/ or a path to a study YAML file")
    parser.add_argument("--runs", type=Path, required=True, help="the runs folder")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    log_to_stderr()
    keep_freed_memory()
    watch_lifeline()  # stop with the study process that started this worker
    try:
        name, config = load_study_config(args.study, args.overrides)
        url = os.environ.get(STORAGE_ENV) or default_storage_url(args.runs, name)
        work(name, config, runs=args.runs, storage_url=url, view=LogView())
    except ConfigError as err:
        print(f"xvol_lab.study.worker: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
