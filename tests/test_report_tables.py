"""Report tables from small studies built directly in SQLite storages (no training): every column
and number is checked against the trials as stored and against hand-computed statistics; the FLOP
columns against torchvision's published ResNet costs.
"""

from __future__ import annotations

import math
import statistics

import pytest
from _report_studies import (
    BASE,
    BATCH,
    CONV,
    PSSA_XSA,
    XPSSA2,
    add,
    build_ablation_study,
    build_pareto_study,
    build_seeded_study,
    metrics_of,
    open_study,
    write_study_file,
)
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from torchvision.models import ResNet18_Weights, ResNet50_Weights

from xvol_lab.study.config import load_study_config
from xvol_lab.study.report import (
    ablation_table,
    importance_table,
    load_study_data,
    pareto_table,
    stage_effects_table,
    trials_table,
)
from xvol_lab.study.report.findings import trivial_text
from xvol_lab.study.report.frame import seed_frame
from xvol_lab.study.report.source import configuration_label
from xvol_lab.study.report.tables import STAT_KINDS

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def abl(tmp_path_factory):
    folder = tmp_path_factory.mktemp("abl")
    return load_study_data(build_ablation_study(folder), runs=folder / "runs")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeded")
    return load_study_data(build_seeded_study(folder), runs=folder / "runs")


@pytest.fixture(scope="module")
def par(tmp_path_factory):
    folder = tmp_path_factory.mktemp("par")
    return load_study_data(build_pareto_study(folder), runs=folder / "runs")


def test_trials_table_lists_every_trial_with_state_reason_stages_metrics_and_costs(abl):
    table = trials_table(abl)
    assert list(table.columns) == [
        "number", "state", "reason", "stage1", "stage2", "stage3", "stage4", "val/acc1",  # no val/acc5: 4 classes
        "val/loss", "train/loss", "params (M)", "GFLOPs (2×MAC)", "latency b1 (ms)", f"latency b{BATCH} (ms)",
        "GMACs", "epochs", "best epoch", "wall time (s)"]
    assert list(table["number"]) == list(range(12))
    assert list(table["state"]) == ["complete"] * 3 + ["interrupted", "complete", "complete", "complete",
                                                       "pruned", "failed", "void", "running", "waiting"]
    reasons = dict(zip(table["number"], table["reason"], strict=True))
    assert reasons[3] == "retried as trial 4" and reasons[4] == "retry of trial 3"
    assert reasons[7] == "val/acc1=0.2000 at epoch 1: MedianPruner"
    assert reasons[8] == "crashed: RuntimeError: boom"
    assert reasons[9].startswith("not run: the budget")
    assert reasons[0] == reasons[10] == ""
    rows = table.set_index("number")
    stages = ["stage1", "stage2", "stage3", "stage4"]
    assert list(rows.loc[1, stages]) == ["conv", "conv", "xvol_pssa(L=2)", "conv"]
    assert list(rows.loc[5, ["stage3", "stage4"]]) == ["pssa", "xvol_sa"]
    assert list(rows.loc[10, ["stage3", "stage4"]]) == ["xvol_pssa", "conv"]
    assert list(rows.loc[11, ["stage1", "stage3"]]) == ["", ""]  # waiting: no params yet
    stored = {t.number: t for t in abl.study.get_trials()}
    for n in (0, 1, 2, 4, 5, 6):
        assert rows.loc[n, "val/acc1"] == stored[n].values[0]
        for key in ("val/loss", "train/loss", "epochs"):
            assert rows.loc[n, key] == stored[n].user_attrs[key]
        assert rows.loc[n, "params (M)"] == stored[n].user_attrs["params_m"]
        assert rows.loc[n, "latency b1 (ms)"] == stored[n].user_attrs["latency_ms"]
    assert rows.loc[7, "val/acc1"] == 0.2 and rows.loc[7, "epochs"] == 1.0  # pruned: its logged metric
    assert math.isnan(rows.loc[8, "val/acc1"]) and math.isnan(rows.loc[8, "params (M)"])
    # FLOPs: stored when measured (trial 0), else counted on the deploy form of the spec (checked
    # against torchvision below); a multiply-add is 2 FLOPs
    flops = "GFLOPs (2×MAC)"
    assert rows.loc[0, flops] == 0.123 and rows.loc[0, "GMACs"] == pytest.approx(0.0615)
    assert rows.loc[1, flops] > rows.loc[6, flops] > 0  # X-volution adds PSSA's cost
    assert rows.loc[10, flops] == rows.loc[1, flops]  # the shift L moves PSSA's 9 taps, not their number
    assert rows.loc[1, "GMACs"] == pytest.approx(rows.loc[1, flops] / 2)
    assert math.isnan(rows.loc[11, flops]) and math.isnan(rows.loc[11, "GMACs"])
    assert rows.loc[0, f"latency b{BATCH} (ms)"] == 9.0 and math.isnan(rows.loc[1, f"latency b{BATCH} (ms)"])
    assert rows.loc[0, "wall time (s)"] == 150.0
    assert math.isnan(rows.loc[10, "wall time (s)"]) and math.isnan(rows.loc[11, "wall time (s)"])


def test_ablation_of_single_seed_trials_groups_by_configuration(abl):
    """Trials stored without seeds ran the study's base.seed: repeats of a configuration share seed
    0, so they are averaged before pairing (one pair: a difference without interval)."""
    table = ablation_table(abl)
    assert list(table.columns[:4]) == ["configuration", "n", "seeds", "trials"]
    assert list(table.columns[-3:]) == ["params (M)", "GFLOPs (2×MAC)", "GMACs"]
    assert [c for c in table.columns if c.startswith("val/acc1")] == [f"val/acc1 {k}" for k in STAT_KINDS]
    # the baseline first; trial 3 (interrupted, retried as 4), pruned, failed, void, running: left out
    assert list(table["configuration"]) == ["conv everywhere", "X-volution(PSSA, L=2) in stage 3",
                                            "PSSA in stage 3; X-volution(SA) in stage 4"]
    assert table.attrs["baseline"] == "conv everywhere"
    assert list(table["trials"]) == ["0, 6", "1, 2, 4", "5"]
    assert list(table["n"]) == [2, 3, 1] and list(table["seeds"]) == ["0", "0", "0"]
    conv_mean = (0.50 + 0.56) / 2
    assert table["val/acc1 mean"].tolist() == pytest.approx([conv_mean, (0.70 + 0.80 + 0.75) / 3, 0.60])
    conv_std = math.sqrt((0.50 - conv_mean) ** 2 + (0.56 - conv_mean) ** 2)  # n - 1 = 1
    assert table.loc[0, "val/acc1 std"] == pytest.approx(conv_std)
    assert table.loc[1, "val/acc1 std"] == pytest.approx(0.05)  # sqrt((0.05^2 + 0.05^2 + 0) / 2)
    assert math.isnan(table.loc[2, "val/acc1 std"])  # one run: no spread
    assert table["val/acc1 diff"].tolist() == pytest.approx([0.0, 0.75 - 0.53, 0.60 - 0.53])
    for column in ("diff_ci95_low", "p", "p_holm"):
        assert table[f"val/acc1 {column}"].isna().all()  # one paired seed: no interval, no test
    assert table["val/acc1 sig"].tolist() == ["", "", ""]
    assert table["params (M)"].tolist() == pytest.approx([0.05, 0.05, 0.04])
    assert table["GMACs"].tolist() == pytest.approx((table["GFLOPs (2×MAC)"] / 2).tolist())
    counted = trials_table(abl).loc[6, "GFLOPs (2×MAC)"]
    assert table.loc[0, "GFLOPs (2×MAC)"] == pytest.approx((0.123 + counted) / 2)  # trial 0 stored its own
    assert "note" not in table.attrs


STATS = ("mean", "std", "ci95_low", "ci95_high", "best")  # per objective in the stage-effect table
T975_DF2 = math.sqrt(2 * 0.9025 / 0.0975)  # t(0.975, 2) from the t CDF with 2 degrees of freedom
T975_DF5 = 2.5706  # t(0.975, 5), the textbook table value


def test_seeded_ablation_has_intervals_paired_differences_tests_and_holm(seeded):
    table = ablation_table(seeded).set_index("configuration")
    assert list(table.index) == ["conv everywhere", "X-volution(PSSA, L=2) in stage 3",
                                 "PSSA in stage 3; X-volution(SA) in stage 4"]
    conv, xvol, mixed = (table.iloc[i] for i in range(3))
    assert (conv["n"], conv["seeds"], conv["trials"]) == (3, "0, 1, 2", "0")
    assert conv["val/acc1 mean"] == pytest.approx(0.6) and conv["val/acc1 std"] == pytest.approx(0.1)
    half = T975_DF2 * 0.1 / math.sqrt(3)  # 0.2484
    assert (conv["val/acc1 ci95_low"], conv["val/acc1 ci95_high"]) == pytest.approx((0.6 - half, 0.6 + half))
    assert conv["val/acc1 diff"] == 0.0 and math.isnan(conv["val/acc1 p"])
    # X-volution: 0.55, 0.66, 0.77 against 0.50, 0.60, 0.70 by seed: differences 0.05, 0.06, 0.07
    assert xvol["val/acc1 diff"] == pytest.approx(0.06)
    half = T975_DF2 * 0.01 / math.sqrt(3)
    assert (xvol["val/acc1 diff_ci95_low"], xvol["val/acc1 diff_ci95_high"]) == pytest.approx((0.06 - half,
                                                                                               0.06 + half))
    t = 0.06 / (0.01 / math.sqrt(3))
    p_xvol = 1 - t / math.sqrt(2 + t * t)  # two-sided, 2 degrees of freedom
    assert xvol["val/acc1 p"] == pytest.approx(p_xvol) and xvol["val/acc1 p_exact"] == pytest.approx(0.25)
    # the mixed one: differences 0.02, -0.02, 0.03 (seed 3 has no all-conv partner)
    sd = math.sqrt((0.01**2 + 0.03**2 + 0.02**2) / 2)
    t = 0.01 / (sd / math.sqrt(3))
    p_mixed = 1 - t / math.sqrt(2 + t * t)
    assert mixed["val/acc1 n"] == 4 and mixed["val/acc1 diff"] == pytest.approx(0.01)
    assert mixed["val/acc1 p"] == pytest.approx(p_mixed) and mixed["val/acc1 diff_ci95_low"] < 0
    # Holm over the two tests: 2 * p_xvol, then max(2 * p_xvol, p_mixed)
    assert xvol["val/acc1 p_holm"] == pytest.approx(2 * p_xvol)
    assert mixed["val/acc1 p_holm"] == pytest.approx(max(2 * p_xvol, p_mixed))
    assert (xvol["val/acc1 sig"], mixed["val/acc1 sig"]) == ("*", "")
    assert mixed["params (M)"] == pytest.approx(0.04)


def test_runs_frame_reads_per_seed_values_and_leaves_missing_ones_out(tmp_path):
    path = write_study_file(tmp_path, "frame")
    study = open_study(tmp_path / "runs", "frame", ["maximize"])
    attrs = {"seeds": [4, 5, 6], "per_seed": {"val/acc1": [0.5, None, 0.7]}, **metrics_of(0.6, flops_g=0.2)}
    add(study, XPSSA2, [0.6], attrs=attrs)
    add(study, CONV, [0.4], attrs=metrics_of(0.4, flops_g=0.1))  # stored before seeds: base.seed 0
    data = load_study_data(path, runs=tmp_path / "runs")
    frame = seed_frame(data)
    assert frame["trial"].tolist() == [0, 0, 0, 1] and frame["seed"].tolist() == [4, 5, 6, 0]
    assert frame.loc[[0, 2, 3], "val/acc1"].tolist() == [0.5, 0.7, 0.4]
    assert math.isnan(frame.loc[1, "val/acc1"])
    assert frame["flops_g"].tolist() == [0.2, 0.2, 0.2, 0.1]  # the same for every seed
    assert frame["latency_ms"].isna().tolist() == [True, True, True, False]  # not per seed: unknown
    assert frame["changed stages"].tolist() == [(3,)] * 3 + [()]
    assert frame["stage3 op"].tolist() == ["xvol_pssa"] * 3 + ["conv"]
    row = ablation_table(data).set_index("configuration").loc["X-volution(PSSA, L=2) in stage 3"]
    assert row["val/acc1 n"] == 2 and row["val/acc1 mean"] == pytest.approx(0.6)
    assert math.isnan(row["val/acc1 diff"])  # no seed in common with the baseline (seed 0): no pair


def test_seeded_stage_effects_carry_intervals(seeded):
    table = stage_effects_table(seeded)
    assert list(table.columns) == ["stage", "op", "n", "val/acc1 mean", "val/acc1 std", "val/acc1 ci95_low",
                                   "val/acc1 ci95_high", "val/acc1 best"]
    rows = {(r["stage"], r["op"]): r for _, r in table.iterrows()}
    assert list(rows) == [(3, "conv"), (3, "pssa"), (3, "xvol_pssa"), (4, "conv"), (4, "xvol_sa")]
    stage4_conv = [0.50, 0.60, 0.70, 0.55, 0.66, 0.77]
    row = rows[(4, "conv")]
    assert row["n"] == 6 and row["val/acc1 mean"] == pytest.approx(statistics.fmean(stage4_conv))
    half = T975_DF5 * statistics.stdev(stage4_conv) / math.sqrt(6)
    assert row["val/acc1 ci95_high"] - row["val/acc1 mean"] == pytest.approx(half, rel=1e-4)
    assert row["val/acc1 best"] == 0.77
    assert rows[(3, "conv")]["val/acc1 ci95_low"] == pytest.approx(0.6 - T975_DF2 * 0.1 / math.sqrt(3))
    assert rows[(4, "xvol_sa")]["n"] == 4


def test_latencies_of_different_devices_are_kept_apart(tmp_path):
    objectives = (("val/acc1", "maximize"), ("latency_ms", "minimize"))
    path = write_study_file(tmp_path, "dev", objectives=objectives)
    study = open_study(tmp_path / "runs", "dev", ["maximize", "minimize"])
    for params, acc, latency, device in [(CONV, 0.5, 1.0, "cpu"), (XPSSA2, 0.6, 3.0, "cpu"),
                                         (CONV, 0.5, 0.1, "cuda"), (XPSSA2, 0.6, 0.2, "cuda")]:
        attrs = {**metrics_of(acc, latency_ms=latency), "latency_device": device}
        add(study, params, [acc, latency], attrs=attrs)
    data = load_study_data(path, runs=tmp_path / "runs")
    table = ablation_table(data)
    assert list(zip(table["configuration"], table["latency device"], strict=True)) == [
        ("conv everywhere", "cpu"), ("conv everywhere", "cuda"),
        ("X-volution(PSSA, L=2) in stage 3", "cpu"), ("X-volution(PSSA, L=2) in stage 3", "cuda")]
    assert table["latency b1 (ms) mean"].tolist() == [1.0, 0.1, 3.0, 0.2]  # never averaged across devices
    assert table["latency b1 (ms) diff"].tolist() == pytest.approx([0.0, 0.0, 2.0, 0.1])  # same device
    assert "latency measured on 2 devices (cpu, cuda)" in table.attrs["note"]
    assert trials_table(data)["latency device"].tolist() == ["cpu", "cpu", "cuda", "cuda"]


@pytest.mark.parametrize(("depths", "block", "weights"), [
    ((2, 2, 2, 2), "basic", ResNet18_Weights.IMAGENET1K_V1),
    ((3, 4, 6, 3), "bottleneck", ResNet50_Weights.IMAGENET1K_V1),
])
def test_gmacs_of_all_conv_resnets_are_torchvisions(tmp_path, depths, block, weights):
    """torchvision documents each ResNet's cost in GMACs at 224 px (meta["_ops"]: 1.814, 4.089): the
    report's GMACs column (counted on the deploy network) prints the same to 3 decimals. The count
    of PSSA's products by hand is tests/test_model_cost.py::test_pssa_flops_by_hand."""
    path = tmp_path / "tv.yaml"
    path.write_text(f"""
base:
  data: {{name: imagefolder, root: {tmp_path / 'none'}, image_size: 224, num_classes: 1000}}
  model: {{block: {block}, depths: {list(depths)}}}
space: {{stages: {{4: {{op: [conv, xvol_pssa]}}}}}}
budget: {{n_trials: 1, epochs: 1}}
""")
    study = open_study(tmp_path / "runs", "tv", ["maximize"])
    study.add_trial(create_trial(values=[0.5], params={"stage4.op": "conv"},
                                 distributions={"stage4.op": CategoricalDistribution(["conv", "xvol_pssa"])}))
    table = trials_table(load_study_data(path, runs=tmp_path / "runs"))
    assert f"{table.loc[0, 'GMACs']:.3f}" == f"{weights.meta['_ops']:.3f}"


def test_trivial_level_beside_the_baseline_and_left_out_when_the_data_cannot_be_read(tmp_path, caplog):
    config = load_study_config(write_study_file(tmp_path, "triv"))[1]
    assert trivial_text(config) == "val/acc1 0.25 (always the most frequent class)"  # 32 images, 4 classes
    path = tmp_path / "folder.yaml"
    path.write_text(f"""
base: {{data: {{name: imagefolder, root: {tmp_path / 'none'}, num_classes: 3}}}}
space: {{stages: {{3: {{op: [conv, pssa]}}}}}}
budget: {{n_trials: 2}}
""")
    assert trivial_text(load_study_config(path)[1]) == ""
    assert "no trivial level: imagefolder: no folder" in caplog.text


def test_ablation_without_all_conv_trial_leaves_differences_empty_with_a_note(tmp_path):
    path = write_study_file(tmp_path, "noconv")
    study = open_study(tmp_path / "runs", "noconv", ["maximize"])
    add(study, XPSSA2, [0.7], attrs=metrics_of(0.7))
    add(study, PSSA_XSA, [0.6], attrs=metrics_of(0.6))
    table = ablation_table(load_study_data(path, runs=tmp_path / "runs"))
    assert len(table) == 2 and table["val/acc1 diff"].isna().all() and table["val/acc1 p_holm"].isna().all()
    assert "no all-conv trial" in table.attrs["note"] and "baseline" not in table.attrs


def test_stage_effects_count_mean_and_best_per_stage_and_operator(abl):
    table = stage_effects_table(abl)
    rows = {(r["stage"], r["op"]): r for _, r in table.iterrows()}
    assert list(rows) == [(3, "conv"), (3, "pssa"), (3, "xvol_pssa"), (4, "conv"), (4, "xvol_sa")]
    expected = {(3, "conv"): [0.50, 0.56], (3, "pssa"): [0.60], (3, "xvol_pssa"): [0.70, 0.80, 0.75],
                (4, "conv"): [0.50, 0.70, 0.80, 0.75, 0.56], (4, "xvol_sa"): [0.60]}
    for key, values in expected.items():
        assert rows[key]["n"] == len(values)
        assert rows[key]["val/acc1 mean"] == pytest.approx(statistics.fmean(values))
        assert rows[key]["val/acc1 best"] == max(values)
    assert math.isnan(rows[(3, "pssa")]["val/acc1 ci95_low"])  # one run: no interval


def test_importances_cover_the_searched_parameters_and_sum_to_one(abl):
    table = importance_table(abl)
    assert list(table.columns) == ["parameter", "val/acc1"]
    assert set(table["parameter"]) <= {"stage3.op", "stage3.shift", "stage4.op"}
    assert "stage3.op" in set(table["parameter"])
    assert table["val/acc1"].sum() == pytest.approx(1.0)
    assert list(table["val/acc1"]) == sorted(table["val/acc1"], reverse=True)


def test_importances_with_too_few_trials_give_a_note_not_an_error(tmp_path):
    path = write_study_file(tmp_path, "one")
    study = open_study(tmp_path / "runs", "one", ["maximize"])
    add(study, XPSSA2, [0.7], attrs=metrics_of(0.7))
    add(study, CONV, state=TrialState.PRUNED, attrs={"prune_reason": "early"})
    table = importance_table(load_study_data(path, runs=tmp_path / "runs"))
    assert table.empty and list(table.columns) == ["parameter", "val/acc1"]
    assert "at least 2 complete trials" in table.attrs["note"]


def test_single_objective_best_table_is_the_best_trial(abl):
    table = pareto_table(abl)
    assert list(table["number"]) == [2]
    assert table.loc[0, "val/acc1"] == 0.80 and table.loc[0, "stage3"] == "xvol_pssa(L=2)"
    assert "state" not in table.columns


def test_pareto_table_is_the_hand_constructed_front(par):
    table = pareto_table(par)
    assert set(table["number"]) == {0, 1, 2, 5}
    assert list(table["number"]) == [0, 5, 2, 1]  # best val/acc1 first, ties by number
    rows = table.set_index("number")
    assert rows.loc[1, "latency b1 (ms)"] == 1.0 and rows.loc[2, "val/acc1"] == 0.75
    # the measured objective shows in its cost column; the trials table takes it from the stored values
    trials = trials_table(par).set_index("number")
    assert trials.loc[3, "latency b1 (ms)"] == 2.5 and trials.loc[6, "state"] == "failed"


def test_multi_objective_tables_have_columns_per_objective(par):
    ablation = ablation_table(par)
    assert list(ablation.columns) == ["configuration", "n", "seeds", "trials",
                                      *(f"val/acc1 {k}" for k in STAT_KINDS),
                                      *(f"latency b1 (ms) {k}" for k in STAT_KINDS),
                                      "params (M)", "GFLOPs (2×MAC)", "GMACs"]
    conv = ablation.set_index("configuration").loc["conv everywhere"]
    assert conv["n"] == 2 and conv["latency b1 (ms) mean"] == pytest.approx(1.75)
    assert conv["latency b1 (ms) std"] == pytest.approx(statistics.stdev([1.0, 2.5]))
    xvol = ablation.set_index("configuration").loc["X-volution(PSSA, L=2) in stage 3"]
    assert xvol["latency b1 (ms) diff"] == pytest.approx(3.0 - 1.75)
    assert xvol["val/acc1 diff"] == pytest.approx(0.1)
    effects = stage_effects_table(par)
    assert list(effects.columns) == ["stage", "op", "n", *(f"val/acc1 {k}" for k in STATS),
                                     *(f"latency b1 (ms) {k}" for k in STATS)]
    stage4_conv = effects[(effects.stage == 4) & (effects.op == "conv")].iloc[0]
    assert stage4_conv["latency b1 (ms) best"] == 1.0 and stage4_conv["val/acc1 best"] == 0.80
    importance = importance_table(par)
    assert list(importance.columns) == ["parameter", "val/acc1", "latency b1 (ms)"]


@pytest.mark.parametrize(("params", "label"), [
    ({}, "conv everywhere"),
    ({2: {"op": "xvol_pssa"}}, "X-volution(PSSA) in stage 2"),
    ({3: {"op": "xvol_pssa", "shift": 2}, 4: {"op": "xvol_pssa", "shift": 2}},
     "X-volution(PSSA, L=2) in stages 3, 4"),
    ({1: {"op": "pssa", "shift": 3}, 4: {"op": "xvol_sa"}},
     "PSSA(L=3) in stage 1; X-volution(SA) in stage 4"),
    ({2: {"op": "conv", "kernel_size": 5}}, "conv(K=5) in stage 2"),
    ({3: {"op": "conv", "shift": 3}}, "conv everywhere"),  # an option conv ignores: the same network
])
def test_configuration_labels_follow_the_paper(params, label):
    spec = BASE
    for stage, changes in params.items():
        spec = spec.with_stage(stage, **changes)
    assert configuration_label(spec) == label
