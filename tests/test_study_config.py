"""Study files: every kind of mistake is one exact message, exit code 2, and nothing is created."""

from __future__ import annotations

from pathlib import Path

import pytest

from xvol_lab.cli.main import main
from xvol_lab.errors import ConfigError
from xvol_lab.ops import OPS
from xvol_lab.study.config import STUDIES_DIR, list_study_files, load_study_config

OPS_LIST = "conv, sa, pssa, xvol_sa, xvol_pssa, pointwise"

BAD = [
    # (changes to the tiny study, message after "<file>: ")
    ({"sampler": {"name": "tpe", "seeds": 1}},
     "sampler.seeds: unknown key; expected one of name, seed, n_startup_trials, population_size"),
    ({"budget": {"n_trials": "ten", "epochs": 1}}, "budget.n_trials: got 'ten', expected an integer"),
    ({"space": {"stages": {3: {"op": ["conv", "foo"]}}}},
     f"space.stages.3.op.1: got 'foo', expected one of {OPS_LIST}"),
    ({"space": {"stages": {3: {"op": ["conv", "sa"], "shift": [1, 2]}}}},
     "space.stages.3.shift: no operator in [conv, sa] takes it; expected it only with pssa, xvol_pssa"),
    ({"space": {"stages": {3: {"op": ["pssa"], "dirs": [4, 6]}}}},
     "space.stages.3.dirs.1: got 6, expected 4 or 8"),
    ({"space": {"stages": {5: {"op": ["conv"]}}}}, "space.stages.5: unknown stage; expected 1, 2, 3 or 4"),
    ({"space": {"stages": {3: {"op": ["xvol_sa"], "heads": [3]}}}},
     "space.stages.3.heads.0: got 3, expected a positive divisor of the stage width 32"),
    ({"space": {"place": [0, 2], "stages": {3: {"op": ["pssa"]}}}},
     "space.place.1: got 2, expected a stage listed under stages (3)"),
    ({"objectives": [{"metric": "val/acc", "direction": "maximize"}]},
     "objectives.0.metric: got 'val/acc', expected one of train/loss, train/acc1, val/loss, val/acc1, "
     "val/acc5, val/acc1_auc, val/miou, val/pixel_acc, val/box_ap, val/box_ap50, val/box_ap75, val/mask_ap, "
     "val/mask_ap50, latency_ms, params_m, flops_g, latency_batch_ms"),
    ({"objectives": [{"metric": "val/acc1", "direction": "up"}]},
     "objectives.0.direction: got 'up', expected one of 'maximize', 'minimize'"),
    ({"enqueue": [{"stage3.op": "sa"}]},
     "enqueue.0.stage3.op: got 'sa', expected one of 'conv', 'pssa', 'xvol_pssa'"),
    ({"enqueue": [{"stage3.op": "pssa"}]}, "enqueue.0: missing stage3.shift; expected one of 1, 2"),
    ({"enqueue": [{"stage3.op": "conv", "stage3.shift": 1}]},
     "enqueue.0.stage3.shift: not a parameter of this point; expected only stage3.op"),
    ({"objectives": [{"metric": "val/acc1", "direction": "maximize"},
                     {"metric": "params_m", "direction": "minimize"}], "pruner": {"name": "median"}},
     "pruner.name: got 'median', expected 'none' with several objectives "
     "(Optuna prunes single-objective studies only)"),
    ({"sampler": {"name": "grid"}, "budget": {"n_trials": 9, "epochs": 1}},
     "budget.n_trials: got 9, expected at most 5 (the number of distinct grid points)"),
    ({"budget": {"epochs": 1}},
     "budget.n_trials: got null, expected an integer >= 1 "
     "(only grid studies default to the grid size; sampler is 'tpe')"),
    ({"base": {"model": {"widht_mult": 0.5}}},
     "base.model.widht_mult: unknown key; expected one of block, depths, width_mult, stem, stages, in_chans"),
    ({"base": {"trainer": {"max_epochs": 4}}},
     "base.trainer.max_epochs: set by budget.epochs; expected no value here"),
    ({"heartbeat": 0}, "heartbeat: got 0, expected an integer >= 1 (seconds)"),
    ({"base": {"trainer": {"check_val_every_n_epoch": 2}}, "budget": {"n_trials": 3, "epochs": 3}},
     "base.trainer.check_val_every_n_epoch: got 2, expected a divisor of budget.epochs (3): a trial's values "
     "come from its last epoch's validation"),
    ({"base": {"data": {"num_classes": 4}}, "objectives": [{"metric": "val/acc5", "direction": "maximize"}]},
     "objectives.0.metric: got val/acc5, expected another metric: with 4 classes the top-5 accuracy is 1 by "
     "construction"),
    ({"budget": {"n_trials": 3, "seeds": 0}}, "budget.seeds: got 0, expected an integer >= 1"),
    ({"budget": {"n_trials": 3, "seeds": "two"}}, "budget.seeds: got 'two', expected int or a mapping"),
    ({"budget": {"n_trials": 3, "seeds": {"min": 5, "max": 3}}}, "budget.seeds.min: got 5, expected at most max (3)"),
    ({"budget": {"n_trials": 3, "seeds": {"min": 1, "max": 3}}},
     "budget.seeds.min: got 1, expected at least 2 when max > min (a paired t-test needs 2 seeds)"),
    ({"budget": {"n_trials": 3, "seeds": {"min": 2, "max": 3}}},
     "budget.seeds: expected an all-conv configuration in enqueue or the grid (the baseline every row is "
     "compared with)"),
    ({"controls": {"negative": {"name": "itself"}}},
     "controls: expected an all-conv configuration in enqueue or the grid (the baseline every row is "
     "compared with)"),
    ({"enqueue": [{"stage3.op": "conv"}], "controls": {"positive": {"name": "x", "params": {"stage3.op": "foo"}}}},
     f"controls.positive.params.stage3.op: got 'foo', expected one of {', '.join(OPS)}"),
    ({"enqueue": [{"stage3.op": "conv"}], "controls": {"positive": {"name": "x", "params": {"stage9.op": "sa"}}}},
     "controls.positive.params.stage9.op: unknown key; expected stage<1-4>.<op|kernel_size|heads|shift|dirs|stack>"),
    ({"enqueue": [{"stage3.op": "conv"}], "controls": {"negative": {"name": ""}}},
     "controls.negative.name: got '', expected a short description of the control"),
    ({"enqueue": [{"stage3.op": "conv"}], "controls": {"positive": {"name": "x", "params": {"stage3.op": "sa"},
                                                                    "seeds": 1}}},
     "controls.positive.seeds: got 1, expected an integer >= 2 (a paired t-test needs 2 seeds) or no value (the "
     "baseline's seeds)"),
    ({"enqueue": [{"stage3.op": "conv"}], "budget": {"n_trials": 3, "seeds": 3},
      "controls": {"positive": {"name": "x", "params": {"stage3.op": "sa"}, "seeds": 4}}},
     "controls.positive.seeds: got 4, expected at most budget.seeds (3): the positive control trains the "
     "baseline's first seeds"),
    ({"budget": {"n_trials": 3, "max_retries": -1}}, "budget.max_retries: got -1, expected an integer >= 0"),
    ({"base": {"order_seed": 4}},
     "base.order_seed: got 4, expected null (a trial's runs take their training order from their seeds; the "
     "negative control's from controls.negative.training_order)"),
    ({"enqueue": [{"stage3.op": "conv"}], "controls": {"negative": {"name": "x", "training_order": "own"}}},
     "controls.negative.training_order: got 'own', expected one of 'shared', 'disjoint'"),
    ({"base": {"seed": -1}}, "base.seed: got -1, expected an integer from 0 to 4294967295"),
    ({"base": {"seed": 2**32 - 2}, "budget": {"n_trials": 3, "seeds": 3}},
     "base.seed: got 4294967294, expected an integer from 0 to 4294967293 "
     "(seeds base.seed + 0 .. budget.seeds - 1)"),
]


@pytest.mark.parametrize(("changes", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_study_file_is_one_line_exit_2_and_creates_nothing(tiny_study, tmp_path: Path, capsys, changes,
                                                               message):
    path = tiny_study("bad", **changes)
    code = main(["study", "run", str(path), "--runs", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"lab.py: error: {path}: {message}\n"
    assert not (tmp_path / "runs").exists()


def test_bad_yaml_and_bad_override_and_missing_study(tiny_study, tmp_path: Path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("space: [1, 2\n")
    assert main(["study", "run", str(broken)]) == 2
    assert capsys.readouterr().err.startswith(f"lab.py: error: {broken}: invalid YAML: ")
    path = tiny_study()
    assert main(["study", "run", str(path), "--runs", str(tmp_path / "runs"), "--set", "budget.epoch=2"]) == 2
    assert capsys.readouterr().err == (f"lab.py: error: --set budget.epoch=2: {path}: budget.epoch: unknown "
                                       "key; expected one of n_trials, epochs, seeds, max_retries\n")
    assert main(["study", "run", "no_such_study"]) == 2
    assert capsys.readouterr().err.startswith("lab.py: error: study 'no_such_study': no ")
    assert main(["study", "run", str(path), "--set", "base.trainer.max_epochs=9"]) == 2
    assert "set budget.epochs instead" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_seeds_flag_sets_the_budget_and_bad_values_exit_2(tiny_study, tmp_path: Path, capsys):
    path = tiny_study(base={"seed": 5})
    _, config = load_study_config(path, ["budget.seeds=3"])
    assert (config.budget.seeds, config.seeds, config.n_trials) == (3, [5, 6, 7], 3)  # n_trials: configs
    assert config.run_config(config.base.model, 6).seed == 6
    assert config.run_config(config.base.model).seed == 5
    assert config.run_config(config.base.model, 6).data == config.base.data  # the seed never changes the data
    assert config.identity()["seeds"] == 3 and "seeds" not in load_study_config(path)[1].identity()
    for bad in ("0", "two"):
        with pytest.raises(SystemExit) as exit_:
            main(["study", "run", str(path), "--runs", str(tmp_path / "runs"), "--seeds", bad])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == (
            f"lab.py study run: error: argument --seeds: got {bad if bad == '0' else repr(bad)}, "
            "expected an integer >= 1")
    assert not (tmp_path / "runs").exists()


def test_overrides_scale_a_shipped_study():
    overrides = ["base.data.root=/imagenet", "base.data.name=imagefolder", "base.model.width_mult=1",
                 "budget.epochs=90"]
    name, config = load_study_config("stage_search", overrides)
    assert name == "stage_search"
    assert (config.base.data.name, config.base.data.root, config.base.model.width_mult) == ("imagefolder",
                                                                                             "/imagenet", 1.0)
    run = config.run_config(config.base.model)
    assert run.trainer.max_epochs == 90 and run.model == config.base.model


CLASSIFICATION_STUDIES = ("stage_search", "stage_ablation", "op_ablation", "shift_ablation", "pareto_search")


def test_shipped_classification_studies_and_budgets():
    assert set(CLASSIFICATION_STUDIES) <= {p.stem for p in list_study_files()}
    loaded = {n: load_study_config(n) for n in CLASSIFICATION_STUDIES}
    assert all(name == n and config.description for n, (name, config) in loaded.items())
    sizes = {n: config.n_trials for n, (_, config) in loaded.items()}
    # the ablations: their grid and a positive and a negative control
    assert sizes == {"stage_search": 10, "stage_ablation": 7, "op_ablation": 7, "shift_ablation": 7,
                     "pareto_search": 10}
    _, pareto = load_study_config("pareto_search")
    assert pareto.metric_names == ["val/acc1", "latency_ms", "params_m"]
    assert pareto.directions == ["maximize", "minimize", "minimize"]
    _, search = load_study_config("stage_search")
    assert search.plan == ({f"stage{i}.op": "conv" for i in (1, 2, 3, 4)},)
    assert (search.sampler.name, search.pruner.name) == ("tpe", "median")
    assert search.pruner.n_warmup_steps == 2  # Optuna prunes from step n_warmup_steps: not after epoch 1
    for name in ("op_ablation", "stage_ablation", "shift_ablation"):  # the graded long-range proxy
        config = loaded[name][1]
        assert (config.base.data.name, config.base.data.num_classes) == ("shapes-side", 16)
        assert config.metric_names == ["val/acc1"] and config.budget.max_seeds >= 5
        assert config.controls.positive.params == {"stage3.op": "pointwise", "stage4.op": "pointwise"}
        assert config.controls.negative is not None


def test_resolve_names_and_paths(tmp_path: Path):
    assert load_study_config(STUDIES_DIR / "op_ablation.yaml")[0] == "op_ablation"
    with pytest.raises(ConfigError, match="no such study file"):
        load_study_config(tmp_path / "x.yaml")


@pytest.mark.parametrize(("content", "message"), [
    ("budget: {n_trials: 2}\n".encode("utf-16"), "UTF-16 text; expected a YAML study file saved as UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text (byte 0x89 at offset 0); expected a YAML study file saved as UTF-8"),
    (b"budget:\x00\x01\x02", "binary data (a NUL byte at offset 7); expected a YAML study file saved as UTF-8"),
])
def test_a_study_file_that_is_not_utf8_text_gives_one_line(tmp_path: Path, capsys, content, message):
    """A binary or UTF-16 study file gave an 18-line UnicodeDecodeError traceback, exit code 1."""
    path = tmp_path / "odd.yaml"
    path.write_bytes(content)
    assert main(["study", "run", str(path), "--runs", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err == f"lab.py: error: {path}: {message}\n"
    assert not (tmp_path / "runs").exists()
