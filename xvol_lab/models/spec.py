"""Architecture specs: frozen dataclasses that say which operator each ResNet stage uses.

A `BackboneSpec` is passed whole to `build_backbone`, stored with every run (spec.json) and in
checkpoints, and the model is rebuilt from it. (De)serialisation goes through `xvol_lab.schema`,
so a bad value raises `ConfigError` naming its key path (``stage3.op: got 'foo', expected ...``;
stages are numbered 1..4 as in the paper).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from xvol_lab import schema
from xvol_lab.errors import ConfigError
from xvol_lab.ops import OPS, op_options
from xvol_lab.ops.options import check_dirs, check_kernel_size, check_shift, check_stack, resolve_heads

Block = Literal["basic", "bottleneck"]
Stem = Literal["imagenet", "small"]

BASE_WIDTHS = (64, 128, 256, 512)
EXPANSION = {"basic": 1, "bottleneck": 4}
PRESETS: dict[str, tuple[Block, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
# Short names for `describe()`: L is the paper's shift size.
_SHORT = {"kernel_size": "K", "heads": "h", "shift": "L", "dirs": "dirs", "stack": "stack"}


def scale_width(base: int, width_mult: float) -> int:
    """``base * width_mult`` rounded half up to a multiple of 8, at least 8."""
    return max(8, int(base * width_mult / 8 + 0.5) * 8)


@dataclass(frozen=True)
class StageSpec:
    """The operator that replaces every 3x3 convolution (+ its BatchNorm) of one stage, and its options.

    Options an operator does not take are kept but ignored (`op_kwargs` drops them).
    """

    op: str = "conv"
    kernel_size: int = 3
    heads: int | None = None
    shift: int = 1
    dirs: int = 8
    stack: int = 1

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op: got {self.op!r}, expected one of {', '.join(OPS)}")
        check_kernel_size(self.kernel_size)
        check_shift(self.shift)
        check_dirs(self.dirs)
        check_stack(self.stack)
        if self.heads is not None and (not schema.is_int(self.heads) or self.heads < 1):
            raise ValueError(f"heads: got {self.heads!r}, expected a positive integer or null (auto)")

    def op_kwargs(self) -> dict[str, Any]:
        """The options `create_op(self.op, ...)` takes; heads is left out when None (auto)."""
        return {name: getattr(self, name) for name in op_options(self.op)
                if not (name == "heads" and self.heads is None)}

    def describe(self) -> str:
        """``op`` or ``op(L=2, dirs=4)``: the options that differ from the operator's defaults."""
        defaults = op_options(self.op)
        changed = [f"{_SHORT[k]}={v}" for k, v in self.op_kwargs().items() if v != defaults[k]]
        return f"{self.op}({', '.join(changed)})" if changed else self.op


@dataclass(frozen=True)
class BackboneSpec:
    """A ResNet: block type, blocks per stage, width multiplier, stem, and one `StageSpec` per stage.

    Stage widths are 64, 128, 256, 512 times `width_mult` (multiples of 8); a bottleneck stage
    outputs 4x its width. Stem 'imagenet' is a 7x7/2 conv + 3x3/2 max pool (stride 4), 'small' a
    3x3/1 conv (stride 1, for 32 px images).
    """

    block: Block = "basic"
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)
    width_mult: float = 1.0
    stem: Stem = "imagenet"
    stages: tuple[StageSpec, StageSpec, StageSpec, StageSpec] = field(
        default_factory=lambda: (StageSpec(),) * 4, metadata=schema.numbered("stage"))  # stage1..stage4
    in_chans: int = 3

    def __post_init__(self) -> None:
        for name in ("depths", "stages"):  # accept lists from Python callers; keep the spec hashable
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.block not in EXPANSION:
            raise ValueError(f"block: got {self.block!r}, expected one of {', '.join(map(repr, EXPANSION))}")
        if self.stem not in ("imagenet", "small"):
            raise ValueError(f"stem: got {self.stem!r}, expected one of 'imagenet', 'small'")
        if (not isinstance(self.depths, tuple) or len(self.depths) != 4
                or not all(schema.is_int(d) and d >= 1 for d in self.depths)):
            raise ValueError(f"depths: got {self.depths!r}, expected 4 integers >= 1")
        if isinstance(self.width_mult, bool) or not isinstance(self.width_mult, (int, float)) \
                or not self.width_mult > 0:
            raise ValueError(f"width_mult: got {self.width_mult!r}, expected a number > 0")
        object.__setattr__(self, "width_mult", float(self.width_mult))
        if not schema.is_int(self.in_chans) or self.in_chans < 1:
            raise ValueError(f"in_chans: got {self.in_chans!r}, expected an integer >= 1")
        if (not isinstance(self.stages, tuple) or len(self.stages) != 4
                or not all(isinstance(s, StageSpec) for s in self.stages)):
            raise ValueError(f"stages: got {self.stages!r}, expected 4 StageSpec")
        for i, (stage, width) in enumerate(zip(self.stages, self.widths, strict=True)):
            if "heads" in stage.op_kwargs():
                try:
                    resolve_heads(stage.heads, width)
                except ValueError:
                    raise ValueError(f"stage{i + 1}.heads: got {stage.heads}, expected a positive divisor "
                                     f"of the stage width {width}") from None

    # ---- derived quantities -------------------------------------------------------------------
    @property
    def expansion(self) -> int:
        """Output channels per unit of width: 1 (basic) or 4 (bottleneck)."""
        return EXPANSION[self.block]

    @property
    def widths(self) -> tuple[int, ...]:
        """Width of each stage's 3x3 operator (the stem has widths[0] channels)."""
        return tuple(scale_width(b, self.width_mult) for b in BASE_WIDTHS)

    @property
    def channels(self) -> tuple[int, ...]:
        """Output channels of each stage."""
        return tuple(w * self.expansion for w in self.widths)

    @property
    def name(self) -> str:
        """The preset name for this block/depths (``resnet50``), else ``resnet-basic-1-1-1-1``."""
        for name, (block, depths) in PRESETS.items():
            if (block, depths) == (self.block, self.depths):
                return name
        return f"resnet-{self.block}-{'-'.join(map(str, self.depths))}"

    def describe(self) -> str:
        """One line for reports: ``resnet18 [conv, conv, xvol_pssa(L=2), conv]`` + non-default fields."""
        text = f"{self.name} [{', '.join(s.describe() for s in self.stages)}]"
        if self.width_mult != 1.0:
            text += f" width_mult={self.width_mult:g}"
        if self.stem != "imagenet":
            text += f" stem={self.stem}"
        if self.in_chans != 3:
            text += f" in_chans={self.in_chans}"
        return text

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BackboneSpec:
        """resnet18/34/50/101, with fields overridden (``width_mult=0.25, stem='small'``)."""
        if name not in PRESETS:
            raise ConfigError(f"preset: got {name!r}, expected one of {', '.join(PRESETS)}")
        block, depths = PRESETS[name]
        return cls.from_dict({"block": block, "depths": depths, **overrides})

    def with_stage(self, index: int, **changes: Any) -> BackboneSpec:
        """A copy with stage `index` (1..4, as in layer1..layer4) changed: ``with_stage(3, op='xvol_sa')``."""
        if index not in (1, 2, 3, 4) or not schema.is_int(index):
            raise ConfigError(f"stage: got {index!r}, expected 1, 2, 3 or 4")
        data = self.to_dict()
        data["stages"][index - 1].update(changes)
        return self.from_dict(data)

    # ---- serialisation ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any) -> BackboneSpec:
        """Inverse of `to_dict`; unknown keys and bad values raise ConfigError with the key path."""
        return schema.from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts/lists/scalars (JSON/YAML ready)."""
        return schema.to_dict(self)

    @classmethod
    def from_json(cls, text: str) -> BackboneSpec:
        """Parse `to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"spec JSON: {err}") from None
        return cls.from_dict(data)

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of `to_dict`."""
        return json.dumps(self.to_dict(), indent=indent)


__all__ = ["PRESETS", "BackboneSpec", "StageSpec", "scale_width"]
