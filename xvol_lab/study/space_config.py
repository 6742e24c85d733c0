"""The search-space section of a study file: each stage's operator and option choices, and `place`
(one stage takes its choices). Checked when the study file is read; `xvol_lab.study.space` turns it
into Optuna parameters and grid points."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xvol_lab.ops import OPS, op_options
from xvol_lab.ops.options import check_dirs, check_kernel_size, check_shift, check_stack

# The operator options a stage may search, in the order they are suggested.
OPTION_NAMES = ("kernel_size", "heads", "shift", "dirs", "stack")
STAGES = (1, 2, 3, 4)
_OPTION_CHECKS = {"kernel_size": check_kernel_size, "shift": check_shift, "dirs": check_dirs,
                  "stack": check_stack}


def listing(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def distinct(name: str, values: tuple[Any, ...]) -> None:
    seen: list[Any] = []
    for value in values:
        if any(value == s and type(value) is type(s) for s in seen):
            raise ValueError(f"{name}: got {value!r} twice, expected distinct values")
        seen.append(value)


@dataclass(frozen=True)
class StageChoice:
    """One stage's choices: an operator from `op`, then each option of the chosen operator that
    has choices here (an empty list keeps the base model's value). Options are suggested only for
    operators that take them (`xvol_lab.ops.op_options`)."""

    op: tuple[str, ...] = ()
    kernel_size: tuple[int, ...] = ()
    heads: tuple[int | None, ...] = ()
    shift: tuple[int, ...] = ()
    dirs: tuple[int, ...] = ()
    stack: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.op:
            raise ValueError("op: got [], expected a list of operators")
        for i, op in enumerate(self.op):
            if op not in OPS:
                raise ValueError(f"op.{i}: got {op!r}, expected one of {listing(OPS)}")
        distinct("op", self.op)
        for name in OPTION_NAMES:
            values = getattr(self, name)
            if not values:
                continue
            if not any(name in op_options(op) for op in self.op):
                takers = [op for op in OPS if name in op_options(op)]
                raise ValueError(f"{name}: no operator in [{listing(self.op)}] takes it; expected it only "
                                 f"with {listing(takers)}")
            distinct(name, values)
            for j, value in enumerate(values):
                if name in _OPTION_CHECKS:
                    try:
                        _OPTION_CHECKS[name](value)
                    except ValueError as err:
                        raise ValueError(f"{name}.{j}: {str(err).split(': ', 1)[1]}") from None
                elif value is not None and value < 1:
                    raise ValueError(f"{name}.{j}: got {value}, expected a positive integer or null (auto)")


@dataclass(frozen=True)
class SpaceConfig:
    """The search space. Without `place`, every stage listed in `stages` draws from its choices.
    With `place` (a list of stage numbers, 0 = none), one parameter ``place`` picks the single
    stage that draws from its choices; the other stages keep the base model."""

    stages: dict[str, StageChoice] = field(default_factory=dict)
    place: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("stages: got nothing, expected choices for at least one stage (1-4)")
        for key in self.stages:
            if key not in {str(i) for i in STAGES}:
                raise ValueError(f"stages.{key}: unknown stage; expected 1, 2, 3 or 4")
        if not self.place:
            return
        distinct("place", self.place)
        for j, where in enumerate(self.place):
            if where not in (0, *STAGES):
                raise ValueError(f"place.{j}: got {where!r}, expected 0 (no stage) or a stage 1-4")
            if where and str(where) not in self.stages:
                raise ValueError(f"place.{j}: got {where}, expected a stage listed under stages "
                                 f"({listing(sorted(self.stages))})")
        for key in self.stages:
            if int(key) not in self.place:
                raise ValueError(f"stages.{key}: stage {key} is not in place {list(self.place)}; "
                                 f"expected only the placed stages")

    def stage_choices(self) -> dict[int, StageChoice]:
        """The choices by stage number, in stage order."""
        return {int(k): v for k, v in sorted(self.stages.items())}
