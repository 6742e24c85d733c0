"""Small report studies built directly in SQLite storages (no training), shared by the report and
export tests: a study file (`write_study_file`), its storage (`open_study`), trials as a worker
stores them (`add`, `metrics_of`, `seeded_attrs`) and three ready-made studies."""

from __future__ import annotations

import datetime
import statistics
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from xvol_lab.models import BackboneSpec
from xvol_lab.study.ledger import VOID
from xvol_lab.study.storage import default_storage_url

DISTRIBUTIONS = {"stage3.op": CategoricalDistribution(["conv", "pssa", "xvol_pssa"]),
                 "stage3.shift": CategoricalDistribution([1, 2]),
                 "stage4.op": CategoricalDistribution(["conv", "xvol_sa"])}
CONV = {"stage3.op": "conv", "stage4.op": "conv"}
XPSSA2 = {"stage3.op": "xvol_pssa", "stage3.shift": 2, "stage4.op": "conv"}
PSSA_XSA = {"stage3.op": "pssa", "stage3.shift": 1, "stage4.op": "xvol_sa"}
IMAGE_SIZE, NUM_CLASSES, BATCH = 16, 4, 16
BASE = BackboneSpec.from_dict({"block": "basic", "depths": [1, 1, 1, 1], "width_mult": 0.125,
                               "stem": "small"})


def write_study_file(folder: Path, name: str, *,
                     objectives: tuple[tuple[str, str], ...] = (("val/acc1", "maximize"),)) -> Path:
    """studies-style YAML `name`.yaml in `folder`: stages 3 (conv/pssa/xvol_pssa, L in 1-2) and 4
    (conv/xvol_sa) of a tiny ResNet on 16 px shapes, random sampler."""
    pruner = "median" if len(objectives) == 1 else "none"
    objective_text = ", ".join(f"{{metric: {m}, direction: {d}}}" for m, d in objectives)
    path = folder / f"{name}.yaml"
    path.write_text(f"""
description: report test study ({name})
base:
  data: {{name: shapes, root: {folder / 'data'}, image_size: {IMAGE_SIZE}, num_classes: {NUM_CLASSES},
          num_train: 64, num_val: 32, batch_size: {BATCH}, num_workers: 0}}
  model: {{block: basic, depths: [1, 1, 1, 1], width_mult: 0.125, stem: small}}
  optim: {{name: adamw, lr: 0.003, weight_decay: 0.01, warmup_epochs: 0}}
  trainer: {{accelerator: cpu, log_every_n_steps: 1}}
space:
  stages:
    3: {{op: [conv, pssa, xvol_pssa], shift: [1, 2]}}
    4: {{op: [conv, xvol_sa]}}
objectives: [{objective_text}]
sampler: {{name: random}}  # not adaptive: the per-stage table gives valid intervals (TPE: descriptive)
pruner: {{name: {pruner}}}
budget: {{n_trials: 12, epochs: 1}}
""")
    return path


def open_study(runs: Path, name: str, directions: list[str]) -> optuna.Study:
    """A new study `name` in the default storage under `runs` (what `lab.py study run` would create)."""
    (runs / name).mkdir(parents=True, exist_ok=True)
    url = default_storage_url(runs, name)
    return optuna.create_study(study_name=name, storage=url, directions=directions)


def metrics_of(acc1: float, **more: float) -> dict[str, float]:
    """The user attrs a worker stores for a finished trial (the trial's result + measures)."""
    return {"val/acc1": acc1, "val/acc5": 1.0, "val/loss": 2.0 - acc1, "train/loss": 1.5 - acc1,
            "epochs": 3.0, "best_epoch": 3.0, "params_m": 0.05, "latency_ms": 2.0, **more}


def add(study: optuna.Study, params: dict, values: list[float] | None = None, *,
        state: TrialState = TrialState.COMPLETE, attrs: dict | None = None, system: dict | None = None,
        intermediate: dict[int, float] | None = None, wall: float | None = None) -> int:
    """Add a trial like the worker records it; returns its number."""
    trial = create_trial(state=state, values=values, params=params,
                         distributions={k: DISTRIBUTIONS[k] for k in params}, user_attrs=attrs or {},
                         system_attrs=system or {}, intermediate_values=intermediate or {})
    if wall is not None:
        trial.datetime_start = datetime.datetime(2025, 1, 1, 12, 0, 0)
        trial.datetime_complete = trial.datetime_start + datetime.timedelta(seconds=wall)
    study.add_trial(trial)
    return len(study.trials) - 1


def build_ablation_study(folder: Path) -> Path:
    """Study 'abl': 12 trials of every kind (see the table in the test below); returns the study file."""
    path = write_study_file(folder, "abl")
    study = open_study(folder / "runs", "abl", ["maximize"])
    add(study, CONV, [0.50], attrs=metrics_of(0.50, flops_g=0.123, latency_batch_ms=9.0), wall=150.0,
        intermediate={1: 0.3, 2: 0.4, 3: 0.5})                                                   # 0
    add(study, XPSSA2, [0.70], attrs=metrics_of(0.70), intermediate={1: 0.5, 2: 0.6, 3: 0.7})      # 1
    add(study, XPSSA2, [0.80], attrs=metrics_of(0.80))                                           # 2
    add(study, XPSSA2, state=TrialState.FAIL)                                                    # 3: retried
    add(study, XPSSA2, [0.75], attrs=metrics_of(0.75), system={"failed_trial": 3, "retry_history": [3]})  # 4
    add(study, PSSA_XSA, [0.60], attrs=metrics_of(0.60, params_m=0.04, latency_ms=3.0))           # 5
    add(study, CONV, [0.56], attrs=metrics_of(0.56))                                             # 6
    add(study, {"stage3.op": "pssa", "stage3.shift": 1, "stage4.op": "conv"}, state=TrialState.PRUNED,
        attrs={"val/acc1": 0.2, "epochs": 1.0, "prune_reason": "val/acc1=0.2000 at epoch 1: MedianPruner"},
        intermediate={1: 0.2})                                                                   # 7
    add(study, {"stage3.op": "conv", "stage4.op": "xvol_sa"}, state=TrialState.FAIL,
        attrs={"fail_reason": "crashed: RuntimeError: boom"})                                    # 8
    add(study, CONV, state=TrialState.FAIL, system={VOID: True},
        attrs={"fail_reason": "not run: the budget of 12 trials was taken by other workers"})   # 9
    add(study, {"stage3.op": "xvol_pssa", "stage3.shift": 1, "stage4.op": "conv"},
        state=TrialState.RUNNING)                                                                # 10
    add(study, {}, state=TrialState.WAITING)                                                     # 11
    return path


def build_pareto_study(folder: Path) -> Path:
    """Study 'par' (val/acc1 up, latency_ms down). Front by hand: 0 (0.80, 3.0), 1 (0.70, 1.0),
    2 (0.75, 2.0) and 5 (0.80, 3.0, a tie of 0); 3 (0.70, 2.5) is dominated by 2, 4 (0.60, 1.0) by 1."""
    path = write_study_file(folder, "par", objectives=(("val/acc1", "maximize"), ("latency_ms", "minimize")))
    study = open_study(folder / "runs", "par", ["maximize", "minimize"])
    points = [(XPSSA2, 0.80, 3.0), (CONV, 0.70, 1.0), (PSSA_XSA, 0.75, 2.0), (CONV, 0.70, 2.5),
              ({"stage3.op": "conv", "stage4.op": "xvol_sa"}, 0.60, 1.0), (XPSSA2, 0.80, 3.0)]
    for params, acc, latency in points:
        add(study, params, [acc, latency], attrs=metrics_of(acc, latency_ms=latency))
    add(study, CONV, state=TrialState.FAIL, attrs={"fail_reason": "out of memory: CUDA"})
    return path


def seeded_attrs(seeds: list[int], acc1: list[float], params_m: float = 0.05) -> dict:
    """The user attrs of a trial run with several seeds: per-seed metrics aligned with `seeds`, and
    each metric's mean under its plain name."""
    per_seed = {"val/acc1": acc1, "params_m": [params_m] * len(seeds), "latency_ms": [2.0] * len(seeds)}
    return {"seeds": seeds, "per_seed": per_seed, **metrics_of(statistics.fmean(acc1), params_m=params_m)}


def build_seeded_study(folder: Path) -> Path:
    """Study 'seeded': all-conv, X-volution(PSSA, L=2) in stage 3 (0.05, 0.06, 0.07 better by seed)
    and PSSA in 3 + X-volution(SA) in 4 (0.02, -0.02, 0.03, and a seed 3 the baseline lacks)."""
    path = write_study_file(folder, "seeded")
    study = open_study(folder / "runs", "seeded", ["maximize"])
    for params, seeds, acc1, params_m in [(CONV, [0, 1, 2], [0.50, 0.60, 0.70], 0.05),
                                          (XPSSA2, [0, 1, 2], [0.55, 0.66, 0.77], 0.05),
                                          (PSSA_XSA, [0, 1, 2, 3], [0.52, 0.58, 0.73, 0.90], 0.04)]:
        add(study, params, [statistics.fmean(acc1)], attrs=seeded_attrs(seeds, acc1, params_m))
    return path
