"""`lab.py study report`: the report folder (report.md, tables in each format, plots), atomic
replacement, and bad input (unknown study, no storage, empty study, unwritable folder)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import pytest
from _report_studies import (
    CONV,
    XPSSA2,
    add,
    build_ablation_study,
    build_pareto_study,
    build_seeded_study,
    metrics_of,
    open_study,
    write_study_file,
)
from optuna.trial import TrialState
from rich.console import Console

from xvol_lab.cli.main import main
from xvol_lab.errors import ConfigError
from xvol_lab.study.report import load_study_data, trials_table, write_report
from xvol_lab.study.report import writer as report_writer
from xvol_lab.study.storage import default_storage_url
from xvol_lab.study.summary import best_lines, trial_table

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def abl(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("abl")
    return build_ablation_study(folder), folder / "runs"


def lab(*argv: str) -> int:
    return main(["study", *argv])


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("lab.py: error: ")
    return err


def leftovers(folder: Path) -> list[str]:
    """Temporary folders of an interrupted write."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_report_md_links_every_table_and_plot(abl, capsys):
    path, runs = abl
    assert lab("report", str(path), "--runs", str(runs)) == 0
    out = runs / "abl" / "report"
    assert capsys.readouterr().out.strip() == str(out / "report.md")
    names = {p.name for p in out.iterdir()}
    tables = {"trials.md", "ablation.md", "stage_effects.md", "importance.md", "best.md"}
    plots = {"history.png", "stage_effects.png", "importance.png", "intermediate.png"}  # Optuna's, and ours
    assert names == {"report.md"} | tables | plots
    assert all((out / p).read_bytes().startswith(PNG) for p in plots)
    report = (out / "report.md").read_text()
    for name in tables:
        assert f"]({name})" in report
    for name in plots:
        assert f"]({name})" in report
    assert "Pareto front: not drawn (single-objective study" in report
    assert "12/12 finished" not in report and "8/12 finished (6 complete, 1 pruned, 1 failed)" in report
    assert "1 interrupted, 1 void" in report
    assert "val/acc1 0.8000 (trial 2)" in report
    assert "| X-volution(PSSA, L=2) in stage 3 | 3 | 0 | 0.75 [0.6258, 0.8742] | +0.22 |" in report
    assert ("- X-volution(PSSA, L=2) in stage 3: not distinguishable from all-conv at this budget (MDE unknown "
            "(fewer than 2 paired seeds, or no spread between them)) (val/acc1 +0.22, MDE unknown "
            "(fewer than 2 paired seeds, or no spread between them) (3 runs))") in report
    assert "- seeds per configuration: 1 (0)" in report
    assert "- trivial level: val/acc1 0.25 (always the most frequent class)" in report
    assert "Difference to all-conv (95% CI): not drawn (no configuration paired" in report
    trials_md = (out / "trials.md").read_text().splitlines()
    assert len(trials_md) == 2 + 12
    assert trials_md[3].startswith("| 1 | complete |  | conv | conv | xvol_pssa(L=2) | conv | 0.7 |")


def test_status_and_report_word_every_trial_alike(abl):
    """`lab.py study status` and the report's trials table give each trial one state and reason."""
    path, runs = abl
    data = load_study_data(path, runs=runs)
    console = Console(width=400, record=True, file=io.StringIO())
    console.print(trial_table(data.config, data.trials))
    lines = {int(line.split()[0]): line for line in console.export_text().splitlines()[1:] if line.strip()}
    table = trials_table(data)
    assert len(lines) == len(table) == 12
    for number, state, reason in zip(table["number"], table["state"], table["reason"], strict=True):
        assert lines[number].split()[1] == state
        assert lines[number].rstrip().endswith(reason)
    assert lines[3].split()[1] == "interrupted" and lines[3].rstrip().endswith("retried as trial 4")
    best = best_lines(data.config, data.trials)  # the best trial as the report's best table has it
    assert best[0] == "best: val/acc1 0.8000 (trial 2)"
    assert best[1].startswith("best params: {'stage3.op': 'xvol_pssa', 'stage3.shift': 2, "
                              "'stage4.op': 'conv'}")


def test_csv_tables_hold_the_stored_values(abl, tmp_path):
    path, runs = abl
    assert lab("report", str(path), "--runs", str(runs), "--format", "csv", "--out", str(tmp_path / "r")) == 0
    data = load_study_data(path, runs=runs)
    expected = trials_table(data)
    read = pd.read_csv(tmp_path / "r" / "trials.csv", keep_default_na=False, na_values=[""])
    assert list(read.columns) == list(expected.columns)
    for column in expected.columns:
        if pd.api.types.is_numeric_dtype(expected[column]):
            pd.testing.assert_series_equal(read[column].astype(float), expected[column].astype(float))
        else:
            assert read[column].fillna("").tolist() == expected[column].tolist()
    stored = {t.number: t for t in data.study.get_trials()}
    assert read.set_index("number").loc[4, "val/acc1"] == stored[4].values[0]
    ablation = pd.read_csv(tmp_path / "r" / "ablation.csv")
    assert ablation["val/acc1 diff"].tolist() == pytest.approx([0.0, 0.22, 0.07])


@pytest.mark.parametrize(("fmt", "suffix", "marks"), [
    ("latex", ".tex", [r"\begin{tabular}", r"val/acc1 diff\_ci95\_low", r"GFLOPs (2$\times$MAC)",
                       "X-volution(PSSA, L=2) in stage 3"]),
    ("html", ".html", ["<table", "<th>val/acc1 p_holm</th>", "<td>X-volution(PSSA, L=2) in stage 3</td>"]),
])
def test_latex_and_html_tables(abl, tmp_path, fmt, suffix, marks):
    path, runs = abl
    out = tmp_path / "r"
    assert lab("report", str(path), "--runs", str(runs), "--format", fmt, "--out", str(out)) == 0
    text = (out / f"ablation{suffix}").read_text()
    for mark in marks:
        assert mark in text
    assert "NaN" not in text and "nan" not in text  # the single seed's std is an empty cell
    trials = (out / f"trials{suffix}").read_text()
    assert (r"xvol\_pssa(L=2)" if fmt == "latex" else "<td>xvol_pssa(L=2)</td>") in trials
    assert f"](trials{suffix})" in (out / "report.md").read_text()


def test_multi_objective_report_has_the_pareto_table_and_plot(tmp_path):
    path = build_pareto_study(tmp_path)
    out = tmp_path / "r"
    runs = tmp_path / "runs"
    assert lab("report", str(path), "--runs", str(runs), "--format", "csv", "--out", str(out)) == 0
    assert (out / "pareto.png").read_bytes().startswith(PNG)
    assert sorted(pd.read_csv(out / "pareto.csv")["number"]) == [0, 1, 2, 5]
    report = (out / "report.md").read_text()
    assert "Pareto front: 4 trial(s)" in report and "## Pareto front" in report
    assert "Intermediate values: not drawn (no trial reported per-epoch values" in report


def test_seeded_report_words_each_difference_and_draws_error_bars(tmp_path):
    runs = tmp_path / "runs"
    path = build_seeded_study(tmp_path)
    assert lab("report", str(path), "--runs", str(runs)) == 0
    out = runs / "seeded" / "report"
    assert (out / "ablation.png").read_bytes().startswith(PNG)
    report = (out / "report.md").read_text()
    assert "- seeds per configuration: 3 to 4 (0, 1, 2, 3)" in report
    assert ("Baseline: all-conv (conv everywhere): val/acc1 0.6 [0.3516, 0.8484]; trivial level val/acc1 "
            "0.25 (always the most frequent class).") in report
    assert ("- X-volution(PSSA, L=2) in stage 3: better than all-conv (val/acc1 +0.06, 95% CI [0.03516, "
            "0.08484], Holm p 0.01827, MDE 0.04625 (3 runs))") in report
    assert ("- PSSA in stage 3; X-volution(SA) in stage 4: not distinguishable from all-conv at this budget "
            "(MDE 0.1224) (val/acc1 +0.01, 95% CI [") in report
    assert "| conv everywhere | 3 | 0, 1, 2 | 0.6 [0.3516, 0.8484] | baseline |  |  |" in report
    assert ("| X-volution(PSSA, L=2) in stage 3 | 3 | 0, 1, 2 | 0.66 [0.3867, 0.9333] "
            "| +0.06 [0.03516, 0.08484] | 0.01827 | 0.04625 | better |") in report


def test_report_of_a_study_given_by_storage_url(tmp_path):
    path = write_study_file(tmp_path, "elsewhere")
    url = default_storage_url(tmp_path / "other", "elsewhere")
    study = open_study(tmp_path / "other", "elsewhere", ["maximize"])
    add(study, CONV, [0.5], attrs=metrics_of(0.5))
    out = tmp_path / "r"
    assert lab("report", str(path), "--storage", url, "--out", str(out)) == 0
    assert "`sqlite:///" in (out / "report.md").read_text()
    # one complete trial: no importances and no intermediate values, explained instead of a crash
    report = (out / "report.md").read_text()
    assert "need at least 2 complete trials" in report and not (out / "importance.png").exists()


def test_report_replaces_the_old_folder_whole(abl, tmp_path):
    path, runs = abl
    out = tmp_path / "r"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert lab("report", str(path), "--runs", str(runs), "--out", str(out)) == 0
    assert not (out / "stale.txt").exists() and (out / "report.md").is_file()
    assert leftovers(tmp_path) == []


def test_an_error_while_writing_leaves_the_old_report_untouched(abl, tmp_path, monkeypatch):
    path, runs = abl
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.md").write_text("old report")

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_writer, "stage_effect_figure", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(load_study_data(path, runs=runs), out, "md")
    assert [p.name for p in out.iterdir()] == ["report.md"]
    assert (out / "report.md").read_text() == "old report"
    assert leftovers(tmp_path) == []
    new = tmp_path / "new" / "deeper" / "r"
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(load_study_data(path, runs=runs), new, "md")
    assert not (tmp_path / "new").exists()  # the parents it created are gone too


def test_unwritable_output_folder_exits_2_and_writes_nothing(abl, tmp_path, capsys):
    path, runs = abl
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert lab("report", str(path), "--runs", str(runs), "--out", str(blocker / "report")) == 2
    assert f"{blocker / 'report'}: cannot write the report there" in error_line(capsys)
    assert lab("report", str(path), "--runs", str(runs), "--out", str(blocker)) == 2
    assert "exists and is not a folder" in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
    assert blocker.read_text() == "not a folder"


def test_unknown_study_no_storage_and_empty_study_exit_2(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert lab("report", "no_such_study", "--runs", str(runs)) == 2
    line = error_line(capsys)
    assert "study 'no_such_study': no " in line and "studies/no_such_study.yaml" in line
    path = write_study_file(tmp_path, "fresh")
    assert lab("report", str(path), "--runs", str(runs)) == 2
    assert "study fresh: no storage at" in error_line(capsys)
    study = open_study(runs, "fresh", ["maximize"])
    add(study, XPSSA2, state=TrialState.RUNNING)
    assert lab("report", str(path), "--runs", str(runs)) == 2
    assert "study fresh: no finished trial yet" in error_line(capsys)
    other = write_study_file(tmp_path, "other")
    assert lab("report", str(other), "--storage", default_storage_url(runs, "fresh")) == 2
    assert "study other: not in sqlite:///" in error_line(capsys)
    assert sorted(p.name for p in (runs / "fresh").iterdir()) == ["study.db"]
    assert not (runs / "other").exists()


def test_directions_that_differ_from_the_study_file_are_refused(tmp_path):
    path = write_study_file(tmp_path, "flip")
    study = open_study(tmp_path / "runs", "flip", ["minimize"])
    add(study, CONV, [0.5], attrs=metrics_of(0.5))
    with pytest.raises(ConfigError, match=r"study flip: the storage has directions \['minimize'\]"):
        load_study_data(path, runs=tmp_path / "runs")


def test_unknown_format_is_refused(abl, capsys):
    path, runs = abl
    with pytest.raises(SystemExit) as exit_info:
        lab("report", str(path), "--runs", str(runs), "--format", "docx")
    assert exit_info.value.code == 2
    assert "invalid choice: 'docx'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--format: got 'docx'"):
        write_report(load_study_data(path, runs=runs), Path("unused"), "docx")


def test_report_on_a_study_whose_params_left_the_space(tmp_path):
    path = write_study_file(tmp_path, "moved")
    study = open_study(tmp_path / "runs", "moved", ["maximize"])
    add(study, CONV, [0.5], attrs=metrics_of(0.5))
    add(study, {"stage3.op": "conv", "stage4.op": "conv"}, [0.6], attrs=metrics_of(0.6))
    path.write_text(path.read_text().replace("4: {op: [conv, xvol_sa]}", "4: {op: [xvol_sa, sa]}"))
    data = load_study_data(path, runs=tmp_path / "runs")
    table = trials_table(data)
    assert table["stage4"].tolist() == ["", ""] and not math.isnan(table.loc[1, "val/acc1"])
    report = write_report(data, tmp_path / "r").read_text()
    assert "trial 0: its params are not a point of the study file's space any more" in report


def test_staging_folders_left_by_a_killed_report_are_removed(tmp_path):
    """A killed `study report` left `.report.<hex>.tmp/` for good; the next writer removes those whose
    process is gone (or over an hour old) and keeps a live writer's."""
    import os
    import subprocess

    from xvol_lab.study.report import writer

    dest = tmp_path / "report"
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = writer._host()
    dead = tmp_path / f".report.{host}-{gone.pid}-0badc0de.tmp"
    live = tmp_path / f".report.{host}-{os.getpid()}-0000beef.tmp"
    legacy = tmp_path / ".report.cafebabe.tmp"
    other = tmp_path / f".figures.{host}-{gone.pid}-0badc0de.tmp"
    for folder in (dead, live, legacy, other):
        folder.mkdir()
        (folder / "report.md").write_text("half\n")
    os.utime(legacy, (0, 0))  # 1970: over an hour old
    with writer.staged_dir(dest, "report") as tmp:
        (tmp / "report.md").write_text("done\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "report"])
    assert (dest / "report.md").read_text() == "done\n"
