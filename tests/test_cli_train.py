"""`lab.py train`: a tiny run end to end, and exit code 2 with one line for every kind of bad input."""

from __future__ import annotations

import json

import pytest

from xvol_lab.cli.main import main
from xvol_lab.models import BackboneSpec
from xvol_lab.tasks.config import load_run_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(root) -> list[str]:
    return [f"--set=data.root={root}", "--set=data.image_size=16", "--set=data.num_classes=4",
            "--set=data.num_train=64", "--set=data.num_val=32", "--set=data.batch_size=16",
            "--set=data.num_workers=0", "--set=model.width_mult=0.125", "--set=trainer.accelerator=cpu",
            "--set=trainer.log_every_n_steps=2", "--no-progress"]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_writes_the_run_and_prints_the_metrics(tmp_path, capsys):
    spec = BackboneSpec.preset("resnet18", stem="small", width_mult=0.5).with_stage(4, op="xvol_pssa")
    (tmp_path / "arch.json").write_text(spec.to_json())
    (tmp_path / "cfg.yaml").write_text("seed: 7\noptim: {name: adamw, lr: 0.002}\n")
    run_dir = tmp_path / "run"
    code, out, err = run_main(capsys, "train", "--config", str(tmp_path / "cfg.yaml"), "--arch",
                              str(tmp_path / "arch.json"), "--run-dir", str(run_dir), "--max-epochs", "2",
                              "--precision", "64-true", *tiny(tmp_path / "data"))
    assert code == 0, err
    config = load_run_config(run_dir / "config.yaml")
    # file < arch < flags < --set
    assert config.seed == 7 and config.optim.lr == 0.002 and config.trainer.max_epochs == 2
    assert config.trainer.precision == "64-true"
    assert config.model == BackboneSpec.from_dict({**spec.to_dict(), "width_mult": 0.125})
    result = json.loads((run_dir / "results.json").read_text())
    assert result["epochs"] == 2.0
    assert out.splitlines()[0] == f"run: {run_dir}"
    assert f"  val/acc1: {result['val/acc1']:.4f}" in out.splitlines()


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--config FILE", "--arch SPEC.json", "--set KEY=VALUE", "--run-dir DIR",
                   "--resume CKPT|last",
                   "--devices N", "--strategy {auto,ddp,ddp_find_unused_parameters_true}",
                   "--precision {32-true,bf16-mixed,16-mixed,64-true}", "--max-epochs N", "--no-progress",
                   "runs/train/<timestamp>"):
        assert option in text, option


@pytest.mark.parametrize("argv, message", [
    (["--set", "optim.lrr=1"],
     "--set optim.lrr=1: optim.lrr: unknown key; expected one of name, lr, momentum,"),
    (["--set", "trainer.max_epochs=two"],
     "--set trainer.max_epochs=two: trainer.max_epochs: got 'two', expected an integer"),
    (["--set", "nothing"], "--set 'nothing': expected key=value"),
    (["--set", "trainer.no_such_arg=1"], "--set trainer.no_such_arg=1: trainer.no_such_arg: unknown key; expected "
                                         "a field of the trainer section or an argument of lightning.Trainer"),
    (["--set", "trainer.logger=false"], "--set trainer.logger=false: trainer.logger: set by the lab, not by a "
                                        "config: the lab logs to metrics.csv and tb/ in the run folder"),
    (["--set", "trainer.max_steps=ten"],
     "--set trainer.max_steps=ten: trainer.max_steps: got 'ten', expected an integer"),
    (["--max-epochs", "0"],
     "--max-epochs trainer.max_epochs=0: trainer.max_epochs: got 0, expected an integer"),
    (["--config", "cfg.yaml"], "cfg.yaml: optim.lr: got 'x', expected a number"),
    (["--config", "missing.yaml"], "missing.yaml: cannot read YAML file (No such file or directory)"),
    (["--arch", "arch.json"], "arch.json: invalid JSON: "),
    (["--resume", "last"], "--resume last: needs --run-dir (the run to continue)"),
    (["--resume", "nope.ckpt", "--run-dir", "r"], "resume: nope.ckpt: no such checkpoint"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text("optim:\n  lr: x\n")
    (tmp_path / "arch.json").write_text('{"block": "basic",')
    code, out, err = run_main(capsys, "train", *argv)
    assert code == 2
    assert err.startswith(f"lab.py: error: {message}")
    assert err.count("\n") == 1 and out == ""
    assert not (tmp_path / "r").exists() and not (tmp_path / "runs").exists()


def test_any_lightning_trainer_argument_passes_through(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = run_main(capsys, "train", "--run-dir", str(run_dir), "--set", "trainer.fast_dev_run=true",
                              *tiny(tmp_path / "data"))
    assert code == 0, err
    assert load_run_config(run_dir / "config.yaml").trainer.extra == {"fast_dev_run": True}
    assert "  fast_dev_run: true\n" in (run_dir / "config.yaml").read_text()
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 1.0  # one batch each, one epoch
    assert not (run_dir / "checkpoints").exists()  # fast_dev_run: Lightning saves no checkpoint


def test_bad_choice_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--precision", "8-bit"])
    assert exit_.value.code == 2
    assert "argument --precision: invalid choice: '8-bit'" in capsys.readouterr().err


def test_diverging_run_exits_1_with_the_reason(tmp_path, capsys):
    code, out, err = run_main(capsys, "train", "--run-dir", str(tmp_path / "run"), "--max-epochs", "1",
                              "--set", "optim.lr=1.0e+30", "--set", "optim.warmup_epochs=0",
                              *tiny(tmp_path / "data"))
    assert code == 1
    last = err.splitlines()[-1]
    assert last.startswith(f"lab.py train: {tmp_path / 'run'}: the run diverged: "
                           "train/loss is nan at epoch 0, step ")
    assert not (tmp_path / "run" / "results.json").exists()
