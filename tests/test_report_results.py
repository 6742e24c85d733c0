"""`lab.py study results`: RESULTS.md from small seeded storages built with `create_trial` (no
training), one per verdict: reproduced, contradicted, not distinguishable, not run, not tested."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from _report_studies import open_study
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from xvol_lab.cli.main import main
from xvol_lab.errors import ConfigError
from xvol_lab.markdown import format_number
from xvol_lab.study import stats
from xvol_lab.study.results import write_results

OPS = ["conv", "sa", "pssa", "xvol_sa", "xvol_pssa"]
BASE = """
description: results test study
base:
  data: {{name: shapes, root: {root}, image_size: 16, num_classes: 4, num_train: 64, num_val: 32}}
  model: {{block: {block}, depths: {depths}, width_mult: 0.125, stem: small}}
space:
{space}
objectives: [{{metric: val/acc1, direction: maximize}}]
sampler: {{name: grid}}
budget: {{epochs: 2, seeds: 3}}
"""
SPACES = {
    "op_ablation": ("basic", [1, 1, 1, 1], "  stages: {3: {op: [conv, sa, pssa, xvol_sa, xvol_pssa]}}"),
    "stage_ablation": ("basic", [1, 1, 1, 1], "  place: [0, 3]\n  stages: {3: {op: [xvol_pssa]}}"),
    "r50_ablation": ("bottleneck", [3, 4, 6, 3], "  stages: {4: {op: [conv, xvol_pssa]}}"),
}
CONV = [0.50, 0.60, 0.70]


def study_file(folder: Path, name: str) -> Path:
    block, depths, space = SPACES[name]
    path = folder / f"{name}.yaml"
    path.write_text(BASE.format(root=folder / "data", block=block, depths=depths, space=space))
    return path


def add_seeded(study, params: dict, distributions: dict, acc1: list[float], threads: int | None = None) -> None:
    """A configuration trained with seeds 0, 1, 2 as the study engine stores it (with `threads`: and
    a fingerprint of a run on that many threads)."""
    seeds = list(range(len(acc1)))
    attrs = {"seeds": seeds, "per_seed": {"val/acc1": acc1, "params_m": [0.1] * len(acc1)},
             "val/acc1": statistics.fmean(acc1), "params_m": 0.1, "flops_g": 0.01}
    if threads is not None:
        attrs["fingerprint"] = {"threads": threads, "backend": "cpu", "device": "cpu: Xeon",
                                "precision": "32-true", "torch": "2.9.0", "lightning": "2.6.4",
                                "optuna": "5.0.0", "xvol_lab": "0.1.0"}
    study.add_trial(create_trial(values=[statistics.fmean(acc1)], params=params, distributions=distributions,
                                 user_attrs=attrs))


def op_ablation(runs: Path, acc1: dict[str, list[float]]) -> None:
    study = open_study(runs, "op_ablation", ["maximize"])
    dist = {"stage3.op": CategoricalDistribution(OPS)}
    for op, values in acc1.items():
        add_seeded(study, {"stage3.op": op}, dist, values)


def shifted(delta: list[float]) -> list[float]:
    return [c + d for c, d in zip(CONV, delta, strict=True)]


def results_text(folder: Path, names: tuple[str, ...] = ("op_ablation", "stage_ablation")) -> str:
    out = write_results(folder / "RESULTS.md", folder / "runs", [study_file(folder, n) for n in names])
    return out.read_text()


def claim(text: str, title: str) -> str:
    """The section of claim `title`."""
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_reproduced_claims_and_a_study_that_was_not_run(tmp_path):
    op_ablation(tmp_path / "runs", {
        "conv": CONV, "sa": shifted([0.0, 0.01, -0.01]), "pssa": shifted([0.02, -0.01, 0.03]),
        "xvol_sa": shifted([0.05, 0.06, 0.07]), "xvol_pssa": shifted([0.051, 0.061, 0.072])})
    text = results_text(tmp_path)
    stage3 = claim(text, "X-volution beats conv when placed in stage 3")
    assert "**Verdict: reproduced**" in stage3
    assert "| op_ablation | X-volution(SA) in stage 3 vs conv everywhere | val/acc1 | +0.06 [" in stage3
    assert "- stage_ablation: not run (no storage at " in stage3
    assert "**Verdict: not tested: no study with ResNet-50 at this budget**" in text
    # xvol_pssa - xvol_sa = 0.001, 0.001, 0.002: interval inside ±0.01; pssa - sa too wide to tell
    pssa = claim(text, "PSSA is about as good as global SA")
    assert ("**Verdict: mixed: reproduced in op_ablation (X-volution(PSSA) in stage 3); not distinguishable "
            "at this budget in op_ablation (PSSA in stage 3)**") in pssa
    assert "| X-volution(PSSA) in stage 3 vs X-volution(SA) in stage 3 | val/acc1 | +0.001333 [" in pssa
    mde = stats.mde(statistics.stdev([0.001, 0.001, 0.002]), 3)  # one test: alpha 0.05
    assert f"(paired t) | {format_number(mde)} | 0, 1, 2 | reproduced |" in pssa
    studies = text.split("## Studies\n", 1)[1]
    assert "seeds per configuration 3 (0, 1, 2), 2 epochs, data shapes 16 px, 64 train / 32 val" in studies
    assert ("- baseline: all-conv (conv everywhere): val/acc1 0.6 [0.3516, 0.8484]; trivial level val/acc1 "
            "0.25 (always the most frequent class)") in studies
    assert "`python lab.py study run op_ablation && python lab.py study report op_ablation && " \
           "python lab.py study results`" in studies
    assert "### stage_ablation\n\nnot run (no storage at" in studies


def test_contradicted_claims(tmp_path):
    op_ablation(tmp_path / "runs", {"conv": CONV, "xvol_sa": shifted([-0.05, -0.06, -0.07]),
                                    "xvol_pssa": shifted([-0.10, -0.12, -0.11])})
    text = results_text(tmp_path)
    assert "**Verdict: contradicted**" in claim(text, "X-volution beats conv when placed in stage 3")
    pssa = claim(text, "PSSA is about as good as global SA")
    assert "**Verdict: contradicted**" in pssa and "val/acc1 | -0.05 [" in pssa


def test_noisy_ablation_is_not_distinguishable(tmp_path):
    study_file(tmp_path, "stage_ablation")
    study = open_study(tmp_path / "runs", "stage_ablation", ["maximize"])
    dist = {"place": CategoricalDistribution([0, 3])}
    add_seeded(study, {"place": 0}, dist, CONV)
    add_seeded(study, {"place": 3}, dist, shifted([0.05, -0.04, 0.06]))
    text = results_text(tmp_path)
    stage3 = claim(text, "X-volution beats conv when placed in stage 3")
    mde = stats.mde(statistics.stdev([0.05, -0.04, 0.06]), 3)  # one row: Holm's first step is 0.05
    assert f"**Verdict: not distinguishable at this budget (MDE {format_number(mde)})**" in stage3
    assert "- controls: none (the study file has no `controls`)" in text
    assert "| stage_ablation | X-volution(PSSA) in stage 3 vs conv everywhere |" in stage3
    assert "- op_ablation: not run" in stage3
    pssa = claim(text, "PSSA is about as good as global SA")
    assert "**Verdict: not tested (op_ablation: no result yet)**" in pssa


def test_resnet50_study_tests_the_stage_4_claim(tmp_path):
    study = open_study(tmp_path / "runs", "r50_ablation", ["maximize"])
    dist = {"stage4.op": CategoricalDistribution(["conv", "xvol_pssa"])}
    add_seeded(study, {"stage4.op": "conv"}, dist, CONV)
    add_seeded(study, {"stage4.op": "xvol_pssa"}, dist, shifted([-0.05, -0.06, -0.07]))
    text = results_text(tmp_path, ("op_ablation", "r50_ablation"))
    stage4 = claim(text, "Replacing stage 4 hurts ResNet-50")
    assert "**Verdict: reproduced**" in stage4
    assert "| r50_ablation | X-volution(PSSA) in stage 4 vs conv everywhere | val/acc1 | -0.06 [" in stage4
    assert "backbone resnet50" in text.split("### r50_ablation", 1)[1]


def test_cli_writes_results_md_from_the_shipped_studies(tmp_path, capsys):
    out = tmp_path / "R.md"
    assert main(["study", "results", "--runs", str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text()
    assert text.startswith("# Results\n\nWritten by `python lab.py study results`")
    assert "- op_ablation: not run (no storage at " in text
    assert not (tmp_path / "runs").exists()  # reading never creates a storage


def test_unwritable_results_file_is_one_error_line(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["study", "results", "--runs", str(tmp_path), "--out", str(blocker / "R.md")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lab.py: error: ") and "cannot write the results there" in err and "\n" not in err


@pytest.mark.parametrize("name", ["op_ablation"])
def test_a_storage_without_finished_trials_is_not_run(tmp_path, name):
    open_study(tmp_path / "runs", name, ["maximize"])
    text = results_text(tmp_path)
    assert f"- {name}: not run (study {name}: no finished trial yet" in text


def test_equivalence_at_the_ceiling_is_not_evidence(tmp_path):
    top = [1.0, 1.0, 1.0]
    op_ablation(tmp_path / "runs", {"conv": top, "sa": top, "pssa": top, "xvol_sa": top,
                                    "xvol_pssa": [0.998, 1.0, 1.0]})
    pssa = claim(results_text(tmp_path), "PSSA is about as good as global SA")
    assert "**Verdict: not distinguishable at this budget: both at the ceiling (MDE " in pssa
    assert "reproduced" not in pssa


def test_studies_whose_trials_ran_with_other_threads_are_refused_unless_allowed(tmp_path):
    study = open_study(tmp_path / "runs", "op_ablation", ["maximize"])
    dist = {"stage3.op": CategoricalDistribution(OPS)}
    for op, threads in [("conv", 1), ("xvol_pssa", 2), ("sa", 1)]:
        add_seeded(study, {"stage3.op": op}, dist, shifted([0.1, 0.1, 0.1]) if op != "conv" else CONV, threads)
    files = [str(study_file(tmp_path, "op_ablation"))]
    out = tmp_path / "RESULTS.md"
    with pytest.raises(ConfigError, match=r"study op_ablation: .*fingerprint field `threads`: 1 in trials 0, 2; "
                                          r"2 in trial 1; .*--allow-mixed"):
        write_results(out, tmp_path / "runs", files)
    assert not out.exists()
    write_results(out, tmp_path / "runs", files, allow_mixed=True)
    assert ("- **mixed environments (--allow-mixed)**: `threads`: 1 in trials 0, 2; 2 in trial 1"
            in out.read_text())

