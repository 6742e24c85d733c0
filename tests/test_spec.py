"""BackboneSpec / StageSpec: presets, widths, op options, validation with key paths, round trips."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from xvol_lab import schema
from xvol_lab.errors import ConfigError
from xvol_lab.models import PRESETS, BackboneSpec, StageSpec
from xvol_lab.ops import OPS, op_options

ROOT = Path(__file__).resolve().parents[1]
STAGE_FIELDS = {f.name for f in dataclasses.fields(StageSpec)}


@pytest.mark.parametrize(("name", "block", "depths", "channels"), [
    ("resnet18", "basic", (2, 2, 2, 2), (64, 128, 256, 512)),
    ("resnet34", "basic", (3, 4, 6, 3), (64, 128, 256, 512)),
    ("resnet50", "bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048)),
    ("resnet101", "bottleneck", (3, 4, 23, 3), (256, 512, 1024, 2048)),
])
def test_presets(name: str, block: str, depths: tuple, channels: tuple) -> None:
    spec = BackboneSpec.preset(name)
    assert (spec.block, spec.depths, spec.channels) == (block, depths, channels)
    assert spec.widths == (64, 128, 256, 512)
    assert (spec.stem, spec.width_mult, spec.in_chans) == ("imagenet", 1.0, 3)
    assert spec.stages == (StageSpec(),) * 4 and all(s.op == "conv" for s in spec.stages)
    assert spec.name == name
    assert set(PRESETS) == {"resnet18", "resnet34", "resnet50", "resnet101"}


def test_default_spec_is_resnet18() -> None:
    assert BackboneSpec() == BackboneSpec.preset("resnet18")


@pytest.mark.parametrize(("width_mult", "widths"), [
    (1.0, (64, 128, 256, 512)),
    (0.5, (32, 64, 128, 256)),
    (0.25, (16, 32, 64, 128)),
    (0.125, (8, 16, 32, 64)),
    (0.1, (8, 16, 24, 48)),  # 6.4 -> 8 (the minimum), 25.6 -> 24, 51.2 -> 48
    (0.3, (16, 40, 80, 152)),  # 19.2 -> 16, 38.4 -> 40, 153.6 -> 152
    (1.5, (96, 192, 384, 768)),
    (0.01, (8, 8, 8, 8)),
])
def test_width_mult_scaling(width_mult: float, widths: tuple) -> None:
    spec = BackboneSpec.preset("resnet50", width_mult=width_mult)
    assert spec.widths == widths
    assert spec.channels == tuple(4 * w for w in widths)


@pytest.mark.parametrize("op", list(OPS))
def test_op_kwargs_are_the_options_the_op_takes(op: str) -> None:
    assert set(op_options(op)) <= STAGE_FIELDS, "a new op option needs a StageSpec field"
    values = {"kernel_size": 5, "heads": 2, "shift": 3, "dirs": 4, "stack": 2}
    stage = StageSpec(op=op, **values)
    assert stage.op_kwargs() == {k: values[k] for k in op_options(op)}
    auto = StageSpec(op=op)
    assert auto.op_kwargs() == {k: v for k, v in op_options(op).items() if k != "heads"}


def test_op_kwargs_literals() -> None:
    assert StageSpec().op_kwargs() == {"kernel_size": 3}
    assert StageSpec(op="sa", shift=2).op_kwargs() == {}
    assert StageSpec(op="pssa", heads=4, shift=2).op_kwargs() == {
        "heads": 4, "shift": 2, "dirs": 8, "stack": 1}


def test_describe() -> None:
    spec = BackboneSpec.preset("resnet18").with_stage(3, op="xvol_pssa", shift=2)
    assert spec.describe() == "resnet18 [conv, conv, xvol_pssa(L=2), conv]"
    spec = BackboneSpec.preset("resnet50", width_mult=0.25, stem="small").with_stage(
        2, op="pssa", dirs=4, stack=2).with_stage(4, op="xvol_sa", heads=2, kernel_size=5)
    assert spec.describe() == ("resnet50 [conv, pssa(dirs=4, stack=2), conv, xvol_sa(K=5, h=2)] "
                               "width_mult=0.25 stem=small")
    custom = BackboneSpec(block="bottleneck", depths=(1, 1, 2, 1), in_chans=1)
    assert custom.describe() == "resnet-bottleneck-1-1-2-1 [conv, conv, conv, conv] in_chans=1"


def test_with_stage_changes_one_stage() -> None:
    base = BackboneSpec.preset("resnet34", width_mult=0.5)
    spec = base.with_stage(3, op="xvol_pssa", shift=2, dirs=4)
    assert spec.stages[2] == StageSpec(op="xvol_pssa", shift=2, dirs=4)
    assert spec.stages[:2] == base.stages[:2] and spec.stages[3] == base.stages[3]
    assert dataclasses.replace(spec, stages=base.stages) == base
    assert spec.with_stage(3, op="conv", shift=1, dirs=8) == base
    with pytest.raises(ConfigError, match=r"^stage: got 0, expected 1, 2, 3 or 4$"):
        base.with_stage(0, op="sa")
    with pytest.raises(ConfigError, match=r"^stage3\.L: unknown key"):
        base.with_stage(3, L=2)
    with pytest.raises(ConfigError, match=r"^stage1\.op: got 'attn', expected one of conv, sa, pssa"):
        base.with_stage(1, op="attn")


def mixed_spec() -> BackboneSpec:
    return BackboneSpec(block="bottleneck", depths=(1, 2, 3, 1), width_mult=0.375, stem="small", in_chans=1,
                        stages=(StageSpec(), StageSpec(op="pssa", shift=2, dirs=4, stack=2),
                                StageSpec(op="xvol_sa", heads=3, kernel_size=5), StageSpec(op="sa")))


def test_dict_and_json_round_trip() -> None:
    spec = mixed_spec()
    data = spec.to_dict()
    assert data["depths"] == [1, 2, 3, 1] and data["stages"][2] == {
        "op": "xvol_sa", "kernel_size": 5, "heads": 3, "shift": 1, "dirs": 8, "stack": 1}
    assert BackboneSpec.from_dict(data) == spec
    assert BackboneSpec.from_dict(json.loads(json.dumps(data))) == spec
    text = spec.to_json()
    assert json.loads(text) == data
    again = BackboneSpec.from_json(text)
    assert again == spec and hash(again) == hash(spec)
    assert isinstance(again.depths, tuple) and isinstance(again.stages, tuple)
    assert BackboneSpec.from_dict({}) == BackboneSpec()
    assert schema.with_overrides(spec, ["stage2.shift=3"]).stages[1].shift == 3


def test_python_lists_are_stored_as_tuples() -> None:
    spec = BackboneSpec(depths=[1, 1, 1, 1], stages=[StageSpec()] * 4, width_mult=1)
    assert spec.depths == (1, 1, 1, 1) and isinstance(spec.stages, tuple)
    assert spec.width_mult == 1.0 and isinstance(spec.width_mult, float)


OPS_LIST = "conv, sa, pssa, xvol_sa, xvol_pssa, pointwise"


def _set(data: dict, path: str, value: object) -> dict:
    """`data` (a spec's dict) with `value` at `path`; ``stage3`` is the item stages[2], as in --set."""
    *keys, last = path.split(".")
    node = data
    for key in keys:
        node = node["stages"][int(key[5:]) - 1] if re.fullmatch(r"stage\d", key) else node[key]
    node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(("path", "value", "message"), [
    ("stage3.op", "attention", f"stage3.op: got 'attention', expected one of {OPS_LIST}"),
    ("stage3.op", 3, "stage3.op: got 3, expected a string"),
    ("stage2.shift", 0, "stage2.shift: got 0, expected an integer >= 1"),
    ("stage2.shift", 1.5, "stage2.shift: got 1.5, expected an integer"),
    ("stage1.dirs", 6, "stage1.dirs: got 6, expected 4 or 8"),
    ("stage4.kernel_size", 4, "stage4.kernel_size: got 4, expected an odd integer >= 1"),
    ("stage4.kernel_size", -1, "stage4.kernel_size: got -1, expected an odd integer >= 1"),
    ("stage3.stack", 0, "stage3.stack: got 0, expected an integer >= 1"),
    ("stage3.heads", 0, "stage3.heads: got 0, expected a positive integer or null (auto)"),
    ("stage3.heads", "auto", "stage3.heads: got 'auto', expected an integer"),
    ("stage2.L", 2, "stage2.L: unknown key; expected one of op, kernel_size, heads, shift, dirs, stack"),
    ("stages", [{}, {}, {}], "stages: got 3 items, expected 4"),
    ("stages", "conv", "stages: got 'conv', expected a list"),
    ("depths", [2, 2, 0, 2], "depths: got (2, 2, 0, 2), expected 4 integers >= 1"),
    ("depths", [2, 2, 2], "depths: got 3 items, expected 4"),
    ("depths", [2, 2, 2, "x"], "depths.3: got 'x', expected an integer"),
    ("width_mult", 0, "width_mult: got 0.0, expected a number > 0"),
    ("width_mult", -0.5, "width_mult: got -0.5, expected a number > 0"),
    ("width_mult", "wide", "width_mult: got 'wide', expected a number"),
    ("block", "dense", "block: got 'dense', expected one of 'basic', 'bottleneck'"),
    ("stem", "tiny", "stem: got 'tiny', expected one of 'imagenet', 'small'"),
    ("in_chans", 0, "in_chans: got 0, expected an integer >= 1"),
    ("depth", [1, 1, 1, 1],
     "depth: unknown key; expected one of block, depths, width_mult, stem, stages, in_chans"),
])
def test_from_dict_rejects_with_key_path(path: str, value: object, message: str) -> None:
    data = _set(BackboneSpec().to_dict(), path, value)
    with pytest.raises(ConfigError) as info:
        BackboneSpec.from_dict(data)
    assert str(info.value) == message
    with pytest.raises(ConfigError) as nested:  # inside a run config the path is prefixed
        schema.from_dict(BackboneSpec, data, "model")
    assert str(nested.value) == f"model.{message}"


@pytest.mark.parametrize(("op", "heads", "ok"), [
    ("xvol_sa", 3, False), ("xvol_sa", 4, True), ("sa", 512, False), ("pssa", 256, True),
    ("xvol_pssa", 6, False), ("conv", 3, True),  # conv takes no heads, so any valid value is ignored
])
def test_heads_must_divide_the_stage_width(op: str, heads: int, ok: bool) -> None:
    data = _set(_set(BackboneSpec().to_dict(), "stage3.op", op), "stage3.heads", heads)
    if ok:
        assert BackboneSpec.from_dict(data).stages[2].heads == heads
    else:
        with pytest.raises(ConfigError, match=rf"^stage3\.heads: got {heads}, expected a positive divisor "
                                              r"of the stage width 256$"):
            BackboneSpec.from_dict(data)


def test_direct_construction_validates() -> None:
    with pytest.raises(ValueError, match=rf"^op: got 'foo', expected one of {OPS_LIST}$"):
        StageSpec(op="foo")
    with pytest.raises(ValueError, match=r"^dirs: got 6"):
        StageSpec(op="pssa", dirs=6)
    with pytest.raises(ValueError, match=r"^stages: got .*expected 4 StageSpec$"):
        BackboneSpec(stages=(StageSpec(),) * 3)
    with pytest.raises(ValueError, match=r"^depths: got \(1, 1, 1\), expected 4 integers >= 1$"):
        BackboneSpec(depths=(1, 1, 1))
    with pytest.raises(ValueError, match=r"^width_mult: got True"):
        BackboneSpec(width_mult=True)


def test_preset_errors() -> None:
    with pytest.raises(ConfigError, match=r"^preset: got 'resnet152', expected one of resnet18, resnet34, "
                                          r"resnet50, resnet101$"):
        BackboneSpec.preset("resnet152")
    with pytest.raises(ConfigError, match=r"^width_mult: got -1\.0, expected a number > 0$"):
        BackboneSpec.preset("resnet18", width_mult=-1)
    with pytest.raises(ConfigError, match=r"^widht_mult: unknown key"):
        BackboneSpec.preset("resnet18", widht_mult=0.5)
    stages = (StageSpec(op="sa"),) * 4
    assert BackboneSpec.preset("resnet50", stages=stages).stages == stages


def test_from_json_rejects_bad_json() -> None:
    with pytest.raises(ConfigError, match=r"^spec JSON: Expecting"):
        BackboneSpec.from_json("{'block': 'basic'}")
    with pytest.raises(ConfigError, match=r"^BackboneSpec: got \[1, 2\], expected a mapping$"):
        BackboneSpec.from_json("[1, 2]")
