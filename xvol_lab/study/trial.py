"""The trial process: ``python -m xvol_lab.study.trial TRIAL_DIR`` trains the trial the study asked for.

It reads TRIAL_DIR/trial.json (`xvol_lab.study.outcome.TrialRequest`: run config, objectives, pruning), calls
`xvol_lab.tasks.runner.fit` with a progress file and (single objective with a pruner) a per-epoch
reporter to the study's storage (URL in the environment), measures the deploy form, and writes
TRIAL_DIR/result.json: ``{state: complete|pruned|failed, reason, values, metrics, params_m,
latency_ms, fingerprint}`` (fingerprint: the run's fingerprint.json, `xvol_lab.tasks.fingerprint`).
Under DDP every process runs this module; only global rank 0 opens the storage and writes files.
With ``resume: last`` in trial.json it continues from TRIAL_DIR's last checkpoint.
The exit code is 0 unless the trial failed; SIGTERM or SIGUSR1 (preemption, scancel, the study
process stopping an srun step: `xvol_lab.study.launch.stop_signal`) stops it after the
running batch with a checkpoint of that point (`xvol_lab.tasks.callbacks.PreemptionCheckpoint`),
no result.json and exit code `INTERRUPTED_EXIT`, so that the study hands the trial back and its
retry continues from there.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import optuna
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from xvol_lab.allocator import keep_freed_memory
from xvol_lab.errors import ConfigError
from xvol_lab.study.callbacks import ProgressFile, PruningReporter
from xvol_lab.study.config import MEASURED, PrunerConfig
from xvol_lab.study.environment import FINGERPRINT_ATTR
from xvol_lab.study.files import PROGRESS, REQUEST, RESULT, read_json, write_json
from xvol_lab.study.launch import STORAGE_ENV, usr1_stops_like_sigterm, watch_lifeline
from xvol_lab.study.measure import measure
from xvol_lab.study.outcome import INTERRUPTED_EXIT, TrialRequest, read_request
from xvol_lab.study.samplers import make_pruner
from xvol_lab.study.slurm import apply_trial_gpus
from xvol_lab.study.storage import open_storage
from xvol_lab.tasks import NonFiniteLossError, fit
from xvol_lab.tasks.fingerprint import FINGERPRINT_JSON
from xvol_lab.tasks.runner import CHECKPOINT_DIR
from xvol_lab.tasks.supernet import EpochSnapshots, SupernetTraining

log = logging.getLogger("xvol_lab.study.trial")
DIVERGED = "diverged: "
INTERRUPTED = "interrupted"


def global_rank() -> int:
    """This process's rank from the launcher's environment (torchrun, srun), 0 when alone."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


class StudyTrial:
    """Trial `number` of study `study` seen from the trial process, through Optuna's public storage
    API: `report` stores an intermediate value, `should_prune` asks the study's pruner (`pruner` over
    `steps` steps), as `optuna.trial.Trial` does in the process that asked for the trial."""

    def __init__(self, study: str, number: int, pruner: PrunerConfig, steps: int) -> None:
        self.storage = open_storage(os.environ[STORAGE_ENV])
        self.pruner = make_pruner(pruner, steps)
        self.study = optuna.load_study(study_name=study, storage=self.storage, pruner=self.pruner,
                                       sampler=optuna.samplers.RandomSampler())
        study_id = self.storage.get_study_id_from_name(study)
        self.trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)

    def report(self, value: float, step: int) -> None:
        """Store `value` at `step` (a retry overwrites the value its interrupted attempt stored)."""
        self.storage.set_trial_intermediate_value(self.trial_id, step, value)

    def should_prune(self) -> bool:
        """The pruner's verdict on the trial's values so far."""
        return self.pruner.prune(self.study, self.storage.get_trial(self.trial_id))


def train(request: TrialRequest, trial_dir: Path) -> dict[str, Any]:
    """Train the requested trial; the outcome as written to result.json."""
    config = request.config
    progress = ProgressFile(trial_dir / PROGRESS)
    callbacks: list[Any] = [progress]
    reporter = None
    if request.report:
        def connect() -> StudyTrial:
            return StudyTrial(request.study, request.trial_number, request.pruner, request.steps)

        reporter = PruningReporter(connect, request.report, request.step_offset)
        callbacks.append(reporter)
    if request.supernet:
        callbacks += [SupernetTraining(config.model, request.supernet, config.seed, product=request.supernet_product),
                      EpochSnapshots(trial_dir / CHECKPOINT_DIR)]
    try:
        metrics = fit(config, trial_dir, callbacks=callbacks, progress=False, resume=request.resume)
    except SIGTERMException:  # preempted: the last checkpoint stays, the study hands the trial back
        return {"state": INTERRUPTED}
    except NonFiniteLossError as err:
        return {"state": "failed", "reason": f"{DIVERGED}{err}"}
    except torch.OutOfMemoryError as err:
        return {"state": "failed", "reason": f"out of memory: {_first_line(err)}"}
    except Exception as err:
        log.exception("trial failed")
        kind = "out of memory" if "out of memory" in str(err).lower() else "crashed"
        return {"state": "failed", "reason": f"{kind}: {_first_line(err)}"}
    if reporter is not None and reporter.pruned:
        return {"state": "pruned", "reason": reporter.pruned, "metrics": metrics}
    outcome: dict[str, Any] = {"state": "complete", "metrics": metrics}
    if request.supernet:  # a supernet has no deploy form to measure, nor objectives of its own
        return {**outcome, "values": []}
    if global_rank() != 0:
        return outcome
    outcome.update(measure(config, progress.device, run_dir=trial_dir))
    values = []
    for name in request.objectives:
        value = outcome.get(name) if name in MEASURED else metrics.get(name)
        if value is None or not math.isfinite(value):
            return {**outcome, "state": "failed",
                    "reason": f"objective {name} is {value} (logged: {', '.join(sorted(metrics))})"}
        values.append(value)
    return {**outcome, "values": values}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the trial process."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m xvol_lab.study.trial TRIAL_DIR", file=sys.stderr)
        return 2
    apply_trial_gpus(os.environ)  # before anything starts CUDA
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    keep_freed_memory()
    watch_lifeline()
    usr1_stops_like_sigterm()
    trial_dir = Path(args[0])
    try:
        request = read_request(trial_dir)
    except ConfigError as err:
        print(f"{trial_dir / REQUEST}: {err}", file=sys.stderr)
        return 2
    if request is None:
        print(f"{trial_dir / REQUEST}: missing or not JSON", file=sys.stderr)
        return 2
    outcome = train(request, trial_dir)
    if outcome["state"] == INTERRUPTED:
        log.warning("trial %s stopped by SIGTERM; its last checkpoint is kept", request.trial_number)
        return INTERRUPTED_EXIT
    if global_rank() == 0:
        fingerprint = read_json(trial_dir / FINGERPRINT_JSON)  # written by `fit`, also when it failed
        write_json(trial_dir / RESULT, {"reason": None, **outcome,
                                        **({FINGERPRINT_ATTR: fingerprint} if fingerprint else {})})
        log.info("trial %s %s%s", request.trial_number, outcome["state"],
                 f": {outcome['reason']}" if outcome.get("reason") else "")
    return exit_code(outcome, global_rank())


def exit_code(outcome: dict[str, Any], rank: int) -> int:
    """1 for a failed trial, so that torch.distributed.run / srun stop the other processes at once;
    0 on ranks > 0 for a divergence, which every process detects at the same step (rank 0 must
    not be stopped before it writes result.json)."""
    if outcome["state"] != "failed":
        return 0
    return 0 if rank != 0 and outcome["reason"].startswith(DIVERGED) else 1


def leave(code: int) -> None:
    """Exit with `code` once the outcome is written: at once (`os._exit`) in a process of one, where
    the interpreter's clean-up of torch and Lightning takes 1-2 s that the next seed waits for (every
    file is closed by then; logs are flushed here); the normal way under DDP, whose process group
    the interpreter's exit closes."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main())
