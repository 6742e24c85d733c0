"""Typed (de)serialisation of frozen config dataclasses, shared by specs, run configs and studies.

`from_dict(cls, data)` builds a (nested) dataclass from plain dicts/lists (JSON, YAML), checking
every key and type; `to_dict(obj)` is its inverse; `with_overrides(obj, ["a.b=1"])` applies
`--set` style overrides typed by the dataclass fields. Every error is a `ConfigError` whose
message starts with the dotted key path, e.g. ``model.stage3.op: expected one of ...``.

A fixed-length tuple field marked ``numbered("stage")`` (`BackboneSpec.stages`) has its items
addressed 1-based, as the paper numbers them: ``stage1`` .. ``stage4``, in overrides and in error
paths; the 0-based index spelling (``stages.2.op``) is refused with a line that gives the other.

A dataclass may name, in its class attribute ``EXTRA_FIELD``, a ``dict[str, Any]`` field that takes
the keys it does not declare (an open section, e.g. the Lightning Trainer arguments of
`TrainerConfig`): `from_dict` puts them there for its ``__post_init__`` to check, `to_dict` writes
them beside the declared keys, and an override may set a new one.

Values are further validated by each dataclass's ``__post_init__``, which raises `ValueError`
with a message that starts with the field name (``"op: got 'foo', expected one of ..."``);
`from_dict` re-raises it as `ConfigError` prefixed with the path.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from xvol_lab.errors import ConfigError

T = TypeVar("T")
NUMBERED = "xvol_numbered"  # field metadata: the prefix of the field's 1-based item names
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def numbered(prefix: str) -> dict[str, str]:
    """Field metadata: the tuple's items are named ``<prefix>1``, ``<prefix>2``, ... (1-based)."""
    return {NUMBERED: prefix}


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def is_int(value: object) -> bool:
    """An integer, not a bool (``True`` is an int to Python, never to a config)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _mismatch(path: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{path}: got {value!r}, expected {expected}")


Coercer = Callable[[Any, Any, str], Any]  # (annotation, value, key path) -> checked value


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`, converting lists to tuples and ints to floats."""
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, path)
    coerce = _COERCERS.get(get_origin(tp) or tp)
    if coerce is None:
        raise TypeError(f"{path}: unsupported annotation {tp!r}")
    return coerce(tp, value, path)


def check_value(tp: Any, value: Any, path: str) -> Any:
    """`value` checked against the annotation `tp` as `from_dict` checks a field (ConfigError naming
    `path`; TypeError for an annotation it does not support)."""
    return _coerce(tp, value, path)


def _union(tp: Any, value: Any, path: str) -> Any:
    """The first option that takes `value`; the one option's own error (a mapping: the one dataclass
    option's), or a list of the options."""
    options = get_args(tp)
    if value is None and type(None) in options:
        return None
    classes = [o for o in options if dataclasses.is_dataclass(o)]
    if isinstance(value, dict) and len(classes) == 1:  # a mapping is meant for the one dataclass: its own error
        return _coerce(classes[0], value, path)
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return _coerce(option, value, path)
        except ConfigError as err:
            errors.append(str(err))
    if len(errors) == 1:
        raise ConfigError(errors[0])
    raise _mismatch(path, value, " or ".join(_type_name(o) for o in options))


def _literal(tp: Any, value: Any, path: str) -> Any:
    if value not in get_args(tp):
        raise _mismatch(path, value, _type_name(tp))
    return value


def _tuple(tp: Any, value: Any, path: str) -> tuple[Any, ...]:
    """``tuple[T, ...]`` of any length, or ``tuple[A, B]`` of exactly its items, from a list."""
    if not isinstance(value, (list, tuple)):
        raise _mismatch(path, value, "a list")
    args = get_args(tp)
    if len(args) == 2 and args[1] is Ellipsis:
        args = (args[0],) * len(value)
    elif len(args) != len(value):
        raise ConfigError(f"{path}: got {len(value)} items, expected {len(args)}")
    return tuple(_coerce(a, v, _join(path, i)) for i, (a, v) in enumerate(zip(args, value, strict=True)))


def _dict(tp: Any, value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _mismatch(path, value, "a mapping")
    _, vt = get_args(tp)
    return {str(k): _coerce(vt, v, _join(path, k)) for k, v in value.items()}


def _float(tp: Any, value: Any, path: str) -> float:
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _mismatch(path, value, "a number")
    return float(value)


def _exact(accepts: Callable[[Any], bool], expected: str) -> Coercer:
    """A coercer that passes values `accepts` through unchanged and refuses the rest."""
    def coerce(tp: Any, value: Any, path: str) -> Any:
        if not accepts(value):
            raise _mismatch(path, value, expected)
        return value
    return coerce


# Keyed by typing.get_origin(annotation), or by the annotation itself where it has no origin.
_COERCERS: dict[Any, Coercer] = {
    Any: lambda tp, value, path: value,
    Union: _union,
    types.UnionType: _union,
    Literal: _literal,
    tuple: _tuple,
    dict: _dict,
    float: _float,
    int: _exact(is_int, "an integer"),
    bool: _exact(lambda v: isinstance(v, bool), "true or false"),
    str: _exact(lambda v: isinstance(v, str), "a string"),
}


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys, wrong types and bad values raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: got {data!r}, expected a mapping")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    extra = getattr(cls, "EXTRA_FIELD", None)
    if extra is not None:  # an open section: the undeclared keys go to its extra field
        declared = {k: v for k, v in data.items() if k in fields and k != extra}
        data = {**declared, extra: {k: v for k, v in data.items() if k not in declared}}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(path, unknown[0])}: unknown key; expected one of {', '.join(fields)}")
    kwargs = {k: _field(fields[k], hints[k], v, path) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # __post_init__ messages start with the field name
        raise ConfigError(f"{path}.{err}" if path else str(err)) from None


def _field(f: dataclasses.Field[Any], tp: Any, value: Any, path: str) -> Any:
    """Field `f` of the dataclass at `path`; the items of a numbered tuple are named ``<prefix><n>``."""
    prefix = f.metadata.get(NUMBERED)
    if prefix is None or not isinstance(value, (list, tuple)):
        return _coerce(tp, value, _join(path, f.name))
    items = get_args(tp)
    if len(items) != len(value):
        raise ConfigError(f"{_join(path, f.name)}: got {len(value)} items, expected {len(items)}")
    return tuple(_coerce(a, v, _join(path, f"{prefix}{n}"))
                 for n, (a, v) in enumerate(zip(items, value, strict=True), start=1))


class OpenSection(dict):
    """A dataclass with an ``EXTRA_FIELD`` as overrides see it: a key may be added to it."""


def _data(obj: Any, open_sections: bool) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        extra = getattr(obj, "EXTRA_FIELD", None)
        out = {f.name: _data(getattr(obj, f.name), open_sections) for f in dataclasses.fields(obj)
               if f.name != extra}
        if extra is None:
            return out
        out.update(_data(getattr(obj, extra), open_sections))
        return OpenSection(out) if open_sections else out
    if isinstance(obj, (list, tuple)):
        return [_data(v, open_sections) for v in obj]
    if isinstance(obj, dict):
        return {k: _data(v, open_sections) for k, v in obj.items()}
    return obj


def to_dict(obj: Any) -> Any:
    """Plain dicts/lists/scalars for a (nested) dataclass, the inverse of `from_dict`."""
    return _data(obj, open_sections=False)


def flatten(obj: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of dataclass `obj` by its key path as `with_overrides` takes it (``model.stage3.op``),
    with its plain value (`to_dict`)."""
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        return {path: to_dict(obj)}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        prefix = f.metadata.get(NUMBERED)
        if prefix is not None and isinstance(value, tuple):
            for n, item in enumerate(value, start=1):
                out.update(flatten(item, _join(path, f"{prefix}{n}")))
        else:
            out.update(flatten(value, _join(path, f.name)))
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.0=value"`` into its key path and a YAML-parsed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _numbered_item(tp: Any, keys: list[str], done: str) -> tuple[str, int, Any] | None:
    """(field, list index, item type) when ``keys[0]`` names an item of a numbered field of dataclass
    `tp` (``stage3`` -> stages[2]); the index spelling (``stages.2``) is a ConfigError."""
    if not (dataclasses.is_dataclass(tp) and isinstance(tp, type)):
        return None
    hints = get_type_hints(tp)
    for f in dataclasses.fields(tp):
        prefix = f.metadata.get(NUMBERED)
        if prefix is None:
            continue
        items = get_args(hints[f.name])
        if keys[0] == f.name and len(keys) > 1:
            index = keys[1]
            fix = (".".join([_join(done, f"{prefix}{int(index) + 1}"), *keys[2:]])
                   if index.isdigit() and int(index) < len(items)
                   else f"{_join(done, prefix)}1 .. {prefix}{len(items)}")
            raise ConfigError(f"{_join(done, '.'.join(keys))}: {f.name} are numbered 1..{len(items)} as in "
                              f"the paper; write {fix}")
        match = re.fullmatch(rf"{re.escape(prefix)}(\d+)", keys[0])
        if match:
            n = int(match[1])
            if not 1 <= n <= len(items):
                raise ConfigError(f"{_join(done, keys[0])}: unknown {prefix}; expected {prefix}1 .. "
                                  f"{prefix}{len(items)} (numbered as in the paper)")
            return f.name, n - 1, items[n - 1]
    return None


def _field_type(tp: Any, key: str) -> Any:
    """The dataclass that field `key` of dataclass `tp` holds (the one dataclass of an optional), else None."""
    if not (dataclasses.is_dataclass(tp) and isinstance(tp, type)):
        return None
    hint = get_type_hints(tp).get(key)
    options = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    classes = [o for o in options if dataclasses.is_dataclass(o)]
    return classes[0] if len(classes) == 1 else None


def _set_path(data: Any, tp: Any, keys: list[str], value: Any, done: str) -> None:
    """Set `value` at `keys` in `data`, the plain form of dataclass `tp` (None: not a dataclass);
    `done` is the key path so far, as the user wrote it."""
    key = keys[0]
    where = _join(done, key)
    item = _numbered_item(tp, keys, done)
    index: Any
    if item is not None:
        name, index, sub = item
        data = data[name]
    elif isinstance(data, list):
        if not key.isdigit() or int(key) >= len(data):
            raise ConfigError(f"{where}: index out of range; expected 0..{len(data) - 1}")
        index, sub = int(key), None
    elif isinstance(data, dict):
        if key not in data and not isinstance(data, OpenSection):
            raise ConfigError(f"{where}: unknown key; expected one of {', '.join(map(str, data))}")
        index, sub = key, _field_type(tp, key)
    else:
        raise ConfigError(f"{where}: {done} is a value, not a section")
    if len(keys) == 1:
        data[index] = value
    else:
        _set_path(data[index], sub, keys[1:], value, where)


def _set_overrides(tp: Any, data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """`data` (plain dicts/lists of dataclass `tp`, from `to_dict`) with ``key.path=value`` overrides
    set in place."""
    for text in overrides:
        keys, value = parse_override(text)
        _set_path(data, tp, keys, value, "")
    return data


def with_overrides(obj: T, overrides: typing.Iterable[str], label: str | None = None) -> T:
    """A copy of dataclass `obj` with ``key.path=value`` overrides applied and re-validated.

    The overrides are validated together, so values that only fit each other (a task and its dataset)
    can be changed in one go. With a `label` (``--set``), an error names it and the item: when the
    overrides fail together, the first one that fails on its own (else all of them).
    """
    overrides = list(overrides)
    if label is None:
        return from_dict(type(obj), _set_overrides(type(obj), _data(obj, open_sections=True), overrides))
    for text in overrides:
        parse_override(text)  # a malformed item names itself
    try:
        return with_overrides(obj, overrides)
    except ConfigError as together:
        for text in overrides:
            try:
                obj = with_overrides(obj, [text])
            except ConfigError as err:
                raise ConfigError(f"{label} {text}: {err}") from None
        raise ConfigError(f"{label} {' '.join(overrides)}: {together}") from None
