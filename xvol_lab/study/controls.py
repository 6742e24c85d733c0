"""The `controls` section of a study file: evidence that the study can see an effect.

- positive control: the baseline changed by `params` (``stage3.op: pointwise``: stage fields, in or
  out of the searched space) into a network that lacks what the task needs; trained with the
  baseline's seeds (its first `seeds` of them where set: an effect built to be large is detected
  with few), it must come out worse than the baseline;
- negative control: the baseline itself under a disjoint seed set (base.seed + `NEGATIVE_SEED_OFFSET`
  + i), paired with the baseline's i-th seed; it must come out not distinguishable. With
  ``training_order: shared`` (the default) its i-th run keeps the baseline's i-th training order
  (`RunConfig.order_seed`) and only its initialisation and augmentation differ: the pairing every
  row has (a row trains with the baseline's seeds), so the control's spread is the procedure's.
  ``disjoint`` shares nothing with the baseline.

Both run as trials of the study, right after the enqueued points, and appear in every table as rows
named ``positive control: <name>`` and ``negative control: <name>``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from xvol_lab.models import BackboneSpec, StageSpec
from xvol_lab.study.space_config import STAGES, listing

NEGATIVE_SEED_OFFSET = 10_000
CONTROL_ATTR = "control"  # user attr of a control's trial: its role
POSITIVE, NEGATIVE = "positive", "negative"
Role = Literal["positive", "negative"]
TrainingOrder = Literal["shared", "disjoint"]
ROLE_LABEL = {POSITIVE: "positive control", NEGATIVE: "negative control"}
_FIELDS = tuple(f.name for f in dataclasses.fields(StageSpec))


def _check_name(name: str) -> None:
    if not name.strip():
        raise ValueError("name: got '', expected a short description of the control")


def _stage_key(key: str) -> tuple[int, str]:
    """``stage3.op`` -> (3, 'op'); ValueError naming the key otherwise."""
    stage, _, name = key.partition(".")
    number = stage.removeprefix("stage")
    if not stage.startswith("stage") or not number.isdigit() or int(number) not in STAGES or name not in _FIELDS:
        raise ValueError(f"params.{key}: unknown key; expected stage<1-4>.<{'|'.join(_FIELDS)}>")
    return int(number), name


def apply_params(spec: BackboneSpec, params: dict[str, Any]) -> BackboneSpec:
    """`spec` with the stage fields of `params` (``stage3.op: pointwise``) set; ValueError naming
    ``params.<key>`` for an unknown key or a bad value."""
    changes: dict[int, dict[str, Any]] = {}
    for key, value in params.items():
        stage, name = _stage_key(key)
        changes.setdefault(stage, {})[name] = value
    stages = list(spec.stages)
    for stage, fields in changes.items():
        try:
            stages[stage - 1] = dataclasses.replace(stages[stage - 1], **fields)
        except ValueError as err:  # StageSpec's messages start with the field name
            raise ValueError(f"params.stage{stage}.{err}") from None
    return dataclasses.replace(spec, stages=tuple(stages))


@dataclass(frozen=True)
class PositiveControl:
    """A configuration that by construction lacks what the task needs: the baseline with `params`."""

    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    seeds: int | None = None  # the baseline's first `seeds` seeds; None: all of them

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.seeds is not None and self.seeds < 2:
            raise ValueError(f"seeds: got {self.seeds}, expected an integer >= 2 (a paired t-test needs 2 "
                             "seeds) or no value (the baseline's seeds)")
        if not self.params:
            raise ValueError("params: got {}, expected stage fields that weaken the baseline "
                             "(e.g. {stage3.op: pointwise})")
        apply_params(BackboneSpec(), self.params)  # keys and values (op in the registry, options)


@dataclass(frozen=True)
class NegativeControl:
    """The baseline under a disjoint seed set, with the baseline's training order or its own."""

    name: str = ""
    training_order: TrainingOrder = "shared"

    def __post_init__(self) -> None:
        _check_name(self.name)


@dataclass(frozen=True)
class ControlsConfig:
    """The study's controls (each optional)."""

    positive: PositiveControl | None = None
    negative: NegativeControl | None = None

    @property
    def roles(self) -> tuple[Role, ...]:
        """The controls present, in the order they run."""
        present: list[Role] = []
        if self.positive is not None:
            present.append(POSITIVE)
        if self.negative is not None:
            present.append(NEGATIVE)
        return tuple(present)

    def label(self, role: str) -> str:
        """``positive control: <name>``: the control's row name in every table."""
        control = self.positive if role == POSITIVE else self.negative
        if control is None:
            raise ValueError(f"control: got {role!r}, expected one of {listing(self.roles)}")
        return f"{ROLE_LABEL[role]}: {control.name}"

    def spec(self, role: str, baseline: BackboneSpec) -> BackboneSpec:
        """The control's network: the baseline changed by the positive control's params, or the baseline."""
        if role == POSITIVE:
            assert self.positive is not None
            return apply_params(baseline, self.positive.params)
        return baseline

    def seeds(self, role: str, seeds: list[int]) -> list[int]:
        """The control's seeds for the baseline's `seeds`: the same (the positive control's first
        `seeds` of them where set), or (negative) shifted to a disjoint set."""
        if role == NEGATIVE:
            return [s + NEGATIVE_SEED_OFFSET for s in seeds]
        count = self.positive.seeds if role == POSITIVE and self.positive is not None else None
        return list(seeds[:count])

    def order_seeds(self, role: str, seeds: list[int]) -> list[int] | None:
        """The training-order seeds of the control's runs for the baseline's `seeds` (run i: the
        baseline's i-th order), or None where each run's order follows its own seed."""
        shared = role == NEGATIVE and self.negative is not None and self.negative.training_order == "shared"
        return list(seeds) if shared else None
