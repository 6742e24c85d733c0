"""How well a one-shot study's supernet ranked its paths: one-shot score against stand-alone training.

Read back from the storage: the search study's scores (`xvol_lab.study.one_shot`) and the study's
ordinary trials (the top-k and random paths trained stand-alone, first objective, mean over
seeds). Reported: Kendall tau and Spearman rho with 95% bootstrap intervals over the checked
paths (`xvol_lab.study.ranking`), top-1 and top-k regret (how far the best stand-alone score of the
one-shot's best path, or of its top-k, falls below the best checked one), and the cost of each
phase in wall seconds: supernet training, search (scoring), stand-alone check, and the one-shot
phases against training the whole space stand-alone at the check's mean cost per path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from xvol_lab.markdown import format_number
from xvol_lab.study import ranking
from xvol_lab.study.config import StudyConfig
from xvol_lab.study.one_shot import SUPERNET_SECONDS, score_name, search_study_name, space_points
from xvol_lab.study.report.source import arch_key
from xvol_lab.study.space import spec_of
from xvol_lab.study.storage import open_storage


@dataclass(frozen=True)
class CheckedPath:
    """A path trained stand-alone: its network, one-shot score, stand-alone score and how it was chosen."""

    arch: str
    one_shot: float
    standalone: float
    chosen: str  # "top-k" or "random"


@dataclass(frozen=True)
class OneShotSummary:
    """The ranking check and the phase costs of a one-shot study (module docstring)."""

    metric: str
    score: str  # what the one-shot score is (`score_name`)
    rows: tuple[CheckedPath, ...]
    tau: float
    tau_ci: tuple[float, float]
    rho: float
    rho_ci: tuple[float, float]
    top1_regret: float
    topk_regret: float
    space_size: int
    paths_scored: int
    supernet_s: float
    search_s: float
    standalone_s: float

    @property
    def paths_per_hour(self) -> float:
        """Distinct paths scored per hour of search."""
        return self.paths_scored / self.search_s * 3600 if self.search_s > 0 else math.nan

    @property
    def grid_standalone_s(self) -> float:
        """Training every point of the space stand-alone at the check's mean cost per path."""
        return self.standalone_s / len(self.rows) * self.space_size if self.rows else math.nan

    @property
    def one_shot_share(self) -> float:
        """(supernet + search) / `grid_standalone_s`."""
        return (self.supernet_s + self.search_s) / self.grid_standalone_s


def one_shot_summary(name: str, config: StudyConfig, storage_url: str) -> OneShotSummary | None:
    """The summary of one-shot study `name`, None before its search has scored a path."""
    storage = open_storage(storage_url, create=False)
    try:
        search = optuna.load_study(study_name=search_study_name(name), storage=storage)
    except KeyError:
        return None
    assert config.space is not None

    def key(params: dict) -> object:
        return arch_key(spec_of(config.space, config.base.model, params))

    scored = [t for t in search.get_trials(deepcopy=False, states=[TrialState.COMPLETE])]
    if not scored:
        return None
    one_shot = {}
    for t in sorted(scored, key=lambda t: t.number):
        one_shot.setdefault(key(t.params), t.values[0])
    order = sorted(one_shot, key=lambda k: -one_shot[k])
    top = set(order[:config.one_shot.top_k])
    rows, seconds = [], 0.0
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(
            deepcopy=False, states=[TrialState.COMPLETE])
    except KeyError:
        trials = []
    for t in trials:
        k = key(t.params)
        if k not in one_shot:
            continue
        rows.append(CheckedPath(str(t.user_attrs.get("arch", "")), one_shot[k], t.values[0],
                                "top-k" if k in top else "random"))
        if t.duration is not None:
            seconds += t.duration.total_seconds()
    rows.sort(key=lambda r: -r.one_shot)
    x, y = [r.one_shot for r in rows], [r.standalone for r in rows]
    tops = [r.standalone for r in rows if r.chosen == "top-k"]
    return OneShotSummary(
        metric=config.metric_names[0], score=score_name(config), rows=tuple(rows),
        tau=ranking.kendall_tau(x, y), tau_ci=ranking.bootstrap_interval(ranking.kendall_tau, x, y),
        rho=ranking.spearman_rho(x, y), rho_ci=ranking.bootstrap_interval(ranking.spearman_rho, x, y),
        top1_regret=ranking.regret(y[:1], y) if rows else math.nan,
        topk_regret=ranking.regret(tops, y) if tops else math.nan,
        space_size=len(space_points(config)), paths_scored=len(one_shot),
        supernet_s=float(search.user_attrs.get(SUPERNET_SECONDS, math.nan)),
        search_s=sum(float(t.user_attrs.get("seconds", 0.0)) for t in scored), standalone_s=seconds)


def _ci(low: float, high: float) -> str:
    return f"[{format_number(low)}, {format_number(high)}]" if not math.isnan(low) else "[n/a]"


def one_shot_lines(summary: OneShotSummary) -> list[str]:
    """Markdown lines: the agreement, the regrets, the phase costs, and the checked paths."""
    s = summary
    lines = [
        f"- rank agreement over {len(s.rows)} paths trained stand-alone ({s.score} against {s.metric}): Kendall tau "
        f"{format_number(s.tau)} {_ci(*s.tau_ci)}, Spearman rho {format_number(s.rho)} {_ci(*s.rho_ci)} "
        "(95% bootstrap over paths)",
        f"- regret of the one-shot choice: top-1 {format_number(s.top1_regret)}, top-k "
        f"{format_number(s.topk_regret)} (best checked stand-alone score minus the chosen one's)",
        f"- cost: supernet {s.supernet_s:.0f} s, search {s.search_s:.0f} s ({s.paths_scored} of "
        f"{s.space_size} paths, {s.paths_per_hour:.0f} paths/hour), stand-alone check {s.standalone_s:.0f} s; "
        f"supernet + search = {100 * s.one_shot_share:.0f}% of training all {s.space_size} paths stand-alone "
        f"(~{s.grid_standalone_s:.0f} s at the check's cost per path)",
        "",
        f"| path | chosen | {s.score} | stand-alone {s.metric} |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {r.arch} | {r.chosen} | {format_number(r.one_shot)} | {format_number(r.standalone)} |"
              for r in s.rows]
    return lines + [""]
