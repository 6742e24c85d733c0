"""The run configuration: what `lab.py train` and every study trial train, as one typed dataclass.

A `RunConfig` holds the task, the seed, the data (`DataConfig`), the architecture (`BackboneSpec`),
the optimiser (`OptimConfig`) and the Lightning trainer settings (`TrainerConfig`). YAML files are
read by `load_run_config`: a file gives only the keys it changes; the rest keep the defaults below
(sized for a laptop CPU: 32 px shapes, resnet18 with a small stem at width 0.25, a few epochs).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import yaml

from xvol_lab.data.config import DataConfig
from xvol_lab.errors import ConfigError
from xvol_lab.models import BackboneSpec
from xvol_lab.models.detection import DetectorConfig
from xvol_lab.schema import from_dict, is_int, parse_override, to_dict, with_overrides
from xvol_lab.tasks.registry import DEFAULT_TASK, TASKS, Task, task_record
from xvol_lab.tasks.trainer_args import check_trainer_args

MAX_SEED = 2**32 - 1  # the largest seed Lightning's seed_everything takes
Precision = Literal["32-true", "bf16-mixed", "16-mixed", "64-true"]
# Strategies that run this script once per process (so `fit` returns its metrics in every process).
Strategy = Literal["auto", "ddp", "ddp_find_unused_parameters_true"]
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
# torch.compile backends a run may ask for: inductor generates kernels (needs a C compiler on CPU);
# aot_eager and eager only trace (fast to compile, no speed-up: for tests and debugging).
CompileBackend = Literal["inductor", "aot_eager", "eager"]
LrScaling = Literal["none", "linear", "sqrt"]

PRECISIONS: tuple[str, ...] = get_args(Precision)
COMPILE_BACKENDS: tuple[str, ...] = get_args(CompileBackend)
STRATEGIES: tuple[str, ...] = get_args(Strategy)


def _check_limit(name: str, value: int | float) -> None:
    """Lightning's batch limits: an int is a number of batches, a float a fraction of the loader."""
    if is_int(value):
        if value < 1:
            raise ValueError(f"{name}: got {value}, expected an integer >= 1 (batches) "
                             "or a fraction in (0, 1]")
    elif not 0.0 < value <= 1.0:
        raise ValueError(f"{name}: got {value}, expected a fraction in (0, 1] or an integer >= 1 (batches)")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule.

    The schedule is stepped every optimiser step: a linear warmup over `warmup_epochs`, then
    'cosine' (to 0 at the last step), 'step' (times `step_gamma` at each epoch in
    `step_milestones`) or 'constant'. Weight decay skips BatchNorm parameters and biases.
    """

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = 1.0
    step_milestones: tuple[int, ...] = ()
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    lr_scaling: LrScaling = "none"
    reference_batch: int = 256

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr: got {self.lr}, expected a number > 0")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum: got {self.momentum}, expected a number in [0, 1)")
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov: got true, expected false unless name is 'sgd' with momentum > 0")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay: got {self.weight_decay}, expected a number >= 0")
        if not self.warmup_epochs >= 0:
            raise ValueError(f"warmup_epochs: got {self.warmup_epochs}, expected a number >= 0")
        milestones = self.step_milestones
        if any(not is_int(m) or m < 1 for m in milestones) or list(milestones) != sorted(set(milestones)):
            raise ValueError(f"step_milestones: got {list(milestones)}, expected increasing epochs >= 1")
        if not 0.0 < self.step_gamma <= 1.0:
            raise ValueError(f"step_gamma: got {self.step_gamma}, expected a number in (0, 1]")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: got {self.label_smoothing}, expected a number in [0, 1)")
        if not is_int(self.reference_batch) or self.reference_batch < 1:
            raise ValueError(f"reference_batch: got {self.reference_batch}, expected an integer >= 1")

    def scaled_lr(self, global_batch: int) -> float:
        """The learning rate a run with `global_batch` images per optimiser step uses.

        `lr` is the rate at `reference_batch` images per step; 'linear' scales it by
        global_batch / reference_batch (Goyal et al., 2017), 'sqrt' by the square root of that
        ratio (suits AdamW better), 'none' keeps it.
        """
        ratio = global_batch / self.reference_batch
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio ** 0.5}[self.lr_scaling]


@dataclass(frozen=True)
class TrainerConfig:
    """The `lightning.Trainer` arguments a run sets (see the Lightning docs for each), and how
    the network executes.

    The fields below are the arguments the lab reads or resolves itself; any other argument of
    `lightning.Trainer` may be given too (``trainer.fast_dev_run: true``, ``trainer.max_steps: 10``):
    it is kept in `extra`, typed as Lightning's signature types it and passed through
    (`xvol_lab.tasks.trainer_args`; the arguments the lab sets itself, such as callbacks and logger,
    are refused with the reason).

    `deterministic: true` runs deterministic algorithms; on CUDA, where some backward kernels
    (bilinear upsampling, NLL loss, RoI Align) have no deterministic version, it becomes
    Lightning's ``"warn"`` (warn, don't raise). `sync_batchnorm` (SyncBatchNorm across
    processes; it needs CUDA) defaults (null) to on for the dense tasks under multi-GPU DDP, where
    each GPU sees a few images, off otherwise. `accumulate_grad_batches` batches make one optimiser
    step. `compile` runs the network through `torch.compile` with `compile_backend` (detection:
    the backbone and FPN alone); `channels_last` stores the network and its image batches in the
    channels-last memory format. `curve_points` > 0 (classification) measures validation accuracy
    that many times per epoch on the first `curve_images` validation images and logs the area under
    that learning curve, ``val/acc1_auc`` (`xvol_lab.tasks.curve`). `threads` sets the CPU threads of
    the training process (`torch.set_num_threads`; null: torch's default, the cores the process may
    use). The thread count changes the float results (the order of reductions), so the fingerprint
    records it; a study whose trials run on the CPU with `threads` set runs as many trials at once
    as the cores allow (`xvol_lab.study.pool.default_workers`).
    """

    max_epochs: int = 5
    accelerator: Accelerator = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: Strategy = "auto"
    precision: Precision = "32-true"
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    deterministic: bool = False
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = None
    check_val_every_n_epoch: int = 1
    sync_batchnorm: bool | None = None
    accumulate_grad_batches: int = 1
    compile: bool = False
    compile_backend: CompileBackend = "inductor"
    channels_last: bool = False
    curve_points: int = 0
    curve_images: int = 250
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False)  # other lightning.Trainer arguments

    EXTRA_FIELD: ClassVar[str] = "extra"  # xvol_lab.schema: undeclared keys of the section go there

    def __post_init__(self) -> None:
        declared = sorted(set(self.extra) & {f.name for f in dataclasses.fields(self)})
        if declared:
            raise ValueError(f"{declared[0]}: given twice (a field of the trainer section and an extra argument)")
        object.__setattr__(self, "extra", check_trainer_args(self.extra))
        if self.curve_points < 0:
            raise ValueError(f"curve_points: got {self.curve_points}, expected an integer >= 0 (0: no curve)")
        for name in ("curve_images", "max_epochs", "num_nodes", "log_every_n_steps", "check_val_every_n_epoch",
                     "accumulate_grad_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: got {getattr(self, name)}, expected an integer >= 1")
        if self.check_val_every_n_epoch > self.max_epochs:  # no validation: no best checkpoint
            raise ValueError(f"check_val_every_n_epoch: got {self.check_val_every_n_epoch}, expected at most "
                             f"max_epochs ({self.max_epochs})")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: got {self.threads}, expected an integer >= 1 or null (torch's default)")
        if self.devices < 1 and self.devices != -1:
            raise ValueError(f"devices: got {self.devices}, expected an integer >= 1 or -1 (all)")
        _check_limit("limit_train_batches", self.limit_train_batches)
        _check_limit("limit_val_batches", self.limit_val_batches)  # > 0: the best checkpoint needs val
        if self.gradient_clip_val is not None and not self.gradient_clip_val > 0:
            raise ValueError(f"gradient_clip_val: got {self.gradient_clip_val}, "
                             "expected a number > 0 or null")


def default_model() -> BackboneSpec:
    """resnet18 with the 32 px stem at a quarter of the width: trains on a laptop CPU in minutes."""
    return BackboneSpec.preset("resnet18", stem="small", width_mult=0.25)


@dataclass(frozen=True)
class InitConfig:
    """Initial backbone weights (`xvol_lab.tasks.transfer`): `path` is a run folder, a Lightning
    checkpoint, an export folder or a torchvision-format state dict file; `strict` refuses any
    backbone tensor that is missing or has another shape, otherwise only the stages (stem,
    layer1..layer4) whose tensors all match are loaded."""

    path: str | None = None
    strict: bool = True

    def __post_init__(self) -> None:
        if self.path is not None and not self.path:
            raise ValueError("path: got '', expected a file or folder path, or null")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on; saved as run_dir/config.yaml."""

    task: Task = DEFAULT_TASK
    seed: int = 0  # initialisation, augmentation and (where order_seed is null) the training order
    order_seed: int | None = None  # the training order's own seed (null: seed)
    data: DataConfig = field(default_factory=DataConfig)
    model: BackboneSpec = field(default_factory=default_model)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)  # detection tasks only
    init: InitConfig = field(default_factory=InitConfig)  # backbone weights to start from

    @property
    def training_order_seed(self) -> int:
        """The seed of the training batches' order: `order_seed`, else `seed`."""
        return self.seed if self.order_seed is None else self.order_seed

    def __post_init__(self) -> None:
        for key in ("seed", "order_seed"):
            value = getattr(self, key)
            if value is not None and not 0 <= value <= MAX_SEED:
                raise ValueError(f"{key}: got {value}, expected an integer from 0 to {MAX_SEED}")
        datasets = task_record(self.task).datasets
        if self.data.name not in datasets:
            raise ValueError(f"data.name: got {self.data.name!r} for task {self.task!r}, expected one of "
                             f"{', '.join(datasets)}")
        if self.trainer.curve_points and task_record(self.task).output != "labels":
            raise ValueError(f"trainer.curve_points: got {self.trainer.curve_points} for task {self.task!r}, "
                             "expected 0 (the learning curve is a classification metric)")



def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in, section by section (lists and values are replaced)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read(path: Path, kind: str) -> Any:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {kind} file ({err.strerror or err})") from None
    try:
        return json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        detail = " ".join(str(err).split())
        raise ConfigError(f"{path}: invalid {kind}: {detail}") from None


def load_spec(path: str | Path) -> BackboneSpec:
    """A `BackboneSpec` from a JSON file (``BackboneSpec.to_json`` / a run's spec.json)."""
    path = Path(path)
    data = _read(path, "JSON")
    try:
        return from_dict(BackboneSpec, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _chosen_task(loaded: Mapping[str, Any] | None, overrides: list[str]) -> str:
    """The task a config file and overrides ask for (the last word wins); a task that does not
    exist falls back to the default task here and is refused by the validation after."""
    task = (loaded or {}).get("task", DEFAULT_TASK)
    for text in overrides:
        keys, value = parse_override(text)
        if keys == ["task"]:
            task = value
    return task if isinstance(task, str) and task in TASKS else DEFAULT_TASK


def load_run_config(path: str | Path | None = None, overrides: Iterable[str] = (), *,
                    arch: str | Path | None = None, base: RunConfig | None = None) -> RunConfig:
    """The defaults, updated by the YAML file `path` (if any), the spec file `arch` (replaces `model`),
    then the ``key.path=value`` `overrides`, in that order.

    The defaults are those of the task the file or the overrides choose (`TaskRecord.defaults`), or
    `base` where given (a resumed run's stored config).
    Every error is a one-line `ConfigError` naming the file or override, the key and what was expected.
    """
    overrides = list(overrides)
    data = to_dict(RunConfig() if base is None else base)
    loaded = None
    if path is not None:
        path = Path(path)
        loaded = _read(path, "YAML")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: got {type(loaded).__name__}, expected a mapping of sections "
                              f"({', '.join(data)})")
    if base is None:
        task = _chosen_task(loaded, overrides)
        data = _merge(data, {"task": task, **task_record(task).defaults})
    if path is not None:
        try:
            config = from_dict(RunConfig, _merge(data, loaded or {}))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    else:
        config = from_dict(RunConfig, data)
    if arch is not None:
        config = dataclasses.replace(config, model=load_spec(arch))
    return with_overrides(config, overrides, label="--set")


def dump_run_config(config: RunConfig) -> str:
    """YAML text that `load_run_config` reads back to an equal `RunConfig`."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


__all__ = ["InitConfig", "OptimConfig", "RunConfig", "TrainerConfig",
           "default_model", "dump_run_config", "load_run_config", "load_spec"]
