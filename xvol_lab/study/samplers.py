"""Optuna samplers and pruners from a study file, and the planned points (enqueued / grid).

`PlannedSampler` gives each trial that the worker marks as planned the parameters of its plan
point (`StudyConfig.plan`: the `enqueue` list, then for grid studies every other grid point); other
trials go to a fresh base sampler seeded with ``seed + trial.number``, so that one worker repeats
itself and several workers sharing a study do not draw the same points. Which plan point a trial
takes is decided by its slot (`xvol_lab.study.ledger`), not by a queue in the storage, so that no
two workers run the same point.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from xvol_lab.study.config import PrunerConfig, SamplerConfig


def base_sampler_factory(cfg: SamplerConfig, n_objectives: int) -> Callable[[int], BaseSampler] | None:
    """seed -> the configured sampler; None for grid (every trial is a plan point)."""
    if cfg.name == "grid":
        return None
    if cfg.name == "random":
        return lambda seed: optuna.samplers.RandomSampler(seed=seed)
    if cfg.name == "nsga2":
        return lambda seed: optuna.samplers.NSGAIISampler(population_size=cfg.population_size, seed=seed)

    def tpe(seed: int) -> BaseSampler:
        with warnings.catch_warnings():  # `multivariate` and `group` are flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(n_startup_trials=cfg.n_startup_trials, seed=seed,
                                              multivariate=True, group=n_objectives == 1, constant_liar=True)
    return tpe


def make_pruner(cfg: PrunerConfig, steps: int) -> optuna.pruners.BasePruner:
    """The configured pruner. A trial reports at steps 1 .. `steps` (epochs x seeds): seed i's
    epoch e (both counted from its first) is step ``i * epochs + e``."""
    if cfg.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials,
                                           n_warmup_steps=cfg.n_warmup_steps)
    if cfg.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.min_resource, max_resource=steps,
                                              reduction_factor=cfg.reduction_factor)
    return optuna.pruners.NopPruner()


class PlannedSampler(BaseSampler):
    """Plan points for the trials `assign`ed one, the base sampler (per-trial seed) for the others."""

    def __init__(self, plan: Sequence[dict[str, Any]], factory: Callable[[int], BaseSampler] | None,
                 seed: int) -> None:
        self.plan = list(plan)
        self.factory = factory
        self.seed = seed
        self._points: dict[int, dict[str, Any] | None] = {}
        self._bases: dict[int, BaseSampler] = {}

    def assign(self, number: int, point: dict[str, Any] | None) -> None:
        """Trial `number` takes `point` (None: the base sampler decides). Call before suggesting."""
        self._points[number] = point

    def _point(self, trial: FrozenTrial) -> dict[str, Any] | None:
        if trial.number not in self._points:
            raise RuntimeError(f"trial {trial.number}: PlannedSampler.assign was not called")
        return self._points[trial.number]

    def _base(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._bases:
            if self.factory is None:
                raise RuntimeError(f"trial {trial.number}: grid study without a grid point")
            self._bases = {trial.number: self.factory(self.seed + trial.number)}
        return self._bases[trial.number]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.factory is not None:
            self._base(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._point(trial) is not None:
            return {}
        return self._base(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if self._point(trial) is not None:
            return {}
        return self._base(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        point = self._point(trial)
        if point is not None:
            return point[param_name]
        return self._base(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        if self.factory is not None:
            self._base(trial).after_trial(study, trial, state, values)
        self._points.pop(trial.number, None)
