"""The per-seed runner: train one configuration once per seed, each seed in a trial process.

Seed s of a trial runs in its run folder trial_<n>/seed_<s>/: the study process writes the seed's
`TrialRequest` there (trial.json), starts ``python -m xvol_lab.study.trial RUN_DIR``
(`xvol_lab.study.launch`), shows its progress, and reads its outcome (`xvol_lab.study.outcome`).
Seeds that finished in an interrupted attempt are kept; an interrupted seed continues from its last
checkpoint (from best.ckpt, or from the start, when last.ckpt does not load, and the log says so);
the first seed that does not complete ends the configuration. A configuration whose seeds all run
is offered to the other workers on this machine, which train its last seeds when they have no
trial left (`xvol_lab.study.seed_share`).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from xvol_lab.models import BackboneSpec
from xvol_lab.study import seed_share
from xvol_lab.study.config import StudyConfig
from xvol_lab.study.files import LOG, PROGRESS, read_json
from xvol_lab.study.launch import start_trial, stop_trial, trial_command
from xvol_lab.study.outcome import Outcome, TrialRequest, combine, finished_outcome, read_outcome, write_request
from xvol_lab.study.progress import View
from xvol_lab.study.seed_share import CLAIM
from xvol_lab.tasks.config import RunConfig
from xvol_lab.tasks.runner import CHECKPOINT_DIR

log = logging.getLogger(__name__)


def seed_dir(trial_dir: Path, seed: int) -> Path:
    """The run folder of `seed` in a trial folder."""
    return trial_dir / f"seed_{seed}"


def fresh_dir(path: Path) -> Path:
    """`path`, created empty; a leftover folder of the same name (old storage) is moved aside."""
    if path.exists():
        aside = path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("%s exists but its trial is new in the storage: moved to %s", path, aside.name)
        shutil.move(str(path), str(aside))
    path.mkdir(parents=True)
    return path


def run_trial(run_dir: Path, command: list[str], storage_url: str, view: View, poll: float = 0.2,
              pass_fds: tuple[int, ...] = ()) -> Outcome:
    """Run the trial process to its end (showing its progress) and read its outcome; `pass_fds` stay
    open in it (the seed's claim)."""
    proc = start_trial(command, run_dir / LOG, storage_url, pass_fds=pass_fds)
    try:
        while True:
            try:
                proc.wait(poll)
                break
            except subprocess.TimeoutExpired:
                view.trial_progress(read_json(run_dir / PROGRESS))
    finally:
        stop_trial(proc)
    return read_outcome(run_dir, proc.returncode)


def distributed(config: RunConfig) -> RunConfig:
    """DDP when the trial spans several processes and the strategy was left to Lightning."""
    t = config.trainer
    if t.devices * t.num_nodes > 1 and t.strategy == "auto":
        return dataclasses.replace(config, trainer=dataclasses.replace(t, strategy="ddp"))
    return config


def loads(path: Path) -> bool:
    """`path` is a whole checkpoint (torch's zip archive, every member intact): not one cut short by
    a kill mid-write or a full disk."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def prepare_run_dir(run_dir: Path, number: int) -> str | None:
    """Make `run_dir` ready for a seed's trial process: "last" when an earlier attempt left a last
    checkpoint (continue from it); the path of best.ckpt when last.ckpt does not load (moved aside
    as last.ckpt.unreadable: continue from that earlier epoch); else emptied but for the log
    (interrupted before its first checkpoint, or no checkpoint loads: start over), or created. The
    seed's claim file stays (`xvol_lab.study.seed_share`)."""
    checkpoints = run_dir / CHECKPOINT_DIR
    last, best = checkpoints / "last.ckpt", checkpoints / "best.ckpt"
    if last.is_file() and loads(last):
        log.info("trial %d: %s continues from its last checkpoint", number, run_dir.name)
        return "last"
    if last.is_file():
        last.replace(last.with_name("last.ckpt.unreadable"))
        if best.is_file() and loads(best):
            log.warning("trial %d: %s: last.ckpt does not load (cut short?); continues from best.ckpt, an "
                        "earlier epoch (the bad file is kept as last.ckpt.unreadable)", number, run_dir.name)
            return str(best.resolve())
        log.warning("trial %d: %s: last.ckpt does not load (cut short?) and no earlier checkpoint does; "
                    "the seed starts over", number, run_dir.name)
    if run_dir.exists():
        for entry in run_dir.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.name not in (LOG, CLAIM):
                entry.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


@dataclass(frozen=True)
class SeedRunner:
    """Trains the configurations of study `study` (its `config`) in trial processes."""

    study: str
    config: StudyConfig
    storage_url: str
    view: View
    poll: float = 1.0  # seconds between looks at seeds that other workers train

    def run(self, number: int, spec: BackboneSpec, trial_dir: Path, *, seeds: Sequence[int] | None = None,
            order_seeds: Sequence[int] | None = None, decided: Callable[[list[float]], bool] | None = None,
            prune: bool = True) -> Outcome:
        """Train trial `number`'s `spec` once per seed (module docstring; `seeds`, default the study's)
        and combine the seeds' outcomes (`xvol_lab.study.outcome.combine`); an interrupted seed's
        outcome as it is. `order_seeds` (one per seed) gives the runs' training orders, where they do
        not follow their seeds. `decided` (the first objective's values so far -> bool) ends the seeds
        early once it says so; `prune` False keeps the pruner away (the controls). Where neither can
        end the seeds early, other workers on this machine may train some (`seed_share`)."""
        seeds = list(self.config.seeds if seeds is None else seeds)
        orders = [None] * len(seeds) if order_seeds is None else list(order_seeds)
        requests = {seed: self._request(number, self.config.run_config(spec, seed, order), index, prune)
                    for index, (seed, order) in enumerate(zip(seeds, orders, strict=True))}
        share = decided is None and all(r.report is None for r in requests.values())
        offer = {seed_dir(trial_dir, s).name: r for s, r in requests.items()} if share and len(seeds) > 1 else {}
        runs: dict[int, Outcome | None] = {}  # None: trained by another worker

        def label(seed: int) -> str:
            return spec.describe() + (f" seed {seed}" if len(seeds) > 1 else "")

        with seed_share.shared(trial_dir, offer):
            for seed in seeds:
                run_dir = seed_dir(trial_dir, seed)
                outcome = finished_outcome(run_dir)
                if outcome is not None:
                    log.info("trial %d: seed %d finished in an earlier attempt (%s); kept", number, seed,
                             outcome.state)
                else:
                    outcome = self._claim_and_run(run_dir, requests[seed], label(seed))
                    if outcome is None:
                        log.info("trial %d: seed %d is trained by another worker", number, seed)
                    elif outcome.state == "interrupted":
                        return outcome
                runs[seed] = outcome
                if outcome is not None and outcome.state != "complete":
                    break
                if decided is not None and len(runs) < len(seeds) and decided(
                        [o.values[0] for o in runs.values() if o is not None and o.values]):
                    log.info("trial %d: decided after %d seeds; no more seeds", number, len(runs))
                    break
            for seed in [s for s, o in runs.items() if o is None]:
                outcome = self._await(seed_dir(trial_dir, seed), requests[seed], label(seed))
                if outcome.state == "interrupted":
                    return outcome
                runs[seed] = outcome
        return combine([(s, o) for s, o in runs.items() if o is not None], len(seeds))

    def help(self, folder: Path) -> bool:
        """Train one seed that a running trial of the study folder `folder` offers to this machine's
        workers (`seed_share`); False when none is left to take."""
        for run_dir, request in seed_share.offered(folder):
            label = f"{request.config.model.describe()} seed {request.config.seed} (helping)"
            if finished_outcome(run_dir) is None and self._claim_and_run(run_dir, request, label) is not None:
                return True
        return False

    def _claim_and_run(self, run_dir: Path, request: TrialRequest, label: str) -> Outcome | None:
        """Train the seed of `run_dir` unless another worker holds it (None)."""
        with seed_share.claimed(run_dir) as claim:
            if claim is None:
                return None
            outcome = finished_outcome(run_dir)  # a helper finished it a moment ago
            if outcome is not None:
                return outcome
            self.view.trial_started(request.trial_number, label)
            return self._run_seed(request.trial_number, run_dir, request, claim)

    def _await(self, run_dir: Path, request: TrialRequest, label: str) -> Outcome:
        """The outcome of a seed another worker trains; trained here (from its last checkpoint) when
        that worker stops without a result."""
        while True:
            outcome = finished_outcome(run_dir) or self._claim_and_run(run_dir, request, label)
            if outcome is not None:
                return outcome
            time.sleep(self.poll)

    def _request(self, number: int, run_config: RunConfig, index: int, prune: bool) -> TrialRequest:
        """What the `index`-th seed's trial process runs; it reports to the pruner when `prune`."""
        config, epochs = self.config, self.config.budget.epochs
        return TrialRequest(
            study=self.study, trial_number=number, config=distributed(run_config),
            objectives=tuple(config.metric_names), pruner=config.pruner,
            report=config.metric_names[0] if config.pruner.name != "none" and prune else None,
            step_offset=index * epochs, steps=epochs * len(config.seeds))

    def _run_seed(self, number: int, run_dir: Path, request: TrialRequest, claim: int) -> Outcome:
        """Train one seed in `run_dir`, holding its `claim`: from its last checkpoint when an earlier
        attempt left one, else from the start."""
        write_request(run_dir, dataclasses.replace(request, resume=prepare_run_dir(run_dir, number)))
        trainer = self.config.base.trainer
        command = trial_command(run_dir, trainer.devices, trainer.num_nodes)
        return run_trial(run_dir, command, self.storage_url, self.view, pass_fds=(claim,))
