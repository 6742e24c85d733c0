"""The environment fingerprints of a study's trials (`xvol_lab.tasks.fingerprint`): stored as each
trial's ``fingerprint`` user attr, combined over its seeds, checked before trials are compared.

A report or RESULTS.md compares configurations only when their trials ran alike: a field of
`COMPARED` (threads, kernel backend, device, precision, library versions) with different values
among the trials is refused with a `ConfigError` naming the field, unless `allow_mixed`, and then
the output is marked (`mixed_lines`). Trials stored before fingerprints existed read as
"not recorded". A kernel that did not build (`build_failures`) is shown by `study status` and the
live panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.trial import FrozenTrial

from xvol_lab.errors import ConfigError
from xvol_lab.tasks.fingerprint import COMPARED

FINGERPRINT_ATTR = "fingerprint"
NOT_RECORDED = "not recorded"
ALLOW_MIXED = "--allow-mixed"
NO_KERNEL = "none"  # the backend of a run in which no layer asked for a kernel (an all-conv network)


def combine_fingerprints(fingerprints: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One fingerprint for a trial's seeds: each field's value, or its distinct values joined by " / "
    where the seeds differ (so the trial differs from trials that ran one way)."""
    fields = list(dict.fromkeys(key for fp in fingerprints for key in fp))
    out: dict[str, Any] = {}
    for key in fields:
        values = [fp.get(key) for fp in fingerprints]
        distinct = [v for i, v in enumerate(values) if v not in values[:i]]
        out[key] = distinct[0] if len(distinct) == 1 else " / ".join(map(str, distinct))
    if any(fp.get("kernel_build_failed") for fp in fingerprints):
        out["kernel_build_failed"] = True
    return out


def fingerprint_of(trial: FrozenTrial) -> dict[str, Any] | None:
    """The trial's stored fingerprint, None when it has none."""
    value = trial.user_attrs.get(FINGERPRINT_ATTR)
    return value if isinstance(value, dict) else None


def _shown(value: Any) -> str:
    return NOT_RECORDED if value is None else str(value)


def mixed_fields(trials: Sequence[FrozenTrial]) -> dict[str, dict[str, list[int]]]:
    """field of `COMPARED` -> {value: trial numbers} for each field whose value differs among `trials`.
    A trial that ran no kernel (backend `NO_KERNEL`) matches any backend: no rounding of a kernel
    entered its numbers, so the all-conv baseline compares with PSSA networks that ran one."""
    mixed = {}
    for key in COMPARED:
        groups: dict[str, list[int]] = {}
        for trial in trials:
            fp = fingerprint_of(trial)
            groups.setdefault(_shown(fp.get(key) if fp else None), []).append(trial.number)
        if key == "backend" and len(groups) > 1:
            groups.pop(NO_KERNEL, None)
        if len(groups) > 1:
            mixed[key] = groups
    return mixed


def _groups_text(groups: dict[str, list[int]]) -> str:
    return "; ".join(f"{value} in trial{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"
                     for value, numbers in groups.items())


def check_comparable(study: str, trials: Sequence[FrozenTrial], allow_mixed: bool) -> list[str]:
    """Refuse (ConfigError, one line naming the first differing field) to compare `trials` that ran in
    environments differing in a field of `COMPARED`; with `allow_mixed`, the lines that mark the
    output instead (empty when the trials ran alike)."""
    mixed = mixed_fields(trials)
    if not mixed:
        return []
    if not allow_mixed:
        key, groups = next(iter(mixed.items()))
        others = f" (also {', '.join(list(mixed)[1:])})" if len(mixed) > 1 else ""
        raise ConfigError(f"study {study}: its trials ran in different environments, fingerprint field "
                          f"`{key}`: {_groups_text(groups)}{others}; expected trials run alike (rerun them "
                          f"alike, or pass {ALLOW_MIXED} to compare them anyway)")
    return [f"**mixed environments ({ALLOW_MIXED})**: `{key}`: {_groups_text(groups)}"
            for key, groups in mixed.items()]


def build_failures(trials: Sequence[FrozenTrial]) -> list[int]:
    """Numbers of the trials whose `xvol::` kernels did not build (the composite path ran instead)."""
    return [t.number for t in trials if (fingerprint_of(t) or {}).get("kernel_build_failed")]


def build_failure_text(trials: Sequence[FrozenTrial]) -> str:
    """``kernel build failed in trials 1, 4: the composite torch path ran (other rounding)``, or ''."""
    numbers = build_failures(trials)
    if not numbers:
        return ""
    return (f"kernel build failed in trial{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}: "
            "the composite torch path ran (other rounding; see the trial's fingerprint.json)")
