"""The define-by-run search space: per-stage operator, then the chosen operator's options.

`suggest_spec(trial, space, base)` asks `trial` (an Optuna trial, or `optuna.trial.FixedTrial(params)`
to rebuild a finished trial's architecture) for ``place``, ``stage{i}.op`` and ``stage{i}.<option>``
(categorical parameters) and returns the `BackboneSpec`. A choice with a single value is applied
without a parameter. `expand_space` lists every distinct point of the (conditional) space.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from xvol_lab.models import BackboneSpec
from xvol_lab.ops import op_options
from xvol_lab.study.space_config import OPTION_NAMES, SpaceConfig

PLACE = "place"


class SuggestsCategorical(Protocol):
    """The part of `optuna.trial.Trial` the space uses."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def param_name(stage: int, key: str) -> str:
    """``stage3.op``, ``stage3.shift``: the parameter of `key` in stage `stage`."""
    return f"stage{stage}.{key}"


def _choose(trial: SuggestsCategorical, name: str, values: tuple[Any, ...]) -> Any:
    return values[0] if len(values) == 1 else trial.suggest_categorical(name, list(values))


def suggest_spec(trial: SuggestsCategorical, space: SpaceConfig, base: BackboneSpec) -> BackboneSpec:
    """The architecture `trial` picks from `space`, starting from `base`."""
    choices = space.stage_choices()
    if space.place:
        where = _choose(trial, PLACE, space.place)
        choices = {where: choices[where]} if where else {}
    stages = list(base.stages)
    for stage, choice in choices.items():
        op = _choose(trial, param_name(stage, "op"), choice.op)
        changes: dict[str, Any] = {"op": op}
        for option in OPTION_NAMES:
            values = getattr(choice, option)
            if values and option in op_options(op):
                changes[option] = _choose(trial, param_name(stage, option), values)
        stages[stage - 1] = dataclasses.replace(stages[stage - 1], **changes)
    return dataclasses.replace(base, stages=tuple(stages))


class _Replay:
    """Takes the choices at positions `path` (first choice past its end) and records each decision."""

    def __init__(self, path: list[int]) -> None:
        self.path = path
        self.taken: list[int] = []
        self.sizes: list[int] = []
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        k = len(self.taken)
        index = self.path[k] if k < len(self.path) else 0
        self.taken.append(index)
        self.sizes.append(len(choices))
        self.params[name] = choices[index]
        return choices[index]


def expand_space(space: SpaceConfig, base: BackboneSpec) -> list[dict[str, Any]]:
    """Every point of `space` (parameter dicts) in depth-first order, one per distinct architecture."""
    points: list[dict[str, Any]] = []
    seen: set[BackboneSpec] = set()
    path: list[int] = []
    while True:
        replay = _Replay(path)
        spec = suggest_spec(replay, space, base)
        if spec not in seen:
            seen.add(spec)
            points.append(replay.params)
        for k in reversed(range(len(replay.taken))):
            if replay.taken[k] + 1 < replay.sizes[k]:
                path = [*replay.taken[:k], replay.taken[k] + 1]
                break
        else:
            return points


class _Check:
    """Answers from `params`, checking each value is one of the choices; remembers what was asked."""

    def __init__(self, params: dict[str, Any], label: str) -> None:
        self.params = params
        self.label = label
        self.asked: list[str] = []

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.asked.append(name)
        if name not in self.params:
            raise ValueError(f"{self.label}: missing {name}; expected one of {', '.join(map(repr, choices))}")
        value = self.params[name]
        if not any(value == c and type(value) is type(c) for c in choices):
            raise ValueError(f"{self.label}.{name}: got {value!r}, expected one of "
                             f"{', '.join(map(repr, choices))}")
        return value


def check_point(space: SpaceConfig, base: BackboneSpec, params: dict[str, Any], label: str) -> BackboneSpec:
    """The spec of the fixed point `params`; ValueError (prefixed `label`) if it is not exactly a point."""
    check = _Check(params, label)
    spec = suggest_spec(check, space, base)
    extra = [k for k in params if k not in check.asked]
    if extra:
        raise ValueError(f"{label}.{extra[0]}: not a parameter of this point; expected only "
                         f"{', '.join(check.asked) or 'no parameters'}")
    return spec


def spec_of(space: SpaceConfig, base: BackboneSpec, params: dict[str, Any]) -> BackboneSpec:
    """The spec of a valid point (a finished trial's params)."""
    return check_point(space, base, params, "params")
