"""Controls, sequential p-values and minimum detectable effects in the report tables and RESULTS.md,
from a study stored directly in SQLite (no training): every number against a hand computation."""

from __future__ import annotations

import math
import statistics

import pytest
import yaml
from _report_studies import open_study
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from xvol_lab.cli.main import main
from xvol_lab.markdown import format_number
from xvol_lab.study import sequential, stats
from xvol_lab.study.config import load_study_config
from xvol_lab.study.report import ablation_table, load_study_data, stage_effects_table
from xvol_lab.study.report.findings import ablation_findings
from xvol_lab.study.report.tables import STAT_KINDS
from xvol_lab.study.results import StudyResult, results_markdown

BASE = [0.60, 0.64, 0.58, 0.62, 0.66]  # the baseline, seeds 0-4
POSITIVE = [0.31, 0.33, 0.30]  # seeds 0-2: about 0.3 worse
NEGATIVE = [0.61, 0.62, 0.60, 0.65, 0.64]  # seeds 10000-10004, paired with seeds 0-4
XPSSA = [0.61, 0.66, 0.57, 0.64, 0.66]  # seeds 0-4
LOSS = {"base": [0.02, 0.01, 0.03, 0.02, 0.01], "positive": [1.5, 1.4, 1.6],
        "negative": [0.02, 0.02, 0.01, 0.03, 0.02], "xpssa": [0.001, 0.002, 0.0015, 0.4, 0.001]}


def study_file(folder, name, sampler="grid", positive_params=None):
    data = {
        "description": "controls test",
        "base": {"data": {"name": "shapes", "root": str(folder / "data"), "image_size": 16, "num_classes": 4,
                          "num_train": 64, "num_val": 32, "batch_size": 16, "num_workers": 0},
                 "model": {"block": "basic", "depths": [1, 1, 1, 1], "width_mult": 0.125, "stem": "small"},
                 "trainer": {"accelerator": "cpu"}},
        "space": {"stages": {3: {"op": ["conv", "pssa", "xvol_pssa"]}}},
        "objectives": [{"metric": "val/acc1", "direction": "maximize"},
                       {"metric": "val/loss", "direction": "minimize"}],
        "sampler": {"name": sampler},
        "budget": {"epochs": 1, "seeds": {"min": 3, "max": 5}, **({"n_trials": 3} if sampler != "grid" else {})},
        "controls": {"positive": {"name": "attention only in stage 4",
                                  "params": positive_params or {"stage4.op": "sa"}},
                     "negative": {"name": "all-conv, disjoint seeds"}},
    }
    if sampler != "grid":
        data["enqueue"] = [{"stage3.op": "conv"}]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def add_runs(study, params, seeds, acc1, loss, control=None):
    attrs = {"seeds": seeds, "per_seed": {"val/acc1": acc1, "val/loss": loss},
             "val/acc1": statistics.fmean(acc1), "val/loss": statistics.fmean(loss)}
    if control:
        attrs["control"] = control
    dist = {k: CategoricalDistribution(["conv", "pssa", "xvol_pssa"]) for k in params}
    study.add_trial(create_trial(values=[statistics.fmean(acc1), statistics.fmean(loss)], params=params,
                                 distributions=dist, user_attrs=attrs))


def build(folder, name="op_ablation", positive=POSITIVE, sampler="grid"):
    path = study_file(folder, name, sampler)
    study = open_study(folder / "runs", name, ["maximize", "minimize"])
    add_runs(study, {"stage3.op": "conv"}, [0, 1, 2, 3, 4], BASE, LOSS["base"])
    add_runs(study, {}, [0, 1, 2], positive, LOSS["positive"], control="positive")
    add_runs(study, {}, [10000 + i for i in range(5)], NEGATIVE, LOSS["negative"], control="negative")
    add_runs(study, {"stage3.op": "xvol_pssa"}, [0, 1, 2, 3, 4], XPSSA, LOSS["xpssa"])
    return load_study_data(path, runs=folder / "runs")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build(tmp_path_factory.mktemp("controls"))


def test_study_file_plans_the_controls_after_the_baseline(tmp_path):
    _, config = load_study_config(study_file(tmp_path, "plan"))
    assert [(item.point, item.role) for item in config.schedule] == [
        ({"stage3.op": "conv"}, "baseline"), ({}, "positive"), ({}, "negative"), ({"stage3.op": "pssa"}, None),
        ({"stage3.op": "xvol_pssa"}, None)]
    assert config.n_trials == 5 and config.seeds == [0, 1, 2, 3, 4]
    assert config.controls.spec("positive", config.baseline_spec).stages[3].op == "sa"  # outside the space
    assert config.controls.seeds("negative", [0, 1]) == [10000, 10001]


def test_control_rows_are_named_ordered_and_paired(data):
    table = ablation_table(data)
    assert list(table["configuration"]) == ["conv everywhere", "positive control: attention only in stage 4",
                                            "negative control: all-conv, disjoint seeds",
                                            "X-volution(PSSA) in stage 3"]
    cols = [c for c in table.columns if c.startswith("val/acc1 ")]
    assert cols == [f"val/acc1 {k}" for k in STAT_KINDS]
    assert cols.index("val/acc1 mde") == cols.index("val/acc1 p_holm") + 1
    rows = table.set_index("configuration")
    neg = rows.loc["negative control: all-conv, disjoint seeds"]
    diffs = [n - b for n, b in zip(NEGATIVE, BASE, strict=True)]  # i-th disjoint seed with the i-th seed
    assert neg["val/acc1 diff"] == pytest.approx(statistics.fmean(diffs))
    assert neg["val/acc1 diff_std"] == pytest.approx(statistics.stdev(diffs))
    assert neg["val/acc1 p"] == pytest.approx(stats.t_test_p(diffs))
    design = sequential.SeedDesign(3, 5)
    assert neg["val/acc1 p_seq"] == pytest.approx(sequential.sequential_p(diffs, design))
    pos_diffs = [p - b for p, b in zip(POSITIVE, BASE, strict=False)]
    pos = rows.loc["positive control: attention only in stage 4"]
    assert pos["val/acc1 p_seq"] == pytest.approx(sequential.sequential_p(pos_diffs, design))
    p_seq = table["val/acc1 p_seq"].tolist()
    assert math.isnan(p_seq[0])
    assert table["val/acc1 p_holm"].tolist()[1:] == pytest.approx(stats.holm(p_seq[1:]))
    # MDE: 80% power at the nominal level of the look the row reached, at alpha / 3 rows
    level = sequential.nominal_levels(design, 0.05 / 3)
    assert pos["val/acc1 mde"] == pytest.approx(stats.mde(statistics.stdev(pos_diffs), 3, level[0]))
    assert neg["val/acc1 mde"] == pytest.approx(stats.mde(statistics.stdev(diffs), 5, level[-1]))
    assert math.isnan(rows.loc["conv everywhere", "val/acc1 mde"])
    assert pos["val/acc1 verdict"] == "detected" and neg["val/acc1 verdict"] == "not distinguishable"
    assert rows.loc["X-volution(PSSA) in stage 3", "val/acc1 verdict"] == "not distinguishable"
    assert pos["val/loss verdict"] == "worse"  # control words on the first objective only


def test_interval_of_a_loss_stays_at_or_above_zero(data):
    row = ablation_table(data).set_index("configuration").loc["X-volution(PSSA) in stage 3"]
    assert stats.summary(LOSS["xpssa"]).ci95_low < 0
    assert (row["val/loss ci95_low"], row["val/loss ci95_high"]) == pytest.approx(
        stats.nonnegative_interval(LOSS["xpssa"]))
    assert row["val/loss ci95_low"] >= 0.001


def test_findings_and_results_carry_mde_and_controls(data, tmp_path):
    findings = ablation_findings(data, ablation_table(data))
    xvol = next(f for f in findings if f.startswith("X-volution(PSSA) in stage 3: not distinguishable"))
    assert "MDE" in xvol
    assert any(f.startswith("positive control: attention only in stage 4: detected") for f in findings)
    text = results_markdown({"op_ablation": StudyResult("op_ablation", data.config, data)}, tmp_path)
    assert "- positive control: attention only in stage 4: detected (worse than all-conv)" in text
    assert "- negative control: all-conv, disjoint seeds: not distinguishable from all-conv" in text
    mde = ablation_table(data).set_index("configuration").loc["X-volution(PSSA) in stage 3", "val/acc1 mde"]
    assert f"**Verdict: not distinguishable at this budget (MDE {format_number(mde)})**" in text
    assert "Verdict: this budget cannot detect" not in text


def test_undetected_positive_control_makes_the_study_say_it_is_blind(tmp_path):
    blind = build(tmp_path, positive=[0.61, 0.63, 0.59])  # as good as the baseline: not detected
    table = ablation_table(blind)
    assert table.set_index("configuration").loc["positive control: attention only in stage 4",
                                                 "val/acc1 verdict"] == "not detected"
    text = results_markdown({"op_ablation": StudyResult("op_ablation", blind.config, blind)}, tmp_path)
    claim = text.split("## X-volution beats conv when placed in stage 3")[1].split("##")[0]
    assert "**Verdict: this budget cannot detect effects of this size (MDE" in claim
    assert "not distinguishable" not in claim


def test_stage_effects_are_descriptive_for_adaptive_samplers(tmp_path, data):
    grid = stage_effects_table(data)
    assert "val/acc1 ci95_low" in grid and "note" not in grid.attrs
    assert set(grid["op"]) == {"conv", "xvol_pssa"}  # controls are not operator effects
    tpe = stage_effects_table(build(tmp_path, name="tpe_study", sampler="tpe"))
    assert "val/acc1 ci95_low" not in tpe and "val/acc1 min" in tpe
    assert tpe.attrs["note"].startswith("descriptive: the tpe sampler chose the configurations")
    conv = tpe.set_index(["stage", "op"]).loc[(3, "conv")]
    assert (conv["val/acc1 min"], conv["val/acc1 max"]) == (min(BASE), max(BASE))


def test_power_prints_the_seeds_needed_per_row(tmp_path, capsys):
    data = build(tmp_path, name="pw")
    table = ablation_table(data).set_index("configuration")
    assert main(["study", "power", str(tmp_path / "pw.yaml"), "--effect", "0.02", "--runs",
                 str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pw: val/acc1, detect 0.02 with 80% power")
    for name in ("negative control: all-conv, disjoint seeds", "X-volution(PSSA) in stage 3"):
        needed = stats.seeds_needed(table.loc[name, "val/acc1 diff_std"], 0.02, 0.05 / 3)
        line = next(line for line in out.splitlines() if line.startswith(f"| {name} "))
        assert line.rstrip(" |").endswith(f"| {needed}")


def test_the_budget_line_names_a_control_that_ran_fewer_seeds(data):
    from xvol_lab.study.report.writer import seeds_text

    # the configurations ran seeds 0-4; the positive control the first 3 of them
    assert seeds_text(data) == "5 (0, 1, 2, 3, 4; positive control 3)"
