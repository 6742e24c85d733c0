"""RESULTS.md: the lab's measured ablations beside the paper's qualitative claims, written from the
studies' storages (`lab.py study results`), never by hand.

Each claim is checked on the studies that test it (`CLAIMS`), on each study's first objective:

- "beats" / "hurts": a configuration against the all-conv baseline, the rows of the study's
  ablation table (`xvol_lab.study.report.ablation_table`): reproduced when the difference is
  distinguishable (95% interval excludes 0 and Holm-corrected p < 0.05) in the claim's direction,
  contradicted when distinguishable the other way, otherwise not distinguishable at this budget,
  with the row's minimum detectable effect (MDE) beside it;
- "about as good as": two configurations paired by seed (one test, no correction): contradicted
  when distinguishable, reproduced when the whole 95% interval of the difference lies within
  ±`EQUIVALENCE_MARGIN`, otherwise not distinguishable at this budget (with its MDE).

A study whose positive control was not detected cannot tell "no effect" from "too small to see":
its evidence reads "this budget cannot detect effects of this size" instead of "not
distinguishable". Each study's section shows its controls and their verdicts. A study whose
storage is missing (or empty) is listed as not run; a claim no shipped study can test says so.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from xvol_lab import atomic
from xvol_lab.errors import ConfigError
from xvol_lab.markdown import format_number, markdown_table
from xvol_lab.study import stats
from xvol_lab.study.config import StudyConfig, list_study_files, load_study_config
from xvol_lab.study.environment import check_comparable
from xvol_lab.study.one_shot_report import one_shot_lines, one_shot_summary
from xvol_lab.study.report import StudyData, ablation_table, load_study_data
from xvol_lab.study.report.columns import CHANGED, CONFIGURATION, ROLE, SEED
from xvol_lab.study.report.findings import (
    baseline_text,
    blind,
    compact_ablation,
    difference_text,
    interval,
    signed,
    trivial_text,
    verdict_words,
)
from xvol_lab.study.report.frame import seed_frame
from xvol_lab.study.report.tables import objective_column
from xvol_lab.study.report.verdicts import BETTER, BLIND, SAME, WORSE, mde_text, verdict
from xvol_lab.study.report.writer import seeds_text
from xvol_lab.study.settings import stored_settings
from xvol_lab.study.storage import default_storage_url, shown_url, sqlite_file

log = logging.getLogger(__name__)

REPRODUCED, CONTRADICTED = "reproduced", "contradicted"
NOT_DISTINGUISHABLE = "not distinguishable at this budget"
NOT_RUN = "not run"
EQUIVALENCE_MARGIN = 0.01  # "about as good": the paired difference's 95% interval within ±1 point
XVOL = ("xvol_sa", "xvol_pssa")
RULES = ("Each claim of the paper is checked on the studies that test it, on their first objective. "
         "Reproduced / contradicted: the 95% t interval of the difference paired by seed excludes 0 and the "
         "paired t-test p (sequential when seeds were added where undecided; Holm-corrected across an "
         "ablation's rows) is below 0.05, in / against the claim's direction; otherwise not distinguishable "
         "at this budget, stated with the minimum detectable effect (MDE: the difference found with 80% "
         "power at two-sided alpha 0.05 after Holm, from the measured spread of the paired differences). "
         "A study whose positive control (a network that lacks what the task needs) was not detected says "
         "\"this budget cannot detect effects of this size\" instead; its negative control (all-conv "
         "against itself under other seeds) must be not distinguishable. \"About as good\": reproduced "
         "when the whole interval lies within ±{margin} (and the two are not both within {margin} of a "
         "score's ceiling of 1, where saturation alone makes them equal), contradicted when the two are "
         "distinguishable.")
RESULTS_MD = "RESULTS.md"
STORAGE = "study.db"  # <runs>/<study>/study.db: `default_storage_url` without $XVOL_STORAGE
COMMAND = "python lab.py study results"


@dataclass(frozen=True)
class Evidence:
    """One comparison in one study: `first` against `second` on `metric`, and what it says."""

    study: str
    first: str
    second: str
    metric: str
    diff: float
    low: float
    high: float
    p: float  # Holm-corrected across the ablation's rows, or a single test's p
    p_kind: str  # "Holm" or "paired t"
    seeds: str
    verdict: str
    mde: float = math.nan

    @property
    def words(self) -> str:
        """The verdict with the MDE beside it where nothing was distinguished."""
        if self.verdict.startswith((NOT_DISTINGUISHABLE, BLIND)):
            return f"{self.verdict} ({mde_text(self.mde)})"
        return self.verdict


@dataclass(frozen=True)
class StudyResult:
    """A study as RESULTS.md shows it: its study file, its data (None when not run) and why not."""

    name: str
    config: StudyConfig
    data: StudyData | None
    reason: str = ""


@dataclass(frozen=True)
class Claim:
    """A claim of the paper, the studies that test it, and how to read them (`evidence`)."""

    text: str
    studies: Callable[[dict[str, StudyResult]], list[str]]
    evidence: Callable[[StudyData], list[Evidence]]
    untested: str


def _first_metric(data: StudyData) -> tuple[str, str]:
    return objective_column(data.metric_names[0]), data.directions[0]


def _rows_against_baseline(data: StudyData, stage: int, hurts: bool) -> list[Evidence]:
    """Rows of the ablation that put an X-volution in `stage` only, against all-conv."""
    table = ablation_table(data)
    frame = seed_frame(data)
    baseline = table.attrs.get("baseline")
    if baseline is None:
        return []
    configs = frame.drop_duplicates(CONFIGURATION).set_index(CONFIGURATION)
    label, _ = _first_metric(data)
    undetectable = BLIND if blind(data, table) else NOT_DISTINGUISHABLE
    out = []
    for _, row in table.iterrows():
        name = row[CONFIGURATION]
        if (configs.loc[name, ROLE] or configs.loc[name, CHANGED] != (stage,)
                or configs.loc[name, f"stage{stage} op"] not in XVOL):
            continue
        wanted, against = (WORSE, BETTER) if hurts else (BETTER, WORSE)
        word = {wanted: REPRODUCED, against: CONTRADICTED}.get(row[f"{label} verdict"], undetectable)
        out.append(Evidence(data.name, name, baseline, label, row[f"{label} diff"],
                            row[f"{label} diff_ci95_low"], row[f"{label} diff_ci95_high"],
                            row[f"{label} p_holm"], "Holm", row["seeds"], word, row[f"{label} mde"]))
    return out


def _by_seed(frame: pd.DataFrame, stage: int, op: str, metric: str) -> tuple[str, dict[int, float]]:
    """The configuration with `op` in `stage` only, and its value by seed (repeats averaged)."""
    rows = frame[(frame[CHANGED] == (stage,)) & (frame[f"stage{stage} op"] == op) & (frame[ROLE] == "")]
    if rows.empty:
        return "", {}
    name = str(rows[CONFIGURATION].iloc[0])
    rows = rows[rows[CONFIGURATION] == name]
    return name, {int(s): float(v) for s, v in rows.groupby(SEED)[metric].mean().items()}


def _at_ceiling(a: dict[int, float], b: dict[int, float], direction: str) -> bool:
    """Both means of a [0, 1] score within the margin of 1: saturation, not the operators, bounds the
    difference, so an equivalence found there says nothing about the claim."""
    values = [*a.values(), *b.values()]
    if direction != "maximize" or not all(0.0 <= v <= 1.0 for v in values):
        return False
    return min(statistics.fmean(a.values()), statistics.fmean(b.values())) >= 1.0 - EQUIVALENCE_MARGIN


def _equivalence(data: StudyData, first: str, second: str) -> list[Evidence]:
    """`first` against `second` in stage 3, paired by seed (the "about as good" rule)."""
    frame = seed_frame(data)
    metric, (label, direction) = data.metric_names[0], _first_metric(data)
    name_a, a = _by_seed(frame, 3, first, metric)
    name_b, b = _by_seed(frame, 3, second, metric)
    if not a or not b:
        return []
    pair = stats.paired(a, b)
    found = verdict(pair.diff, pair.ci95_low, pair.ci95_high, pair.p, direction)
    undetectable = BLIND if blind(data, ablation_table(data)) else NOT_DISTINGUISHABLE
    if found in (BETTER, WORSE):
        word = CONTRADICTED
    elif _at_ceiling(a, b, direction):
        word = f"{undetectable}: both at the ceiling"
    elif found == SAME and -EQUIVALENCE_MARGIN <= pair.ci95_low and pair.ci95_high <= EQUIVALENCE_MARGIN:
        word = REPRODUCED
    else:
        word = undetectable
    seeds = ", ".join(map(str, sorted(set(a) & set(b))))
    return [Evidence(data.name, name_a, name_b, label, pair.diff, pair.ci95_low, pair.ci95_high, pair.p,
                     "paired t", seeds, word, stats.mde(pair.std, pair.n))]


def _named(*names: str) -> Callable[[dict[str, StudyResult]], list[str]]:
    return lambda results: [n for n in names if n in results]


def _resnet50(results: dict[str, StudyResult]) -> list[str]:
    """Studies whose backbone is a ResNet-50 and whose space can put an operator in stage 4."""
    return [name for name, r in results.items() if r.config.base.model.name == "resnet50"
            and r.config.space is not None and 4 in r.config.space.stage_choices()]


CLAIMS = (
    Claim("X-volution beats conv when placed in stage 3", _named("op_ablation", "stage_ablation"),
          lambda data: _rows_against_baseline(data, 3, hurts=False),
          "not tested: neither op_ablation nor stage_ablation is a shipped study"),
    Claim("Replacing stage 4 hurts ResNet-50", _resnet50,
          lambda data: _rows_against_baseline(data, 4, hurts=True),
          "not tested: no study with ResNet-50 at this budget"),
    Claim("PSSA is about as good as global SA", _named("op_ablation"),
          lambda data: _equivalence(data, "xvol_pssa", "xvol_sa") + _equivalence(data, "pssa", "sa"),
          "not tested: op_ablation is not a shipped study"),
)


def shown_storage(runs: Path, name: str) -> str:
    """``runs/op_ablation/study.db`` as given (not resolved), or the shared server's URL."""
    url = default_storage_url(runs, name)
    return str(runs / name / STORAGE) if sqlite_file(url) is not None else shown_url(url)


def _storage_exists(runs: Path, name: str) -> bool:
    path = sqlite_file(default_storage_url(runs, name))
    return path is None or path.is_file()


def load_results(runs: Path, study_files: Sequence[Path]) -> dict[str, StudyResult]:
    """Every study file's storage under `runs`, by study name; a missing or empty one as not run.
    ConfigError: a study file that does not load."""
    results = {}
    for path in study_files:
        name, config = load_study_config(path)
        if not _storage_exists(runs, name):
            results[name] = StudyResult(name, config, None, f"no storage at {shown_storage(runs, name)}")
            continue
        try:
            results[name] = StudyResult(name, config, load_study_data(path, runs=runs))
        except ConfigError as err:
            results[name] = StudyResult(name, config, None, str(err))
    return results


def claim_verdict(evidence: Sequence[Evidence]) -> str:
    """The claim's verdict: the evidence's common verdict (with its MDE, or their range, where
    nothing was distinguished), or ``mixed`` naming each."""
    verdicts = list(dict.fromkeys(e.verdict for e in evidence))
    if len(verdicts) == 1:
        if len(evidence) == 1:
            return evidence[0].words
        mdes = [e.mde for e in evidence if not math.isnan(e.mde)]
        if verdicts[0].startswith((NOT_DISTINGUISHABLE, BLIND)) and mdes:
            span = mde_text(min(mdes)) + (f" to {format_number(max(mdes))}" if max(mdes) > min(mdes) else "")
            return f"{verdicts[0]} ({span})"
        return verdicts[0]
    where = {v: ", ".join(f"{e.study} ({e.first})" for e in evidence if e.verdict == v) for v in verdicts}
    return "mixed: " + "; ".join(f"{v} in {w}" for v, w in where.items())


def _evidence_table(evidence: Sequence[Evidence]) -> pd.DataFrame:
    return pd.DataFrame([{"study": e.study, "comparison": f"{e.first} vs {e.second}", "metric": e.metric,
                          "diff [95% CI]": f"{signed(e.diff)} {interval(e.low, e.high)}".strip(),
                          "p": f"{format_number(float(e.p))} ({e.p_kind})" if not math.isnan(e.p) else "",
                          "MDE": e.mde, "seeds": e.seeds, "verdict": e.words} for e in evidence])


def regenerate_command(name: str, flags: str = "") -> str:
    """The commands that rerun a study (with `flags`: the --set, --trials, --seeds it was run with) and
    rewrite its report and RESULTS.md."""
    run = f"python lab.py study run {name}" + (f" {flags}" if flags else "")
    return f"`{run} && python lab.py study report {name} && {COMMAND}`"


def budget_text(data: StudyData) -> str:
    """Seeds, epochs, data (name, size, images, classes) and backbone of the study."""
    d = data.config.base.data
    return (f"seeds per configuration {seeds_text(data)}, {data.config.budget.epochs} epochs, data {d.name} "
            f"{d.image_size} px, {d.num_train} train / {d.num_val} val images, {d.num_classes} classes, "
            f"backbone {data.config.base.model.describe()}")


def _claim_lines(claim: Claim, results: dict[str, StudyResult]) -> list[str]:
    lines = [f"## {claim.text}", ""]
    names = claim.studies(results)
    if not names:
        return lines + [f"**Verdict: {claim.untested}**", ""]
    evidence: list[Evidence] = []
    notes = []
    for name in names:
        result = results[name]
        if result.data is None:
            notes.append(f"- {name}: {NOT_RUN} ({result.reason})")
            continue
        found = claim.evidence(result.data)
        evidence += found
        if not found:
            notes.append(f"- {name}: no complete configuration (with an all-conv baseline) tests the claim")
    if evidence:
        lines += [f"**Verdict: {claim_verdict(evidence)}**", "", markdown_table(_evidence_table(evidence))]
    else:
        lines += [f"**Verdict: not tested ({', '.join(names)}: no result yet)**", ""]
    return lines + notes + ([""] if notes else [])


def _study_lines(result: StudyResult, runs: Path, allow_mixed: bool) -> list[str]:
    lines = [f"### {result.name}", ""]
    if result.data is None:
        return lines + [f"{NOT_RUN} ({result.reason}); run: {regenerate_command(result.name)}", ""]
    data = result.data
    table = ablation_table(data)
    lines += [f"- budget: {budget_text(data)}", f"- storage: `{shown_storage(runs, result.name)}`"]
    lines += [f"- {line}" for line in check_comparable(data.name, data.complete, allow_mixed)]
    trivial = trivial_text(data.config)
    baseline = baseline_text(data, table, trivial)
    lines += [f"- baseline: {baseline}"] if baseline else [f"- trivial level: {trivial}"] if trivial else []
    lines += _control_lines(data, table)
    lines += [f"- regenerate: {regenerate_command(result.name, stored_settings(data.study).command_text())}", ""]
    if not table.empty:
        lines.append(markdown_table(compact_ablation(data, table)))
    return lines


def _control_lines(data: StudyData, table: pd.DataFrame) -> list[str]:
    """``- positive control: <name>: detected (...)`` per control of the study file (on the first
    objective), or that it has not run."""
    label, _ = _first_metric(data)
    lines = []
    for role in data.config.controls.roles:
        name = data.config.controls.label(role)
        rows = table[table[CONFIGURATION] == name] if not table.empty else table
        if rows.empty or math.isnan(rows[f"{label} diff"].iloc[0]):
            lines.append(f"- {name}: not run yet")
            continue
        row = rows.iloc[0]
        lines.append(f"- {name}: {verdict_words(row[f'{label} verdict'], row[f'{label} mde'], False)} "
                     f"({difference_text(label, row)})")
    if data.config.controls.roles and blind(data, table):
        lines.append(f"- **{BLIND}**: the positive control was not detected, so no difference in this "
                     "study's table can be read as \"no effect\"")
    elif not data.config.controls.roles:
        lines.append("- controls: none (the study file has no `controls`): whether this budget can see an "
                     "effect is not shown")
    return lines


def results_markdown(results: dict[str, StudyResult], runs: Path, allow_mixed: bool = False) -> str:
    """The text of RESULTS.md. A study whose trials ran in different environments is refused
    (ConfigError naming the field) unless `allow_mixed`, which marks its section."""
    lines = ["# Results", "", f"Written by `{COMMAND}` from the study storages; do not edit by hand.", "",
             RULES.format(margin=format_number(EQUIVALENCE_MARGIN)), ""]
    used = list(dict.fromkeys(n for claim in CLAIMS for n in claim.studies(results)))
    for name in used:  # refused before any text is made
        if results[name].data is not None:
            check_comparable(name, results[name].data.complete, allow_mixed)
    for claim in CLAIMS:
        lines += _claim_lines(claim, results)
    lines += ["## Studies", ""]
    for name in used:
        lines += _study_lines(results[name], runs, allow_mixed)
    lines += _one_shot_section(results, runs)
    return "\n".join(lines).rstrip() + "\n"


def _one_shot_section(results: dict[str, StudyResult], runs: Path) -> list[str]:
    """``## One-shot search`` with each one-shot study's ranking check (`one_shot_lines`)."""
    names = [n for n, r in results.items() if r.config.search == "one_shot"]
    if not names:
        return []
    lines = ["## One-shot search: supernet ranking against stand-alone training", "",
             "A weight-sharing supernet (SPOS) ranks every path of the study's space; the top-k and k random "
             "paths are then trained stand-alone. Literature figure for SPOS: Kendall tau 0.5-0.7.", ""]
    for name in names:
        result = results[name]
        lines += [f"### {name}", ""]
        summary = None
        if result.data is not None:
            summary = one_shot_summary(name, result.config, default_storage_url(runs, name))
        if summary is None:
            lines += [f"{NOT_RUN} ({result.reason or 'no search yet'}); run: {regenerate_command(name)}", ""]
            continue
        lines += [f"- budget: {budget_text(result.data)}; supernet {result.config.one_shot.epochs} epochs",
                  f"- regenerate: {regenerate_command(name)}"]
        lines += one_shot_lines(summary)
    return lines


def write_results(out: Path = Path(RESULTS_MD), runs: Path = Path("runs"),
                  study_files: Sequence[Path] | None = None, *, allow_mixed: bool = False) -> Path:
    """Write RESULTS.md to `out` (atomically) from the storages under `runs`; returns `out`.
    `allow_mixed`: compare trials that ran in different environments (marked)."""
    files = list_study_files() if study_files is None else list(study_files)
    text = results_markdown(load_results(runs, files), runs, allow_mixed)
    try:
        atomic.write_text(out, text)
    except OSError as err:
        raise ConfigError(f"{out}: cannot write the results there ({err.strerror or err})") from None
    log.info("results written to %s", out)
    return out
