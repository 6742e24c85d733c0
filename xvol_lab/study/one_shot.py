"""A one-shot study (``search: one_shot``): supernet training, an Optuna search over its paths, and
the stand-alone check, as one `lab.py study run NAME` that resumes where it stopped.

1. **Supernet.** One run in <runs>/<study>/supernet/, trained by the trial process exactly as a trial
   (`TrialRequest.supernet`: checkpoints, SIGTERM hand-back, resume from last.ckpt, DDP), for
   one_shot.epochs epochs, sampling one path per step uniformly over the space's points
   (`xvol_lab.tasks.supernet`).
2. **Search.** The Optuna study ``<study>.one_shot`` in the same storage: each trial is a path
   (`suggest_spec` over the study's space), scored with the inherited weights after BatchNorm
   recalibration (`xvol_lab.tasks.supernet_score`); values: the score (one_shot.score: accuracy,
   or minus the cross-entropy) (tpe), or the score and FLOPs (nsga2). A space with at most
   one_shot.paths points is enumerated (every point enqueued once).
   User attrs: ``arch``, ``seconds`` (scoring time); study attr ``supernet_seconds``.
3. **Stand-alone check.** The top_k paths by one-shot score and random_k of the other scored
   paths (drawn with sampler.seed) become the study's ordinary trials (`StudyConfig.standalone`):
   trained with budget.seeds seeds, reported, exported and compared as any study's.
   `xvol_lab.study.one_shot_report` compares the two rankings.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from pathlib import Path
from typing import Any

import optuna

from xvol_lab.errors import ConfigError
from xvol_lab.models import BackboneSpec
from xvol_lab.study import signals
from xvol_lab.study.config import StudyConfig
from xvol_lab.study.launch import trial_command
from xvol_lab.study.ledger import Tally
from xvol_lab.study.outcome import Outcome, TrialRequest, finished_outcome, write_request
from xvol_lab.study.progress import View
from xvol_lab.study.seeds import distributed, prepare_run_dir, run_trial
from xvol_lab.study.space import expand_space, spec_of, suggest_spec
from xvol_lab.study.storage import open_storage
from xvol_lab.study.worker import run_study
from xvol_lab.tasks.metrics import VAL_ACC1, VAL_ACC1_AUC
from xvol_lab.tasks.runner import CHECKPOINT_DIR
from xvol_lab.tasks.supernet import path_count, snapshot_paths

log = logging.getLogger(__name__)

SUPERNET_DIR = "supernet"
SEARCH_SUFFIX = ".one_shot"
SUPERNET_SECONDS = "supernet_seconds"


def score_name(config: StudyConfig) -> str:
    """What a search trial's first value is: ``one-shot val/acc1``, ``one-shot -val/nll`` or
    ``one-shot val/acc1_auc``."""
    return "one-shot " + {"nll": "-val/nll", "auc": VAL_ACC1_AUC}.get(config.one_shot.score, VAL_ACC1)


def search_study_name(name: str) -> str:
    """The Optuna study of the search over the supernet of study `name`."""
    return name + SEARCH_SUFFIX


def space_points(config: StudyConfig) -> list[tuple[dict[str, Any], BackboneSpec]]:
    """Every point of the study's space with its spec, in `expand_space` order."""
    assert config.space is not None
    return [(p, spec_of(config.space, config.base.model, p)) for p in expand_space(config.space, config.base.model)]


def supernet_run_config(config: StudyConfig) -> Any:
    """The supernet's run: the base network, one_shot.epochs epochs, no learning curve (its
    validation runs one path), base.seed."""
    run = config.run_config(config.base.model)
    trainer = dataclasses.replace(run.trainer, max_epochs=config.one_shot.epochs, curve_points=0)
    return dataclasses.replace(run, trainer=trainer)


def train_supernet(name: str, config: StudyConfig, run_dir: Path, storage_url: str, view: View) -> Outcome:
    """Phase 1: train (or continue, or keep) the supernet in `run_dir`."""
    done = finished_outcome(run_dir)
    if done is not None:
        return done
    resume = prepare_run_dir(run_dir, -1)
    paths = tuple(spec for _, spec in space_points(config))
    product = config.one_shot.sampling == "product"
    write_request(run_dir, TrialRequest(
        study=name, trial_number=-1, config=distributed(supernet_run_config(config)), objectives=(),
        pruner=config.pruner, report=None, step_offset=0, steps=1, resume=resume, supernet=paths,
        supernet_product=product))
    view.trial_started(-1, f"supernet over {path_count(paths, product)} paths")
    trainer = config.base.trainer
    return run_trial(run_dir, trial_command(run_dir, trainer.devices, trainer.num_nodes), storage_url, view)


def _search_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    seed = config.sampler.seed
    if config.one_shot.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=config.sampler.population_size, seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=config.sampler.n_startup_trials, seed=seed)


def open_search(name: str, config: StudyConfig, storage_url: str) -> optuna.Study:
    """The search study (created on first use)."""
    directions = ["maximize", "minimize"] if config.one_shot.sampler == "nsga2" else ["maximize"]
    return optuna.create_study(study_name=search_study_name(name), storage=open_storage(storage_url),
                               directions=directions, sampler=_search_sampler(config), load_if_exists=True)


def supernet_checkpoints(config: StudyConfig, checkpoint_dir: Path) -> list[Path]:
    """The supernet weights the score reads: every epoch's snapshot (``auc``) or last.ckpt."""
    if config.one_shot.score != "auc":
        return [checkpoint_dir / "last.ckpt"]
    found = snapshot_paths(checkpoint_dir)
    if not found:
        raise ConfigError(f"{checkpoint_dir}: no epoch snapshots of the supernet, which one_shot.score "
                          "auc reads; train the supernet again in a fresh --runs folder")
    return found


def search(name: str, config: StudyConfig, storage_url: str, checkpoint_dir: Path) -> optuna.Study:
    """Phase 2: score paths until the search study has min(one_shot.paths, space size) complete
    trials (a repeated path reuses its score); the supernet's weights are in `checkpoint_dir`."""
    from xvol_lab.tasks.supernet_score import PathScorer  # imports the data and the network code

    study = open_search(name, config, storage_url)
    points = space_points(config)
    wanted = min(config.one_shot.paths, len(points))
    trials = study.get_trials(deepcopy=False)
    for t in trials:  # left running by an interrupted search: scored again below
        if t.state == optuna.trial.TrialState.RUNNING:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    if not trials and wanted == len(points):
        for point, _ in points:
            study.enqueue_trial(point)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) >= wanted:
        return study
    o = config.one_shot
    scorer = PathScorer(config.run_config(config.base.model), supernet_checkpoints(config, checkpoint_dir),
                        [s for _, s in points],
                        bn_batches=o.bn_batches, val_images=o.val_images)
    cache: dict[BackboneSpec, list[float]] = {}
    for t in done:
        cache[spec_of(config.space, config.base.model, t.params)] = list(t.values)
    assert config.space is not None
    while len(done) < wanted:
        trial = study.ask()
        spec = suggest_spec(trial, config.space, config.base.model)
        start = time.monotonic()
        if spec not in cache:
            score = scorer.score(spec, o.score)
            cache[spec] = [score, scorer.flops_g(spec)] if o.sampler == "nsga2" else [score]
        trial.set_user_attr("arch", f"[{', '.join(s.describe() for s in spec.stages)}]")
        trial.set_user_attr("seconds", time.monotonic() - start)
        study.tell(trial, cache[spec])
        done.append(trial)
        log.info("one-shot path %d/%d %s: %s %.4f", len(done), wanted, spec.describe(),
                 score_name(config), cache[spec][0])
    return study


def scored_paths(config: StudyConfig, study: optuna.Study) -> list[tuple[dict[str, Any], BackboneSpec, float]]:
    """The distinct paths the search scored, best one-shot score first (ties: first scored first)."""
    seen: dict[BackboneSpec, tuple[dict[str, Any], float]] = {}
    for t in sorted(study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]),
                    key=lambda t: t.number):
        spec = spec_of(config.space, config.base.model, t.params)
        seen.setdefault(spec, (t.params, t.values[0]))
    ranked = sorted(seen.items(), key=lambda kv: -kv[1][1])
    return [(params, spec, score) for spec, (params, score) in ranked]


def chosen_points(config: StudyConfig, study: optuna.Study) -> list[dict[str, Any]]:
    """The stand-alone check's points: the top_k scored paths, then random_k of the others."""
    ranked = scored_paths(config, study)
    o = config.one_shot
    top, rest = ranked[:o.top_k], ranked[o.top_k:]
    drawn = random.Random(config.sampler.seed).sample(rest, min(o.random_k, len(rest)))
    return [params for params, _, _ in top + drawn]


def run_one_shot(name: str, config: StudyConfig, *, runs: Path, storage_url: str, view: View) -> Tally:
    """The three phases (module docstring); the stand-alone study's final counts."""
    run_dir = runs / name / SUPERNET_DIR
    trained = finished_outcome(run_dir) is None
    start = time.monotonic()
    outcome = train_supernet(name, config, run_dir, storage_url, view)
    if outcome.state == "interrupted":
        raise KeyboardInterrupt
    if outcome.state != "complete":
        raise RuntimeError(f"{run_dir}: supernet training {outcome.state}: {outcome.reason}")
    study = open_search(name, config, storage_url)
    if trained:  # the wall time of the attempt that finished the supernet
        study.set_user_attr(SUPERNET_SECONDS, time.monotonic() - start)
    study = search(name, config, storage_url, run_dir / CHECKPOINT_DIR)
    points = chosen_points(config, study)
    log.info("stand-alone check of %d paths: %s", len(points), points)
    return run_study(name, config.standalone(points), runs=runs, storage_url=storage_url, view=view)


def work_one_shot(name: str, config: StudyConfig, *, runs: Path, storage_url: str, view: View) -> Tally:
    """`run_one_shot` with the stop signals handled as `xvol_lab.study.worker.work` does."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    restore = signals.install()
    try:
        return run_one_shot(name, config, runs=runs, storage_url=storage_url, view=view)
    finally:
        restore()
        view.close()


__all__ = ["run_one_shot", "score_name", "scored_paths", "search_study_name", "work_one_shot"]
