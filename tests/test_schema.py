"""Typed config loading: every error names its key path; overrides are typed by the fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from xvol_lab.errors import ConfigError
from xvol_lab.schema import flatten, from_dict, numbered, to_dict, with_overrides


@dataclass(frozen=True)
class Inner:
    lr: float = 0.1
    steps: tuple[int, ...] = ()
    mode: Literal["a", "b"] = "a"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr: got {self.lr}, expected a number > 0")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    size: int | None = None
    inner: Inner = field(default_factory=Inner)
    pair: tuple[int, int] = (1, 2)


def test_round_trip():
    obj = Outer("y", 3, Inner(0.5, (1, 2), "b"), (3, 4))
    assert from_dict(Outer, to_dict(obj)) == obj


@pytest.mark.parametrize("data,message", [
    ({"nme": "y"}, "nme: unknown key; expected one of name, size, inner, pair"),
    ({"inner": {"lr": "fast"}}, "inner.lr: got 'fast', expected a number"),
    ({"inner": {"lr": -1.0}}, "inner.lr: got -1.0, expected a number > 0"),
    ({"inner": {"mode": "c"}}, "inner.mode: got 'c', expected one of 'a', 'b'"),
    ({"inner": {"steps": [1, "x"]}}, "inner.steps.1: got 'x', expected an integer"),
    ({"pair": [1, 2, 3]}, "pair: got 3 items, expected 2"),
    ({"size": 1.5}, "size: got 1.5, expected an integer"),
    ({"size": True}, "size: got True, expected an integer"),
])
def test_errors_name_the_key_path(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data)
    assert str(err.value) == message


def test_exponent_strings_are_floats_but_not_ints():
    assert from_dict(Outer, {"inner": {"lr": "1e-3"}}).inner.lr == 1e-3
    assert with_overrides(Outer(), ["inner.lr=2E-4"]).inner.lr == 2e-4
    with pytest.raises(ConfigError, match="size: got '1e3', expected an integer"):
        from_dict(Outer, {"size": "1e3"})


def test_overrides_are_typed_and_checked():
    assert with_overrides(Outer(), ["inner.steps=[3, 5]", "size=null"]).inner.steps == (3, 5)
    with pytest.raises(ConfigError, match="^inner.nope: unknown key; expected one of lr, steps, mode$"):
        with_overrides(Outer(), ["inner.nope=1"])
    with pytest.raises(ConfigError, match="^--set 'size': expected key=value$"):
        with_overrides(Outer(), ["size"])


@dataclass(frozen=True)
class Staged:
    parts: tuple[Inner, Inner, Inner] = field(default_factory=lambda: (Inner(),) * 3, metadata=numbered("part"))


@dataclass(frozen=True)
class Holder:
    staged: Staged | None = field(default_factory=Staged)


def test_numbered_items_are_addressed_one_based_and_the_index_spelling_is_refused():
    holder = with_overrides(Holder(), ["staged.part2.lr=0.5", "staged.part3.mode=b"])
    assert holder.staged is not None
    assert [p.lr for p in holder.staged.parts] == [0.1, 0.5, 0.1] and holder.staged.parts[2].mode == "b"
    assert flatten(holder)["staged.part2.lr"] == 0.5 and "staged.parts" not in flatten(holder)
    for text, message in [
        ("staged.parts.1.lr=0.5", "staged.parts.1.lr: parts are numbered 1..3 as in the paper; write staged.part2.lr"),
        ("staged.parts.3.lr=0.5", "staged.parts.3.lr: parts are numbered 1..3 as in the paper; write "
                                  "staged.part1 .. part3"),
        ("staged.part4.lr=0.5", "staged.part4: unknown part; expected part1 .. part3 (numbered as in the paper)"),
        ("staged.part1.lr=-1", "staged.part1.lr: got -1.0, expected a number > 0"),
    ]:
        with pytest.raises(ConfigError) as err:
            with_overrides(Holder(), [text], label="--set")
        assert str(err.value) == f"--set {text}: {message}"
    with pytest.raises(ConfigError, match=r"^staged.part3.mode: got 'c', expected one of 'a', 'b'$"):
        from_dict(Holder, {"staged": {"parts": [{}, {}, {"mode": "c"}]}})
