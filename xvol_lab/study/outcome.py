"""What a trial process is asked to run (`TrialRequest`, its trial.json) and how a trial ended: one
seed's run (its result.json) and the configuration over its seeds.

A study trial is one configuration trained once per seed (`StudyConfig.seeds`), each seed in its
own run folder ``trial_<n>/seed_<s>/``. `combine` turns the seeds' outcomes into the trial's:

- state: complete when every seed completed; otherwise that of the first seed that did not
  (the seeds after it do not run), its reason naming the seed when the study has several;
- values (told to Optuna): the mean over seeds of each objective;
- user attrs: ``seeds`` (the seeds run, in order), ``per_seed`` (metric -> list of values aligned
  with ``seeds``, None where a seed has none) for every objective and every numeric metric of the
  seeds' result.json (``val/acc1``, ``epochs``, ``params_m``, ``latency_ms``, ...), and each such
  metric's mean over the seeds that have it under its plain name; ``fingerprint``: the seeds'
  environment fingerprints combined (`xvol_lab.study.environment`).
"""

from __future__ import annotations

import dataclasses
import signal
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from xvol_lab.models import BackboneSpec
from xvol_lab.schema import from_dict, to_dict
from xvol_lab.study.config import LATENCY_DEVICE, MEASURE_ERROR, MEASURED, PrunerConfig
from xvol_lab.study.environment import FINGERPRINT_ATTR, combine_fingerprints
from xvol_lab.study.files import LOG, REQUEST, RESULT, read_json, write_json
from xvol_lab.tasks.config import RunConfig

STATES = ("complete", "pruned", "failed")
# Exit code of a trial process that stopped on SIGTERM/SIGUSR1 (preemption) with its last
# checkpoint kept: the trial is handed back (queued again), not failed.
INTERRUPTED_EXIT = 75
HAND_BACK_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


@dataclass(frozen=True)
class TrialRequest:
    """What the study process asks a trial process to run: one seed of trial `trial_number`."""

    study: str
    trial_number: int
    config: RunConfig  # the seed's run (its seed included)
    objectives: tuple[str, ...]  # metric names, in the study's order
    pruner: PrunerConfig
    report: str | None  # the metric reported each epoch for pruning; None without a pruner
    step_offset: int  # the pruning step of this seed's first epoch (seed index x epochs)
    steps: int  # pruning steps of the whole configuration (epochs x seeds)
    resume: str | None = None  # "last": continue from the run folder's last checkpoint; or a checkpoint path
    # a one-shot study's supernet run: the paths it samples from (`xvol_lab.tasks.supernet`; with
    # supernet_product, every combination of their stages' candidates); the run config's model is
    # the base network, and nothing is measured after training
    supernet: tuple[BackboneSpec, ...] = ()
    supernet_product: bool = False


def write_request(run_dir: Path, request: TrialRequest) -> None:
    """Write `request` to run_dir/trial.json (atomically)."""
    write_json(run_dir / REQUEST, to_dict(request))


def read_request(run_dir: Path) -> TrialRequest | None:
    """The request in run_dir/trial.json, or None when there is none (a `ConfigError` when malformed)."""
    data = read_json(run_dir / REQUEST)
    return None if data is None else from_dict(TrialRequest, data)


@dataclass(frozen=True)
class Outcome:
    """How a trial ended: state, reason (pruned/failed), objective values, attrs for the storage."""

    state: Literal["complete", "pruned", "failed", "interrupted"]
    reason: str | None = None
    values: list[float] | None = None
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)


def _exit_text(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        return f"was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exited with code {code}"


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def finished_outcome(run_dir: Path) -> Outcome | None:
    """The outcome in run_dir/result.json, or None when the run has not written one."""
    result = read_json(run_dir / RESULT)
    if result is None or result.get("state") not in STATES:
        return None
    attrs = dict(result.get("metrics") or {})
    attrs.update({k: result[k] for k in (*MEASURED, LATENCY_DEVICE, MEASURE_ERROR) if k in result})
    if isinstance(result.get(FINGERPRINT_ATTR), dict):
        attrs[FINGERPRINT_ATTR] = result[FINGERPRINT_ATTR]
    return Outcome(result["state"], result.get("reason"), result.get("values"), attrs)


def read_outcome(trial_dir: Path, returncode: int) -> Outcome:
    """The outcome in trial_dir/result.json; without one, *interrupted* when the trial process was
    preempted (stopped by SIGTERM, SIGUSR1 or SIGINT, or exited with INTERRUPTED_EXIT after one),
    else a failure naming how it ended (a crash, SIGKILL from the out-of-memory killer, ...)."""
    outcome = finished_outcome(trial_dir)
    if outcome is not None:
        return outcome
    if returncode == INTERRUPTED_EXIT or -returncode in HAND_BACK_SIGNALS:
        return Outcome("interrupted", f"trial process stopped by a signal ({_exit_text(returncode)})")
    last = _last_line(trial_dir / LOG)
    return Outcome("failed", f"trial process {_exit_text(returncode)} without a result"
                   + (f"; last output: {last}" if last else ""))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def combine(runs: Sequence[tuple[int, Outcome]], n_seeds: int) -> Outcome:
    """The configuration's outcome from its seeds' (seed, outcome), in seed order (module docstring).

    `runs` ends at the first seed that did not complete; `n_seeds` is how many the study asks for."""
    if not runs:
        raise ValueError("combine: no seed ran")
    seeds = [seed for seed, _ in runs]
    names: list[str] = []
    for _, outcome in runs:
        names += [k for k, v in outcome.attrs.items() if _number(v) is not None and k not in names]
    per_seed = {name: [_number(o.attrs.get(name)) for _, o in runs] for name in names}
    attrs: dict[str, Any] = {name: statistics.fmean(v for v in values if v is not None)
                             for name, values in per_seed.items()}
    attrs.update(seeds=seeds, per_seed=per_seed)
    for name in (LATENCY_DEVICE, MEASURE_ERROR):  # text: the distinct values over the seeds, in order
        texts = list(dict.fromkeys(str(o.attrs[name]) for _, o in runs if o.attrs.get(name)))
        if texts:
            attrs[name] = " / ".join(texts)
    fingerprints = [o.attrs[FINGERPRINT_ATTR] for _, o in runs if isinstance(o.attrs.get(FINGERPRINT_ATTR), dict)]
    if fingerprints:
        attrs[FINGERPRINT_ATTR] = combine_fingerprints(fingerprints)
    last_seed, last = runs[-1]
    if last.state != "complete":
        reason = last.reason
        if n_seeds > 1:
            reason = f"{reason or last.state} (seed {last_seed})"
        return Outcome(last.state, reason, None, attrs)
    columns = zip(*(o.values or [] for _, o in runs), strict=True)
    return Outcome("complete", None, [statistics.fmean(column) for column in columns], attrs)
