"""RunConfig: defaults, YAML loading (partial files merge into the defaults), overrides, and the
one-line errors that name the file, the key and what was expected."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from xvol_lab.errors import ConfigError
from xvol_lab.models import BackboneSpec
from xvol_lab.paths import REPO_ROOT
from xvol_lab.schema import with_overrides
from xvol_lab.tasks.config import (
    OptimConfig,
    RunConfig,
    TrainerConfig,
    dump_run_config,
    load_run_config,
    load_spec,
)


def test_yaml_file_changes_only_its_keys(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("seed: 3\noptim: {lr: 0.01, schedule: step, step_milestones: [2, 4]}\n"
                    "model: {width_mult: 0.5}\ntrainer: {limit_train_batches: 5, limit_val_batches: 0.5}\n")
    config = load_run_config(path)
    default = RunConfig()
    assert config.seed == 3
    assert config.optim == dataclasses.replace(default.optim, lr=0.01, schedule="step",
                                               step_milestones=(2, 4))
    # a partial model section keeps the run defaults (small stem), not BackboneSpec's own defaults
    assert config.model == dataclasses.replace(default.model, width_mult=0.5)
    # an integer limit counts batches, a float is a fraction
    assert config.trainer.limit_train_batches == 5 and isinstance(config.trainer.limit_train_batches, int)
    assert config.trainer.limit_val_batches == 0.5
    assert config.data == default.data


def test_dump_round_trips(tmp_path):
    config = load_run_config(None, ["model.stage3.op=xvol_pssa", "model.stage3.shift=2",
                                    "optim.name=adamw", "trainer.gradient_clip_val=1.0",
                                    "trainer.precision=bf16-mixed"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_run_config(config))
    assert load_run_config(path) == config


def test_no_file_or_an_empty_one_gives_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_run_config(path) == load_run_config() == RunConfig()


@pytest.mark.parametrize("text, message", [
    ("optim: {lr: x}", "cfg.yaml: optim.lr: got 'x', expected a number"),
    ("optim: {lr: -1}", "cfg.yaml: optim.lr: got -1.0, expected a number > 0"),
    ("optimizer: {lr: 1}",
     "cfg.yaml: optimizer: unknown key; expected one of task, seed, order_seed, data, model, optim,"),
    ("trainer: {precision: 8-bit}", "cfg.yaml: trainer.precision: got '8-bit', expected one of '32-true'"),
    ("trainer: {limit_val_batches: 0}",
     "cfg.yaml: trainer.limit_val_batches: got 0, expected an integer >= 1"),
    ("trainer: {limit_train_batches: 1.5}",
     "cfg.yaml: trainer.limit_train_batches: got 1.5, expected a fraction"),
    ("trainer: {threads: 0}", "cfg.yaml: trainer.threads: got 0, expected an integer >= 1 or null (torch's default)"),
    ("trainer: {max_epochs: 2, check_val_every_n_epoch: 3}",
     "cfg.yaml: trainer.check_val_every_n_epoch: got 3, expected at most max_epochs (2)"),
    ("model: {stages: [{op: foo}, {}, {}, {}]}",
     "cfg.yaml: model.stage1.op: got 'foo', expected one of conv"),
    ("task: retrieval", "cfg.yaml: task: got 'retrieval', expected one of 'classification', "
                        "'semantic_segmentation', 'detection', 'instance_segmentation'"),
    ("task: detection\ndata: {name: shapes}", "cfg.yaml: data.name: got 'shapes' for task 'detection', "
                                             "expected one of shapes-coco, coco"),
    ("- 1\n- 2",
     "cfg.yaml: got list, expected a mapping of sections (task, seed, order_seed, data, model, optim, trainer, "
     "detector, init)"),
    ("optim: {lr: [1", "cfg.yaml: invalid YAML: "),
])
def test_bad_file_names_the_file_and_key(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_run_config("cfg.yaml")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError,
                       match=r"^nope.yaml: cannot read YAML file \(No such file or directory\)$"):
        load_run_config("nope.yaml")


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1",
     "--set optim.lrr=1: optim.lrr: unknown key; expected one of name, lr, momentum, nesterov,"),
    ("optim.lr=fast", "--set optim.lr=fast: optim.lr: got 'fast', expected a number"),
    ("model.stage7.op=conv",
     "--set model.stage7.op=conv: model.stage7: unknown stage; expected stage1 .. stage4 (numbered as in the paper)"),
    ("model.stages.2.op=conv",
     "--set model.stages.2.op=conv: model.stages.2.op: stages are numbered 1..4 as in the paper; write "
     "model.stage3.op"),
    ("seed", "--set 'seed': expected key=value"),
])
def test_bad_override_names_key_and_valid_ones(override, message):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, [override])
    assert str(err.value).startswith(message)


def test_overrides_apply_in_order_after_the_arch_file(tmp_path):
    spec = BackboneSpec.preset("resnet34", width_mult=0.125).with_stage(3, op="xvol_sa")
    (tmp_path / "spec.json").write_text(spec.to_json())
    (tmp_path / "cfg.yaml").write_text("model: {width_mult: 0.5}\noptim: {lr: 0.2}\n")
    overrides = ["optim.lr=0.3", "optim.lr=0.4", "model.stage1.op=pssa"]
    config = load_run_config(tmp_path / "cfg.yaml", overrides, arch=tmp_path / "spec.json")
    assert config.optim.lr == 0.4
    assert config.model == spec.with_stage(1, op="pssa")
    assert with_overrides(config, ["trainer.devices=2"], label="--devices").trainer.devices == 2
    with pytest.raises(ConfigError, match=r"^--devices trainer.devices=0: trainer.devices: got 0"):
        with_overrides(config, ["trainer.devices=0"], label="--devices")


def test_spec_file_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ConfigError, match=r"^bad.json: invalid JSON: Expecting property name"):
        load_spec("bad.json")
    (tmp_path / "op.json").write_text('{"stages": [{"op": "deformable"}, {}, {}, {}]}')
    with pytest.raises(ConfigError, match=r"^op.json: stage1.op: got 'deformable', expected one of conv"):
        load_spec("op.json")


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "adamw", "nesterov": True}, "nesterov: got true, expected false unless name is 'sgd'"),
    ({"momentum": 0.0, "nesterov": True}, "nesterov: got true, expected false unless name is 'sgd'"),
    ({"step_milestones": (4, 2)}, "step_milestones: got [4, 2], expected increasing epochs >= 1"),
    ({"label_smoothing": 1.0}, "label_smoothing: got 1.0, expected a number in [0, 1)"),
    ({"step_gamma": 0.0}, "step_gamma: got 0.0, expected a number in (0, 1]"),
])
def test_optim_config_validation(kwargs, message):
    with pytest.raises(ValueError) as err:
        OptimConfig(**kwargs)
    assert str(err.value).startswith(message)


def test_trainer_config_validation():
    assert TrainerConfig(devices=-1).devices == -1
    with pytest.raises(ValueError, match=r"^devices: got 0, expected an integer >= 1 or -1"):
        TrainerConfig(devices=0)
    with pytest.raises(ValueError, match=r"^gradient_clip_val: got 0.0, expected a number > 0 or null"):
        TrainerConfig(gradient_clip_val=0.0)


def test_trainer_section_takes_any_lightning_trainer_argument_typed_by_its_signature(tmp_path):
    (tmp_path / "cfg.yaml").write_text("trainer: {max_epochs: 2, max_steps: 7, profiler: simple, "
                                       "overfit_batches: 2, max_time: {minutes: 5}}\n")
    config = load_run_config(tmp_path / "cfg.yaml", ["trainer.fast_dev_run=3", "trainer.benchmark=true"])
    assert config.trainer.max_epochs == 2  # a declared field stays one
    assert config.trainer.extra == {"max_steps": 7, "profiler": "simple", "overfit_batches": 2,
                                    "max_time": {"minutes": 5}, "fast_dev_run": 3, "benchmark": True}
    assert type(config.trainer.extra["overfit_batches"]) is int  # Union[int, float]: an int stays an int
    (tmp_path / "dump.yaml").write_text(dump_run_config(config))
    assert load_run_config(tmp_path / "dump.yaml") == config  # written beside the declared keys, read back
    assert "extra" not in (tmp_path / "dump.yaml").read_text()


@pytest.mark.parametrize("override, message", [
    ("trainer.no_such_arg=1", "trainer.no_such_arg: unknown key; expected a field of the trainer section or an "
                              "argument of lightning.Trainer"),
    ("trainer.callbacks=[]", "trainer.callbacks: set by the lab, not by a config: the lab sets its own"),
    ("trainer.default_root_dir=/tmp", "trainer.default_root_dir: set by the lab, not by a config: it is the run "
                                      "folder"),
    ("trainer.fast_dev_run=maybe", "trainer.fast_dev_run: got 'maybe', expected int or bool"),
    ("trainer.max_steps=1.5", "trainer.max_steps: got 1.5, expected an integer"),
])
def test_trainer_arguments_the_lab_sets_or_lightning_lacks_are_refused(override, message):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, [override])
    assert str(err.value).startswith(f"--set {override}: {message}")
    with pytest.raises(ValueError, match=r"^max_epochs: given twice"):
        TrainerConfig(extra={"max_epochs": 3})


def test_reading_a_config_without_extra_trainer_arguments_does_not_import_lightning():
    code = ("import sys\nfrom xvol_lab.tasks.config import load_run_config\nload_run_config(None, "
            "['trainer.max_epochs=2'])\nprint('lightning' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["False"]

