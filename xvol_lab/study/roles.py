"""What the worker runs for a planned trial with a role (`StudyConfig.schedule`): the baseline, the
positive and negative controls (`xvol_lab.study.controls`), and when a configuration has enough
seeds (`xvol_lab.study.sequential`).

- the baseline trains every seed (budget.seeds max) and is marked with the user attr `BASELINE_ATTR`;
- a control's network and seeds come from the study file, its trial is marked ``control: <role>``
  and never pruned (a pruned control shows nothing);
- every other configuration stops adding seeds once its comparison with the baseline on the
  primary metric is decided (`sequential.decided`); the baseline's values are read from its seeds'
  result files. A look at which the baseline has not finished those seeds (another worker still
  trains it) is skipped: the configuration trains its next seed, which the design allows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from xvol_lab.models import BackboneSpec
from xvol_lab.study import sequential
from xvol_lab.study.config import StudyConfig
from xvol_lab.study.controls import CONTROL_ATTR
from xvol_lab.study.outcome import finished_outcome
from xvol_lab.study.seeds import seed_dir
from xvol_lab.study.space import suggest_spec

log = logging.getLogger(__name__)

BASELINE = "baseline"
BASELINE_ATTR = "baseline"  # user attr (True) of the baseline's trial


def trial_spec(config: StudyConfig, trial: optuna.Trial, role: str | None) -> BackboneSpec:
    """The network of `trial`: a control's from the study file (marking the trial), else the one the
    trial suggests from the space (the baseline's trial is marked)."""
    if role in config.controls.roles:
        trial.set_user_attr(CONTROL_ATTR, role)
        assert config.baseline_spec is not None  # the study file has one when it has controls
        return config.controls.spec(role, config.baseline_spec)
    if role == BASELINE:
        trial.set_user_attr(BASELINE_ATTR, True)
    return suggest_spec(trial, config.space, config.base.model)


def trial_seeds(config: StudyConfig, role: str | None) -> list[int]:
    """The seeds `role` trains (at most): the baseline's, shifted for the negative control."""
    if role in config.controls.roles:
        return config.controls.seeds(role, config.seeds)
    return config.seeds


def trial_order_seeds(config: StudyConfig, role: str | None) -> list[int] | None:
    """The training-order seeds of `role`'s runs, None where each run's order follows its seed."""
    if role in config.controls.roles:
        return config.controls.order_seeds(role, config.seeds)
    return None


def baseline_values(config: StudyConfig, trials: list[FrozenTrial], count: int) -> list[float] | None:
    """The primary metric of the baseline's first `count` seeds, from their result files; None while
    one of them has not completed."""
    found = [t for t in trials if t.user_attrs.get(BASELINE_ATTR) and t.user_attrs.get("trial_dir")]
    for trial in sorted(found, key=lambda t: t.number, reverse=True):  # the latest attempt first
        values = []
        for seed in config.seeds[:count]:
            outcome = finished_outcome(seed_dir(Path(trial.user_attrs["trial_dir"]), seed))
            if outcome is None or outcome.state != "complete" or not outcome.values:
                break
            values.append(float(outcome.values[0]))
        if len(values) == count:
            return values
    return None


def stop_rule(config: StudyConfig, trials: Callable[[], list[FrozenTrial]],
              role: str | None) -> Callable[[list[float]], bool] | None:
    """For a configuration compared with the baseline under a sequential seed design: a function of
    its primary-metric values so far (seed order) that says whether its comparison is decided;
    None where every seed runs (fixed seeds, or the baseline)."""
    design = config.budget.design
    if not design.sequential or role == BASELINE:
        return None
    rows = max(config.n_trials - 1, 1)  # every row but the baseline is compared with it

    def decided(values: list[float]) -> bool:
        if len(values) < design.min:
            return False
        base = baseline_values(config, trials(), len(values))
        if base is None:
            log.info("no baseline values for %d seeds yet: this look is skipped", len(values))
            return False
        return sequential.decided([v - b for v, b in zip(values, base, strict=True)], design, rows)

    return decided
