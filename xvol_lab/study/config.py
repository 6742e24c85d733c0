"""Study files (`studies/*.yaml`): what a study searches, what it optimises, how, and for how long.

A `StudyConfig` is built with `xvol_lab.schema.from_dict`, so every unknown key, wrong type and bad
value is a `ConfigError` naming its key path; `load_study_config` prefixes the file name
(``studies/x.yaml: space.stages.3.op.1: got 'foo', expected one of conv, sa, ...``).
Everything is checked here, before a storage or a run folder exists.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from xvol_lab.data.config import BALANCED_NAMES
from xvol_lab.errors import ConfigError
from xvol_lab.models import BackboneSpec
from xvol_lab.ops.options import resolve_heads
from xvol_lab.paths import REPO_ROOT
from xvol_lab.schema import from_dict, parse_override, to_dict, with_overrides
from xvol_lab.study.controls import NEGATIVE_SEED_OFFSET, POSITIVE, ControlsConfig
from xvol_lab.study.one_shot_config import OneShotConfig
from xvol_lab.study.sequential import SeedDesign
from xvol_lab.study.space import check_point, expand_space, spec_of
from xvol_lab.study.space_config import SpaceConfig, distinct, listing
from xvol_lab.tasks import metrics
from xvol_lab.tasks.config import MAX_SEED, RunConfig, Task
from xvol_lab.tasks.registry import DEFAULT_TASK, task_record

# Measured by the study itself on the deploy form of the trained model, after training: latency at
# batch 1 and at the study's batch size, parameters, FLOPs of one image. Any of them can be an objective.
LATENCY_MS = "latency_ms"
LATENCY_BATCH_MS = "latency_batch_ms"
PARAMS_M = "params_m"
FLOPS_G = "flops_g"
MEASURED = (LATENCY_MS, PARAMS_M, FLOPS_G, LATENCY_BATCH_MS)
# Recorded with them (not objectives): the hardware the latencies were measured on, and why the
# measurement failed when it did (the trained trial stands without the figures).
LATENCY_DEVICE = "latency_device"
MEASURE_ERROR = "measure_error"
# Where `lab.py study run NAME` looks for NAME.yaml.
STUDIES_DIR = REPO_ROOT / "studies"


def metric_range(metric: str) -> tuple[float, float] | None:
    """The values `metric` can take (`xvol_lab.tasks.metrics.RANGES`; measured costs are >= 0);
    None when unknown."""
    if metric in MEASURED:
        return 0.0, math.inf
    return metrics.RANGES.get(metric)


def epoch_metrics() -> tuple[str, ...]:
    """The per-epoch metric names the tasks log (`xvol_lab.tasks.metrics`)."""
    return tuple(v for k, v in vars(metrics).items() if k.isupper() and isinstance(v, str))


@dataclass(frozen=True)
class ObjectiveConfig:
    """One objective: a metric the task logs (best epoch) or one the study measures, and its direction."""

    metric: str = metrics.VAL_ACC1
    direction: Literal["maximize", "minimize"] = "maximize"

    def __post_init__(self) -> None:
        names = (*epoch_metrics(), *MEASURED)
        if self.metric not in names:
            raise ValueError(f"metric: got {self.metric!r}, expected one of {listing(names)}")


@dataclass(frozen=True)
class SamplerConfig:
    """How points are chosen: TPE (`n_startup_trials` random first), random, the full grid, or
    NSGA-II (`population_size`). The seed makes a single-worker study repeatable."""

    name: Literal["tpe", "random", "grid", "nsga2"] = "tpe"
    seed: int = 0
    n_startup_trials: int = 10
    population_size: int = 8

    def __post_init__(self) -> None:
        if self.n_startup_trials < 0:
            raise ValueError(f"n_startup_trials: got {self.n_startup_trials}, expected an integer >= 0")
        if self.population_size < 2:
            raise ValueError(f"population_size: got {self.population_size}, expected an integer >= 2")


@dataclass(frozen=True)
class PrunerConfig:
    """Early stopping of poor trials from their per-epoch values of the first objective:
    median (after `n_startup_trials` finished trials and `n_warmup_steps` epochs) or hyperband
    (`min_resource` epochs, `reduction_factor`; the maximum is budget.epochs)."""

    name: Literal["none", "median", "hyperband"] = "none"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    min_resource: int = 1
    reduction_factor: int = 3

    def __post_init__(self) -> None:
        for name, low in (("n_startup_trials", 0), ("n_warmup_steps", 0), ("min_resource", 1),
                          ("reduction_factor", 2)):
            if getattr(self, name) < low:
                raise ValueError(f"{name}: got {getattr(self, name)}, expected an integer >= {low}")


@dataclass(frozen=True)
class SeedsConfig:
    """Seeds per configuration where a comparison is undecided (`xvol_lab.study.sequential`): every
    configuration first trains `min` seeds, then one more at a time until its comparison with the
    baseline is decided or it has `max` (the baseline always trains `max`)."""

    min: int = 1
    max: int = 1

    def __post_init__(self) -> None:
        if self.min < 1:
            raise ValueError(f"min: got {self.min}, expected an integer >= 1")
        if self.max < self.min:
            raise ValueError(f"min: got {self.min}, expected at most max ({self.max})")
        if self.max > self.min < 2:
            raise ValueError(f"min: got {self.min}, expected at least 2 when max > min (a paired t-test "
                             "needs 2 seeds)")


@dataclass(frozen=True)
class BudgetConfig:
    """`n_trials` finished trials, each one configuration (null: the grid's size, grid studies
    only; the controls run on top), trained `seeds` times (seeds base.seed + 0 .. seeds - 1; or
    ``{min, max}``: `SeedsConfig`) for `epochs` epochs each (replaces base.trainer.max_epochs).
    An interrupted trial (lost worker, preemption) is continued by a retry at most `max_retries`
    times; model failures are never retried."""

    n_trials: int | None = None
    epochs: int = 3
    seeds: int | SeedsConfig = 1
    max_retries: int = 3

    def __post_init__(self) -> None:
        for name in ("n_trials", "epochs", "seeds"):
            value = getattr(self, name)
            if isinstance(value, int) and value < 1:
                raise ValueError(f"{name}: got {value}, expected an integer >= 1")
        if self.max_retries < 0:
            raise ValueError(f"max_retries: got {self.max_retries}, expected an integer >= 0")

    @property
    def design(self) -> SeedDesign:
        """The seeds as a sequential design (min = max for a plain number)."""
        if isinstance(self.seeds, SeedsConfig):
            return SeedDesign(self.seeds.min, self.seeds.max)
        return SeedDesign(self.seeds, self.seeds)

    @property
    def max_seeds(self) -> int:
        """The most seeds a configuration trains (the baseline's number)."""
        return self.design.max


@dataclass(frozen=True)
class PlanItem:
    """A planned trial: its point of the space (`{}` for a control) and its role, if any."""

    point: dict[str, Any]
    role: Literal["baseline", "positive", "negative"] | None = None


@dataclass(frozen=True)
class StudyConfig:
    """A whole study file. See studies/README.md for every key."""

    description: str = ""
    task: Task = DEFAULT_TASK
    base: RunConfig = field(default_factory=RunConfig)
    space: SpaceConfig | None = None
    objectives: tuple[ObjectiveConfig, ...] = (ObjectiveConfig(),)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    enqueue: tuple[dict[str, Any], ...] = ()
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    heartbeat: int = 10
    search: Literal["trials", "one_shot"] = "trials"
    one_shot: OneShotConfig = field(default_factory=OneShotConfig)

    def __post_init__(self) -> None:
        if self.space is None:
            raise ValueError("space: missing, expected a search space (stages, and optionally place)")
        if self.base.task != self.task:
            raise ValueError(f"base.task: got {self.base.task!r}, expected the study's task {self.task!r}")
        if not self.objectives:
            raise ValueError("objectives: got [], expected at least one {metric, direction}")
        distinct("objectives", tuple(o.metric for o in self.objectives))
        data = self.base.data
        for i, o in enumerate(self.objectives):
            if o.metric == metrics.VAL_ACC5 and data.name in BALANCED_NAMES and data.num_classes <= 5:
                raise ValueError(f"objectives.{i}.metric: got {o.metric}, expected another metric: with "
                                 f"{data.num_classes} classes the top-5 accuracy is 1 by construction")
        if self.pruner.name != "none":
            if len(self.objectives) > 1:
                raise ValueError(f"pruner.name: got {self.pruner.name!r}, expected 'none' with several "
                                 "objectives (Optuna prunes single-objective studies only)")
            if self.objectives[0].metric in MEASURED:
                raise ValueError(f"pruner.name: got {self.pruner.name!r}, expected 'none' for objective "
                                 f"{self.objectives[0].metric} (measured once, after training)")
        if self.heartbeat < 1:
            raise ValueError(f"heartbeat: got {self.heartbeat}, expected an integer >= 1 (seconds)")
        every = self.base.trainer.check_val_every_n_epoch
        if self.budget.epochs % every:
            raise ValueError(f"base.trainer.check_val_every_n_epoch: got {every}, expected a divisor of "
                             f"budget.epochs ({self.budget.epochs}): a trial's values come from its last epoch's "
                             "validation")
        if self.base.order_seed is not None:
            raise ValueError(f"base.order_seed: got {self.base.order_seed}, expected null (a trial's runs take "
                             "their training order from their seeds; the negative control's from "
                             "controls.negative.training_order)")
        offset = NEGATIVE_SEED_OFFSET if self.controls.negative else 0
        last = self.budget.max_seeds - 1 + offset
        if not 0 <= self.base.seed <= MAX_SEED - last:
            shifted = f" (the negative control's: base.seed + {offset} + i)" if offset else ""
            raise ValueError(f"base.seed: got {self.base.seed}, expected an integer from 0 to "
                             f"{MAX_SEED - last} (seeds base.seed + 0 .. budget.seeds - 1{shifted})")
        self._check_heads()
        for j, point in enumerate(self.enqueue):
            check_point(self.space, self.base.model, point, f"enqueue.{j}")
        if self.search == "one_shot":
            self._check_one_shot()
        elif self.sampler.name == "grid":
            size = len(expand_space(self.space, self.base.model))
            if self.budget.n_trials is not None and self.budget.n_trials > size:
                raise ValueError(f"budget.n_trials: got {self.budget.n_trials}, expected at most {size} "
                                 f"(the number of distinct grid points)")
        elif self.budget.n_trials is None:
            raise ValueError(f"budget.n_trials: got null, expected an integer >= 1 (only grid studies "
                             f"default to the grid size; sampler is {self.sampler.name!r})")
        self._check_baseline()

    def _check_one_shot(self) -> None:
        """A one-shot study chooses among operators, trains at most the whole space stand-alone, and
        classifies (its paths are scored by class accuracy); its trials are the stand-alone check."""
        assert self.space is not None
        specs = [spec_of(self.space, self.base.model, p) for p in expand_space(self.space, self.base.model)]
        if len({tuple(s.op for s in spec.stages) for spec in specs}) < 2:
            raise ValueError("space: got no operator choice, expected at least two operators for a one-shot "
                             "search (search: one_shot shares weights between operators)")
        if self.one_shot.k > len(specs):
            raise ValueError(f"one_shot.top_k: got top_k + random_k = {self.one_shot.k}, expected at most "
                             f"{len(specs)} (the number of distinct points of the space)")
        if task_record(self.task).output != "labels":
            raise ValueError(f"search: got 'one_shot' for task {self.task!r}, expected a task whose network "
                             "returns class labels (paths are scored by accuracy)")
        if self.controls.roles:
            raise ValueError("controls: expected none with search: one_shot (its check is the stand-alone "
                             "training of the top-k and random paths)")
        if self.budget.n_trials is not None and self.budget.n_trials != self.one_shot.k:
            raise ValueError(f"budget.n_trials: got {self.budget.n_trials}, expected null with search: one_shot "
                             f"(its trials are one_shot.top_k + random_k = {self.one_shot.k})")

    def standalone(self, points: Sequence[dict[str, Any]]) -> StudyConfig:
        """The ordinary study of a one-shot study's stand-alone check: exactly `points`, in order."""
        budget = dataclasses.replace(self.budget, n_trials=len(points))
        return dataclasses.replace(self, enqueue=tuple(points), budget=budget, search="trials")

    def _check_baseline(self) -> None:
        """Controls and added seeds need an all-conv baseline; the positive control applies to it."""
        needs = [what for what, used in (("controls", bool(self.controls.roles)),
                                         ("budget.seeds", self.budget.design.sequential)) if used]
        if needs and self.baseline_spec is None:
            raise ValueError(f"{needs[0]}: expected an all-conv configuration in enqueue or the grid "
                             "(the baseline every row is compared with)")
        if self.controls.positive is not None and self.baseline_spec is not None:
            try:
                self.controls.spec(POSITIVE, self.baseline_spec)
            except ValueError as err:
                raise ValueError(f"controls.positive.{err}") from None
        positive, most = self.controls.positive, self.budget.max_seeds
        if positive is not None and positive.seeds is not None and positive.seeds > most:
            raise ValueError(f"controls.positive.seeds: got {positive.seeds}, expected at most budget.seeds "
                             f"({most}): the positive control trains the baseline's first seeds")

    def _check_heads(self) -> None:
        assert self.space is not None
        widths = self.base.model.widths
        for i, choice in self.space.stage_choices().items():
            for j, heads in enumerate(choice.heads):
                try:
                    resolve_heads(heads, widths[i - 1])
                except ValueError:
                    raise ValueError(f"space.stages.{i}.heads.{j}: got {heads}, expected a positive divisor "
                                     f"of the stage width {widths[i - 1]}") from None

    @property
    def directions(self) -> list[str]:
        """Optuna directions, one per objective."""
        return [o.direction for o in self.objectives]

    @property
    def metric_names(self) -> list[str]:
        """Objective metric names, in order."""
        return [o.metric for o in self.objectives]

    @functools.cached_property
    def plan(self) -> tuple[dict[str, Any], ...]:
        """Points the first trials take, in order: the `enqueue` list, then (grid) every other grid point."""
        assert self.space is not None
        points = list(self.enqueue)
        if self.sampler.name == "grid":
            taken = {spec_of(self.space, self.base.model, p) for p in points}
            points += [p for p in expand_space(self.space, self.base.model)
                       if spec_of(self.space, self.base.model, p) not in taken]
        return tuple(points)

    @functools.cached_property
    def baseline_point(self) -> int | None:
        """The index in `plan` of the baseline: the first all-conv point; None without one."""
        assert self.space is not None
        for i, point in enumerate(self.plan):
            if all(s.op == "conv" for s in spec_of(self.space, self.base.model, point).stages):
                return i
        return None

    @property
    def baseline_spec(self) -> BackboneSpec | None:
        """The baseline's network (`baseline_point`), None without one."""
        assert self.space is not None
        i = self.baseline_point
        return None if i is None else spec_of(self.space, self.base.model, self.plan[i])

    @functools.cached_property
    def schedule(self) -> tuple[PlanItem, ...]:
        """The planned trials in order: the baseline (every other row is paired with it), the controls,
        then the other `plan` points (`enqueue`, then the grid); the baseline and controls carry their role."""
        first = [] if self.baseline_point is None else [PlanItem(self.plan[self.baseline_point], "baseline")]
        controls = [PlanItem({}, role) for role in self.controls.roles]
        rest = [PlanItem(p) for i, p in enumerate(self.plan) if i != self.baseline_point]
        return tuple(first + controls + rest)

    @property
    def n_trials(self) -> int:
        """Finished trials the study ends with: its configurations and its controls."""
        if self.search == "one_shot":
            return self.one_shot.k
        configurations = self.budget.n_trials if self.budget.n_trials is not None else len(self.plan)
        return configurations + len(self.controls.roles)

    @property
    def seeds(self) -> list[int]:
        """The seeds the baseline trains (every configuration trains a prefix of them):
        base.seed + 0 .. max - 1."""
        return [self.base.seed + i for i in range(self.budget.max_seeds)]

    def run_config(self, spec: BackboneSpec, seed: int | None = None, order_seed: int | None = None) -> RunConfig:
        """The base run config with the trial's architecture, the budget's epochs and `seed`
        (default base.seed; it changes initialisation, data order and augmentation, not the data);
        `order_seed` gives the training order its own seed (default: `seed`'s)."""
        trainer = dataclasses.replace(self.base.trainer, max_epochs=self.budget.epochs)
        return dataclasses.replace(self.base, model=spec, trainer=trainer,
                                   seed=self.base.seed if seed is None else seed, order_seed=order_seed)

    def identity(self) -> dict[str, Any]:
        """What workers sharing one study must agree on: all that changes results, not where the data
        lies, how it is loaded, the devices, or the budget's n_trials."""
        data = to_dict(self)
        base = data["base"]
        dataset = {k: v for k, v in base["data"].items() if k not in ("root", "num_workers")}
        design = self.budget.design
        seeds: dict[str, Any] = {}  # absent for one seed: storages made before seeds
        if design.sequential:
            seeds = {"seeds": {"min": design.min, "max": design.max}}
        elif design.max != 1:
            seeds = {"seeds": design.max}
        controls = {"controls": data["controls"]} if self.controls.roles else {}  # absent: older storages
        return {k: data[k] for k in ("task", "space", "objectives", "sampler", "pruner", "enqueue")} | {
            "epochs": self.budget.epochs, "seed": base["seed"], "data": dataset, "model": base["model"],
            "optim": base["optim"]} | seeds | controls


# ---- files ------------------------------------------------------------------------------------------
_EPOCHS_KEY = ("base", "trainer", "max_epochs")


def resolve_study_path(name: str | Path) -> Path:
    """NAME (a file in studies/, with or without .yaml) or a path to a YAML file."""
    text = str(name)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        if not path.is_file():
            raise ConfigError(f"{text}: no such study file")
        return path
    path = STUDIES_DIR / f"{text}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))
        raise ConfigError(f"study {text!r}: no {_display(path)}; expected one of {listing(known)} or a "
                          f"path to a .yaml file")
    return path


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def study_name(path: Path) -> str:
    """The study's name: its file name without .yaml."""
    return path.stem


def _study_text(path: Path, shown: str) -> str:
    """The text of a study file; ConfigError (one line) for one that is not UTF-8 text."""
    raw = path.read_bytes()
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ConfigError(f"{shown}: UTF-16 text; expected a YAML study file saved as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{shown}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                          "expected a YAML study file saved as UTF-8") from None
    if "\x00" in text:
        raise ConfigError(f"{shown}: binary data (a NUL byte at offset {text.index(chr(0))}); expected a "
                          "YAML study file saved as UTF-8")
    return text


def load_study_config(name: str | Path, overrides: Sequence[str] = ()) -> tuple[str, StudyConfig]:
    """(name, config) of study NAME with ``key.path=value`` `overrides` applied; errors name the file."""
    path = resolve_study_path(name)
    shown = _display(path)
    try:
        data = yaml.safe_load(_study_text(path, shown))
    except OSError as err:
        raise ConfigError(f"{shown}: cannot read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{shown}: invalid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: got {type(data).__name__}, expected a mapping of study keys")
    trainer = (data.get("base") or {}).get("trainer") if isinstance(data.get("base"), dict) else None
    if isinstance(trainer, dict) and "max_epochs" in trainer:
        raise ConfigError(f"{shown}: {'.'.join(_EPOCHS_KEY)}: set by budget.epochs; expected no value here")
    base = data.get("base")
    if isinstance(base, dict) and isinstance(data.get("task"), str):
        base.setdefault("task", data["task"])  # the study's task is its runs' task
    try:
        config = from_dict(StudyConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{shown}: {err}") from None
    for text in overrides:
        keys, _ = parse_override(text)
        if tuple(keys) == _EPOCHS_KEY:
            raise ConfigError(f"--set {text}: set budget.epochs instead "
                              "(it replaces base.trainer.max_epochs)")
        try:
            config = with_overrides(config, [text])
        except ConfigError as err:
            raise ConfigError(f"--set {text}: {shown}: {err}") from None
    return study_name(path), config


def list_study_files() -> list[Path]:
    """The shipped study files, by name."""
    return sorted(STUDIES_DIR.glob("*.yaml"))
