"""`write_report`: the report folder (report.md, every table in one format, the plots as PNG),
written atomically: built in a temporary folder beside the target, then swapped in whole.

Table formats: md (pipe tables), csv (full precision), latex (``tabular``), html.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from xvol_lab.errors import ConfigError
from xvol_lab.markdown import format_number, markdown_table
from xvol_lab.study.controls import NEGATIVE, ROLE_LABEL
from xvol_lab.study.environment import check_comparable
from xvol_lab.study.progress import best_text
from xvol_lab.study.report.findings import ablation_findings, baseline_text, blind, compact_ablation, trivial_text
from xvol_lab.study.report.frame import counted_study
from xvol_lab.study.report.plots import (
    NoData,
    ablation_figure,
    close,
    history_figure,
    importance_figure,
    intermediate_figure,
    pareto_figure,
    stage_effect_figure,
)
from xvol_lab.study.report.source import StudyData, control_role
from xvol_lab.study.report.tables import (
    NON_ADAPTIVE,
    ablation_table,
    importance_table,
    pareto_table,
    stage_effects_table,
    trials_table,
)
from xvol_lab.study.report.verdicts import BLIND
from xvol_lab.study.summary import counts_text

log = logging.getLogger(__name__)

FORMATS = {"md": ".md", "csv": ".csv", "latex": ".tex", "html": ".html"}
REPORT = "report.md"


def render_table(table: pd.DataFrame, fmt: str) -> str:
    """`table` as text in format `fmt` (a key of `FORMATS`)."""
    formatters = [format_number] * len(table.columns)
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "md":
        return markdown_table(table)
    if fmt == "latex":
        text = table.to_latex(index=False, escape=True, na_rep="", formatters=formatters)
        return text.replace("×", r"$\times$")
    if fmt == "html":
        return table.to_html(index=False, na_rep="", formatters=formatters, border=0)
    raise ConfigError(f"--format: got {fmt!r}, expected one of {', '.join(FORMATS)}")


STALE_S = 3600  # a staging folder this old is left over whatever its name says
_STAGING = re.compile(r"\.(?P<name>.+)\.(?:(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-)?[0-9a-f]{8}\.(?:tmp|old)")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(dest: Path) -> None:
    """Delete the staging folders of `dest` (``.<name>.<host>-<pid>-<hex>.tmp`` / ``.old``) that a
    killed writer left: its process is gone from this host, or the folder is older than `STALE_S`."""
    if not dest.parent.is_dir():
        return
    for entry in dest.parent.iterdir():
        match = _STAGING.fullmatch(entry.name)
        if match is None or match["name"] != dest.name or not entry.is_dir():
            continue
        dead = match["host"] == _host() and not _alive(int(match["pid"]))
        try:
            old = time.time() - entry.stat().st_mtime > STALE_S
        except OSError:
            continue
        if dead or old:
            shutil.rmtree(entry, ignore_errors=True)
            log.info("%s: removed %s, left by a %s that was stopped", dest.parent, entry.name,
                     "writer" if dead else "writer (over an hour old)")


def _missing_parents(path: Path) -> list[Path]:
    return [p for p in reversed(path.parents) if not p.exists()]


@contextmanager
def staged_dir(dest: Path, what: str) -> Iterator[Path]:
    """A fresh temporary folder beside `dest` (those a killed writer left are removed first:
    `remove_stale_staging`); on a clean exit it replaces `dest` (an existing
    folder is swapped out, then deleted), on an error it is deleted and `dest` is untouched.
    ConfigError when `dest` cannot be written."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"{dest}: exists and is not a folder; expected a folder for the {what}")
    created = _missing_parents(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(dest)
        tmp = dest.parent / f".{dest.name}.{_host()}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        tmp.mkdir()  # not mkdtemp: the folder gets the usual permissions (umask), not 0700
    except OSError as err:
        if created and created[0].exists():
            shutil.rmtree(created[0], ignore_errors=True)
        raise ConfigError(f"{dest}: cannot write the {what} there ({err.strerror or err})") from None
    try:
        yield tmp
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and created[0].exists():
            shutil.rmtree(created[0], ignore_errors=True)
        raise


def _swap_in(new: Path, dest: Path) -> None:
    """Move folder `new` to `dest`, replacing a folder already there."""
    if not dest.exists():
        os.replace(new, dest)
        return
    old = dest.parent / f".{dest.name}.{_host()}-{os.getpid()}-{secrets.token_hex(4)}.old"
    os.replace(dest, old)
    try:
        os.replace(new, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def report_tables(data: StudyData) -> dict[str, tuple[str, pd.DataFrame]]:
    """file stem -> (title, table) of every table the report holds."""
    several = len(data.metric_names) > 1
    return {
        "trials": ("Trials", trials_table(data)),
        "ablation": ("Ablation (vs. conv everywhere)", ablation_table(data)),
        "stage_effects": ("Per-stage operator effects", stage_effects_table(data)),
        "importance": ("Parameter importance", importance_table(data)),
        "pareto" if several else "best": ("Pareto front" if several else "Best trial", pareto_table(data)),
    }


def _plots(data: StudyData,
           tables: dict[str, tuple[str, pd.DataFrame]]) -> dict[str, tuple[str, Callable[[], Figure]]]:
    study = counted_study(data)
    return {
        "ablation": ("Difference to all-conv (95% CI)", lambda: ablation_figure(data, tables["ablation"][1])),
        "stage_effects": ("Objective by operator and stage (95% CI)" if data.config.sampler.name in NON_ADAPTIVE else
                          "Objective by operator and stage (min-max of the runs, descriptive)",
                          lambda: stage_effect_figure(data, tables["stage_effects"][1])),
        "history": ("Optimization history", lambda: history_figure(data, study)),
        "importance": ("Parameter importance",
                       lambda: importance_figure(data, study, tables["importance"][1])),
        "pareto": ("Pareto front", lambda: pareto_figure(data, study)),
        "intermediate": ("Intermediate values", lambda: intermediate_figure(data, study)),
    }


def _header(data: StudyData, trivial: str, mixed: list[str]) -> list[str]:
    objectives = ", ".join(f"{m} ({d})" for m, d in zip(data.metric_names, data.directions, strict=True))
    lines = [f"# Study `{data.name}`", ""]
    if data.config.description:
        lines += [" ".join(data.config.description.split()), ""]
    lines += [f"- storage: `{data.shown_url}`", f"- objectives: {objectives}",
              f"- trials: {counts_text(data.name, data.config, data.trials)}",
              f"- seeds per configuration: {seeds_text(data)}",
              f"- best: {best_text(data.trials, data.metric_names, data.directions)}"]
    if trivial:
        lines.append(f"- trivial level: {trivial}")
    return [*lines, *(f"- {line}" for line in mixed), ""]


def seeds_text(data: StudyData) -> str:
    """``3 (0, 1, 2)``: the seeds the complete trials ran (the study's base.seed for old trials);
    a control that ran another number of them is named (``8 (0, ..., 7; positive control 3)``)."""
    runs = [tuple(t.user_attrs.get("seeds") or [data.config.base.seed]) for t in data.complete]
    if not runs:
        return "none yet"
    roles = [control_role(t) for t in data.complete]
    counts = sorted({len(r) for r, role in zip(runs, roles, strict=True) if not role} or {len(r) for r in runs})
    paired = [r for r, role in zip(runs, roles, strict=True) if role != NEGATIVE]
    seeds = sorted({s for r in paired or runs for s in r})  # the negative control's disjoint seeds left out
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    others = [f"{ROLE_LABEL[role]} {len(r)}" for r, role in zip(runs, roles, strict=True)
              if role and not counts[0] <= len(r) <= counts[-1]]
    return f"{n} ({'; '.join([', '.join(map(str, seeds)), *others])})"


def _ablation_lines(data: StudyData, table: pd.DataFrame, trivial: str) -> list[str]:
    """The ablation in report.md: the compact table (the file has every column) and one sentence per
    configuration."""
    if table.empty:
        return []
    lines = ["Mean over runs with its 95% interval; difference to all-conv paired by seed with its "
             "95% t interval; p: paired t-test (sequential where seeds were added while undecided), "
             "Holm-corrected across rows; MDE: the smallest difference detected with 80% power at that "
             "level, from the spread of the paired differences. Controls: the positive control must be "
             "detected, the negative control (all-conv under other seeds) not distinguishable. "
             "The table file adds std, the exact sign-flip p and the costs.", "",
             markdown_table(compact_ablation(data, table))]
    if blind(data, table):
        lines[2:2] = [f"**{BLIND}**: the positive control was not detected.", ""]
    baseline = baseline_text(data, table, trivial)
    if baseline:
        lines[2:2] = [f"Baseline: {baseline}.", ""]
    findings = ablation_findings(data, table)
    return lines + ([*(f"- {f}" for f in findings), ""] if findings else [])


def write_report(data: StudyData, out: Path, fmt: str = "md", *, allow_mixed: bool = False) -> Path:
    """Write the report of `data` to folder `out` (replacing it) with tables in `fmt`; returns the
    path of report.md. Nothing is left behind on an error. Trials that ran in different environments
    are refused (`xvol_lab.study.environment.check_comparable`) unless `allow_mixed`, which marks the
    report."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: got {fmt!r}, expected one of {', '.join(FORMATS)}")
    mixed = check_comparable(data.name, data.complete, allow_mixed)
    with staged_dir(out, "report") as tmp:
        tables = report_tables(data)
        trivial = trivial_text(data.config)
        lines = _header(data, trivial, mixed)
        lines += ["## Tables", ""]
        for stem, (title, table) in tables.items():
            name = stem + FORMATS[fmt]
            (tmp / name).write_text(render_table(table, fmt))
            lines.append(f"- [{title}]({name}): {len(table)} row(s)")
        lines.append("")
        for stem in ("ablation", "stage_effects", "importance", "pareto", "best"):
            if stem not in tables:
                continue
            title, table = tables[stem]
            lines += [f"## {title}", ""]
            if "note" in table.attrs:
                lines += [f"_Note: {table.attrs['note']}_", ""]
            if stem == "ablation":
                lines += _ablation_lines(data, table, trivial)
            elif not table.empty:
                lines += [markdown_table(table)]
        lines += ["## Plots", ""]
        skipped = []
        for stem, (title, make) in _plots(data, tables).items():
            try:
                figure = make()
            except NoData as reason:
                skipped.append(f"- {title}: not drawn ({reason})")
                continue
            try:
                # tight: Optuna's legends sit outside the axes
                figure.savefig(tmp / f"{stem}.png", dpi=100, bbox_inches="tight")
            finally:
                close(figure)
            lines += [f"### {title}", "", f"![{title}]({stem}.png)", ""]
        lines += skipped + ([""] if skipped else [])
        if data.bad_params:
            lines += ["## Notes", ""] + [f"- trial {n}: its params are not a point of the study file's space "
                                         f"any more ({err}); stage columns left empty"
                                         for n, err in sorted(data.bad_params.items())] + [""]
        (tmp / REPORT).write_text("\n".join(lines))
    log.info("report of %s written to %s", data.name, out)
    return Path(out) / REPORT
