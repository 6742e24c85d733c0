"""`lab.py train`: a tiny run end to end, and exit code 2 with one line for every kind of bad input."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

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
    (tmp_path / "cfg.yaml").write_text("seed: 7\noptim: {name: adamw, lr: 0.002}\ntrainer: {threads: 2}\n")
    threads = torch.get_num_threads()
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
    # trained on trainer.threads, recorded in the fingerprint; the process's count restored after
    assert json.loads((run_dir / "fingerprint.json").read_text())["threads"] == 2
    assert torch.get_num_threads() == threads
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
                           "train/loss is nan at epoch 1, step ")
    assert not (tmp_path / "run" / "results.json").exists()


# Non-default data and optimiser settings; a constant rate after the warmup, so that one epoch then
# one more trains exactly what two epochs in a row do (a cosine decays over max_epochs).
STORED = ["--set", "data.num_train=48", "optim.lr=0.05", "optim.warmup_epochs=0.5", "optim.schedule=constant"]


def weights(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def test_resume_trains_the_stored_config_and_ends_as_an_uninterrupted_run(tmp_path, capsys):
    data = tmp_path / "data"
    code, _, err = run_main(capsys, "train", "--run-dir", str(tmp_path / "straight"), "--max-epochs", "2",
                            *tiny(data), *STORED)
    assert code == 0, err
    run_dir = tmp_path / "run"
    code, _, err = run_main(capsys, "train", "--run-dir", str(run_dir), "--max-epochs", "1", *tiny(data), *STORED)
    assert code == 0, err
    stored = (run_dir / "config.yaml").read_bytes()
    # no --set: the run's config.yaml, not the defaults (2000 images, lr 0.1, cosine), is trained
    code, out, err = run_main(capsys, "train", "--run-dir", str(run_dir), "--resume", "last", "--max-epochs", "2",
                              "--no-progress")
    assert code == 0, err
    assert (run_dir / "config.yaml").read_bytes() == stored
    assert json.loads((run_dir / "results.json").read_text())["epochs"] == 2.0
    straight, resumed = weights(tmp_path / "straight"), weights(run_dir)
    assert straight.keys() == resumed.keys()
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    steps = [int(row.split(",")[0] or -1) for row in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert 0 < max(steps) < 8  # 2 epochs of 48 / 16 = 3 steps, not 2000 images' 125


def test_resume_refuses_a_changed_key_with_one_line_each_and_writes_nothing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run_main(capsys, "train", "--run-dir", str(run_dir), "--max-epochs", "1",
                            *tiny(tmp_path / "data"), *STORED)
    assert code == 0, err
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    last = run_dir / "checkpoints" / "last.ckpt"
    code, out, err = run_main(capsys, "train", "--run-dir", str(run_dir), "--resume", "last", "--max-epochs", "2",
                              "--set", "optim.lr=0.1", "model.stage3.op=xvol_pssa", "--no-progress")
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines == [
        f"lab.py: error: --resume {last}: model.stage3.op: stored 'conv' ({run_dir / 'config.yaml'}), given "
        "'xvol_pssa'; a resumed run keeps its config (it may change trainer.max_epochs, trainer.threads, and "
        "trainer.devices, "
        "trainer.strategy, trainer.num_nodes from an epoch-end checkpoint)",
        f"lab.py: error: --resume {last}: optim.lr: stored 0.05 ({run_dir / 'config.yaml'}), given 0.1; "
        "a resumed run keeps its config (it may change trainer.max_epochs, trainer.threads, and trainer.devices, "
        "trainer.strategy, trainer.num_nodes from an epoch-end checkpoint)"]
    code, out, err = run_main(capsys, "train", "--run-dir", str(run_dir), "--resume", "last",
                              "--set", "data.num_train=2000", "--no-progress")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "data.num_train: stored 48" in err and "given 2000" in err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    # what a resume may change: the epochs and the CPU threads (the resolved config, printed; nothing written)
    code, out, err = run_main(capsys, "train", "--run-dir", str(run_dir), "--resume", "last", "--max-epochs", "3",
                              "--set", "trainer.threads=2", "--print-config")
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["trainer"]["max_epochs"] == 3 and printed["data"]["num_train"] == 48
    assert printed["trainer"]["threads"] == 2
    assert printed["optim"]["schedule"] == "constant"
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_print_config_prints_the_resolved_config_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "train", "--set", "model.stage3.op=xvol_pssa", "optim.lr=0.02",
                              "--max-epochs", "3", "--print-config")
    assert code == 0, err
    assert load_run_config(None, ["model.stage3.op=xvol_pssa", "optim.lr=0.02", "trainer.max_epochs=3"]) \
        == load_run_config_text(out)
    assert list(tmp_path.iterdir()) == []


def load_run_config_text(text: str):
    from xvol_lab.schema import from_dict
    from xvol_lab.tasks.config import RunConfig
    return from_dict(RunConfig, yaml.safe_load(text))


def test_a_stale_zero_based_stage_key_is_one_line_with_the_paper_spelling(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "train", "--set", "model.stages.2.op=xvol_pssa", "--max-epochs", "1")
    assert code == 2 and out == ""
    assert err == ("lab.py: error: --set model.stages.2.op=xvol_pssa: model.stages.2.op: stages are numbered "
                   "1..4 as in the paper; write model.stage3.op\n")
    assert list(tmp_path.iterdir()) == []
