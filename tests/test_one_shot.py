"""One-shot studies: rank statistics, bad study files, and the whole run (supernet, search,
stand-alone check, report, RESULTS.md section, export of the best stand-alone path)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import optuna
import pytest
import torch
from _study_processes import load

from xvol_lab.cli.main import main
from xvol_lab.study import ranking
from xvol_lab.study.config import load_study_config
from xvol_lab.study.one_shot import score_name, scored_paths, search, search_study_name, space_points
from xvol_lab.study.one_shot_report import one_shot_summary
from xvol_lab.study.results import write_results
from xvol_lab.study.storage import default_storage_url, open_storage
from xvol_lab.tasks.supernet import snapshot_paths
from xvol_lab.tasks.supernet_score import PathScorer

ONE_SHOT = {"epochs": 1, "sampling": "product", "paths": 20, "sampler": "tpe", "bn_batches": 1, "val_images": 32,
            "top_k": 2, "random_k": 1}


def test_kendall_and_spearman_match_hand_computed_values():
    assert ranking.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)  # 5 concordant, 1 not
    assert ranking.spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6 * 2 / (4 * 15)
    assert ranking.kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))  # tau-b with a tie
    assert ranking.spearman_rho([1, 1, 2], [1, 2, 3]) == pytest.approx(1.5 / math.sqrt(3))
    assert ranking.kendall_tau([3, 2, 1], [1, 2, 3]) == -1.0
    assert math.isnan(ranking.kendall_tau([1, 1, 1], [1, 2, 3]))
    assert ranking.bootstrap_interval(ranking.kendall_tau, [1, 2, 3, 4], [2, 4, 6, 8]) == (1.0, 1.0)
    low, high = ranking.bootstrap_interval(ranking.spearman_rho, [1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5])
    assert -1 <= low < ranking.spearman_rho([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5]) < high <= 1
    assert ranking.regret([0.7, 0.8], [0.7, 0.8, 0.9]) == pytest.approx(0.1)


@pytest.mark.parametrize(("space", "one_shot", "expected"), [
    ({"stages": {3: {"op": ["pssa"], "shift": [1, 2, 3]}}}, ONE_SHOT,
     "space: got no operator choice, expected at least two operators"),
    ({"stages": {3: {"op": ["conv", "pssa"], "shift": [1, 2]}}}, {**ONE_SHOT, "top_k": 2, "random_k": 2},
     "one_shot.top_k: got top_k + random_k = 4, expected at most 3 (the number of distinct points"),
])
def test_bad_one_shot_study_is_one_line_exit_2_nothing_written(tiny_study, run_lab, tmp_path, space, one_shot,
                                                                 expected):
    path = tiny_study("bad", space=space, search="one_shot", one_shot=one_shot, budget={"epochs": 1})
    done = run_lab("study", "run", str(path), "--runs", str(tmp_path / "runs"), "--no-live", timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "bad.yaml" in lines[0], done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_one_shot_study_runs_in_one_worker(tiny_study, tmp_path, capsys):
    path = tiny_study("solo", search="one_shot", one_shot=ONE_SHOT, budget={"epochs": 1})
    assert main(["study", "run", str(path), "--runs", str(tmp_path / "runs"), "--workers", "2"]) == 2
    assert "--workers 2: a one-shot study (search: one_shot) runs in one worker" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_one_shot_study_end_to_end(tiny_study, run_lab, tmp_path: Path, capsys):
    # 5 paths: conv, pssa L=1/2, xvol_pssa L=1/2 (shift: options of one instance each)
    path = tiny_study("oneshot", search="one_shot", one_shot=ONE_SHOT, budget={"epochs": 1},
                      base={"trainer": {"limit_train_batches": 2, "limit_val_batches": 1}})
    runs = tmp_path / "runs"
    done = run_lab("study", "run", str(path), "--runs", str(runs), "--no-live", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    supernet = runs / "oneshot" / "supernet"
    assert json.loads((supernet / "result.json").read_text())["state"] == "complete"
    assert (supernet / "checkpoints" / "last.ckpt").is_file()
    request = json.loads((supernet / "trial.json").read_text())
    assert request["supernet_product"] is True and len(request["supernet"]) == 5  # the space's points

    _, config = load_study_config(path)
    url = default_storage_url(runs, "oneshot")
    study = optuna.load_study(study_name=search_study_name("oneshot"), storage=open_storage(url))
    scored = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(scored) == 5 and len({t.user_attrs["arch"] for t in scored}) == 5  # the space, each once
    assert all(0 <= t.values[0] <= 1 and t.user_attrs["seconds"] > 0 for t in scored)

    ranked = scored_paths(config, study)
    trials = load(runs, "oneshot").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    trained = [t.params for t in trials]  # (an all-conv point, the study's baseline, would train first)
    assert all(p in trained for p, _, _ in ranked[:2])  # the one-shot's top 2
    assert len([p for p, _, _ in ranked[2:] if p in trained]) == 1  # and one of the others

    summary = one_shot_summary("oneshot", config, url)
    assert len(summary.rows) == 3 and summary.paths_scored == summary.space_size == 5
    x, y = [r.one_shot for r in summary.rows], [r.standalone for r in summary.rows]
    assert sorted(y) == sorted(t.values[0] for t in trials)
    assert summary.tau == ranking.kendall_tau(x, y) or math.isnan(summary.tau)
    assert summary.top1_regret == pytest.approx(max(y) - summary.rows[0].standalone)
    assert summary.supernet_s > 0 and summary.search_s > 0 and summary.standalone_s > 0
    assert "Kendall tau" in done.stdout and "paths/hour" in done.stdout

    out = write_results(tmp_path / "RESULTS.md", runs, [path])
    text = out.read_text()
    assert "## One-shot search" in text and "### oneshot" in text and "Kendall tau" in text

    # export: the best stand-alone-retrained path, as for any study
    assert main(["study", "export", str(path), "--runs", str(runs)]) == 0
    best = min(trials, key=lambda t: (-t.values[0], t.number))
    [folder] = [p for p in (runs / "oneshot" / "export").iterdir() if p.is_dir()]
    assert folder.name.startswith(f"trial_{best.number}")
    assert json.loads((folder / "spec.json").read_text()) == json.loads(
        (Path(best.user_attrs["run_dir"]) / "spec.json").read_text())

    # NSGA-II over the same supernet: accuracy and FLOPs of the stand-alone network of each path
    nsga = dataclasses.replace(config, one_shot=dataclasses.replace(config.one_shot, sampler="nsga2"))
    other = search("other", nsga, url, supernet / "checkpoints")
    flops = {t.user_attrs["arch"]: t.values[1] for t in other.get_trials()}
    assert len(flops) == 5 and other.directions[1] == optuna.study.StudyDirection.MINIMIZE
    conv, pssa, xvol = (flops[f"[conv, conv, {op}, conv]"] for op in ("conv", "pssa", "xvol_pssa"))
    assert xvol > max(conv, pssa) > min(conv, pssa) > 0  # X-volution: a convolution and a PSSA branch
    scores = {t.user_attrs["arch"]: t.values[0] for t in other.get_trials()}
    assert scores == {t.user_attrs["arch"]: t.values[0] for t in scored}  # the same scores, recomputed

    # scored by minus the cross-entropy: graded (distinct values) where accuracy can tie
    nll = dataclasses.replace(config, one_shot=dataclasses.replace(config.one_shot, score="nll"))
    graded = search("graded", nll, url, supernet / "checkpoints").get_trials()
    assert all(t.values[0] < 0 for t in graded) and len({t.values[0] for t in graded}) == 5

    # scored along the supernet's training (auc): one weights snapshot per epoch, each point rescaled
    checkpoints = supernet / "checkpoints"
    assert [p.name for p in snapshot_paths(checkpoints)] == ["epoch0.ckpt"]  # 1 epoch
    auc = dataclasses.replace(config, one_shot=dataclasses.replace(config.one_shot, score="auc"))
    along = {t.user_attrs["arch"]: t.values[0] for t in search("along", auc, url, checkpoints).get_trials()}
    chance = 1 / 10  # shapes: 10 classes
    assert along == pytest.approx({a: (v - chance) / (1 - chance) for a, v in scores.items()})
    # two snapshots: the mean of their rescaled accuracies (all-zero weights: every image class 0)
    snapshot = snapshot_paths(checkpoints)[0]
    zeroed = tmp_path / "zeroed.ckpt"
    state = torch.load(snapshot, map_location="cpu", weights_only=False)
    state["state_dict"] = {k: torch.zeros_like(v) if v.is_floating_point() else v
                           for k, v in state["state_dict"].items()}
    torch.save(state, zeroed)
    paths = [spec for _, spec in space_points(config)]
    run = config.run_config(config.base.model)
    scorer = PathScorer(run, [zeroed, snapshot], paths, bn_batches=1, val_images=32)
    floor = ((scorer.val_labels == 0).float().mean().item() - chance) / (1 - chance)
    assert PathScorer(run, [zeroed], paths, bn_batches=1, val_images=32).score(paths[1], "auc") == pytest.approx(floor)
    expected = (floor + along[f"[{', '.join(s.describe() for s in paths[1].stages)}]"]) / 2
    assert scorer.score(paths[1], "auc") == pytest.approx(expected)
    assert score_name(auc) == "one-shot val/acc1_auc"

    # resumed: nothing left to do in any phase
    again = run_lab("study", "run", str(path), "--runs", str(runs), "--no-live", timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(study.get_trials()) == 5 and len(load(runs, "oneshot").get_trials()) == 3
