"""One short training run (module fixture) checked from every side: learning, files, checkpoints,
the LR actually used per step, resume, deploy export, and divergence reporting."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil

import lightning.pytorch as L
import pytest
import torch
import yaml
from _helpers import assert_close_scaled
from lightning.pytorch.callbacks import Callback

from xvol_lab.data import build_datamodule
from xvol_lab.models import BackboneSpec
from xvol_lab.ops import OPS, ReparamOp
from xvol_lab.schema import to_dict
from xvol_lab.tasks import (
    TRAIN_LOSS,
    VAL_ACC1,
    VAL_ACC5,
    VAL_LOSS,
    NonFiniteLossError,
    export_deploy,
    fit,
    load_deploy,
)
from xvol_lab.tasks.classification import ClassificationTask
from xvol_lab.tasks.config import RunConfig, load_run_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

LR = 3e-3
STEPS_PER_EPOCH = 1024 // 32
EPOCHS = 3


def tiny_config(root, *overrides: str) -> RunConfig:
    """4 classes of 16 px shapes, 1024 train images in batches of 32, resnet18 at width 0.125
    with X-volution (PSSA) in stage 3, AdamW with one warmup epoch then cosine."""
    return load_run_config(None, [
        f"data.root={root}", "data.image_size=16", "data.num_classes=4", "data.num_train=1024",
        "data.num_val=128", "data.batch_size=32", "data.num_workers=0", "model.width_mult=0.125",
        "model.stage3.op=xvol_pssa", "optim.name=adamw", f"optim.lr={LR}", "optim.weight_decay=0.01",
        "trainer.accelerator=cpu", f"trainer.max_epochs={EPOCHS}", "trainer.log_every_n_steps=8", *overrides])


class Recorder(Callback):
    """Records the LR of every optimiser step, the epochs started, and the eval-mode logits of a
    fixed probe batch after each validation (what the checkpoint of that epoch must reproduce)."""

    def __init__(self, probe: torch.Tensor) -> None:
        self.probe = probe
        self.lrs: list[float] = []
        self.epochs_started: list[int] = []
        self.logits: dict[int, torch.Tensor] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epochs_started.append(trainer.current_epoch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            with torch.no_grad():
                self.logits[trainer.current_epoch] = pl_module(self.probe).clone()


def val_batches(config: RunConfig) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dm = build_datamodule(config.data)
    dm.prepare_data()
    dm.setup("fit")
    return [dm.on_after_batch_transfer(batch, 0) for batch in dm.val_dataloader()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    config = tiny_config(root / "data")
    probe = val_batches(config)[0][0]
    recorder = Recorder(probe)
    result = fit(config, root / "run", callbacks=[recorder], progress=False)
    return config, root / "run", result, recorder


def csv_rows(run_dir) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def epoch_values(rows, key: str) -> dict[int, float]:
    return {int(r["epoch"]): float(r[key]) for r in rows if r.get(key)}


def test_short_run_lowers_the_loss_and_beats_chance(trained):
    config, run_dir, result, _ = trained
    losses = epoch_values(csv_rows(run_dir), f"{TRAIN_LOSS}_epoch")
    assert sorted(losses) == list(range(1, EPOCHS + 1))  # epochs counted from 1, as the bar and logs count
    assert losses[EPOCHS] < losses[1] - 0.2, losses
    assert result[VAL_ACC1] >= 0.25 + 0.1  # 4 balanced classes: chance is 0.25
    assert result[VAL_ACC5] == 1.0  # top-5 is clipped to the 4 classes


def test_fit_returns_the_best_epoch_and_writes_the_run_files(trained):
    config, run_dir, result, _ = trained
    val_acc = epoch_values(csv_rows(run_dir), VAL_ACC1)
    best = max(val_acc, key=lambda e: (val_acc[e], -e))
    assert result["best_epoch"] == best and result["epochs"] == EPOCHS  # one numbering: metrics.csv's
    assert result[VAL_ACC1] == pytest.approx(val_acc[best])
    assert result[VAL_LOSS] == pytest.approx(epoch_values(csv_rows(run_dir), VAL_LOSS)[best])
    assert result[TRAIN_LOSS] == pytest.approx(epoch_values(csv_rows(run_dir), f"{TRAIN_LOSS}_epoch")[best])
    assert all(isinstance(v, float) for v in result.values())
    assert json.loads((run_dir / "results.json").read_text()) == result
    assert load_run_config(run_dir / "config.yaml") == config
    assert BackboneSpec.from_json((run_dir / "spec.json").read_text()) == config.model
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert yaml.safe_load((run_dir / "hparams.yaml").read_text())["spec"] == to_dict(config.model)


def test_lr_follows_warmup_then_cosine_per_step(trained):
    _, _, _, recorder = trained
    lrs = recorder.lrs
    assert len(lrs) == EPOCHS * STEPS_PER_EPOCH
    # warmup over the first epoch (32 steps): (step + 1) / 32; then cosine over the other 64 steps
    assert lrs[0] == pytest.approx(LR / 32)
    assert lrs[15] == pytest.approx(LR * 16 / 32)
    assert lrs[31] == pytest.approx(LR)
    assert lrs[32] == pytest.approx(LR)
    assert lrs[64] == pytest.approx(LR * 0.5)  # half way through the cosine
    assert lrs[95] == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi * 63 / 64)))


def test_load_from_checkpoint_rebuilds_architecture_and_outputs(trained):
    config, run_dir, result, recorder = trained
    task = ClassificationTask.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    assert task.spec == config.model
    layer3_ops = [type(m) for m in task.model.backbone.layer3.modules() if isinstance(m, ReparamOp)]
    assert layer3_ops and set(layer3_ops) == {OPS["xvol_pssa"]}
    reference = ClassificationTask(to_dict(config.model), 4, to_dict(config.optim))
    assert [(n, p.shape) for n, p in task.named_parameters()] == \
        [(n, p.shape) for n, p in reference.named_parameters()]
    with torch.no_grad():
        logits = task.eval()(recorder.probe)
    best_epoch = int(result["best_epoch"]) - 1
    torch.testing.assert_close(logits, recorder.logits[best_epoch], rtol=0, atol=0)
    assert not torch.equal(logits, recorder.logits[(best_epoch + 1) % EPOCHS])


def test_export_deploy_gives_the_same_predictions(trained, tmp_path):
    config, run_dir, _, _ = trained
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    path = export_deploy(ckpt, tmp_path / "deploy" / "model.pt")
    assert path == tmp_path / "deploy" / "model.pt" and path.is_file()
    deployed = load_deploy(path)
    ops = [m for m in deployed.modules() if isinstance(m, ReparamOp)]
    assert ops and all(op.deploy for op in ops)
    assert not deployed.training
    trained_model = ClassificationTask.load_from_checkpoint(ckpt, map_location="cpu").model.eval()
    n_train = sum(p.numel() for p in trained_model.parameters())
    assert sum(p.numel() for p in deployed.parameters()) < n_train  # BatchNorms folded away
    trained_ops = {n: m for n, m in trained_model.named_modules() if isinstance(m, ReparamOp)}
    deployed_ops = dict(deployed.named_modules())
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, args, out, n=n: inputs.__setitem__(n, args[0]))
             for n, m in trained_ops.items()]
    with torch.no_grad():
        for images, _ in val_batches(config):
            expected, actual = trained_model(images), deployed(images)
            assert torch.equal(actual.argmax(1), expected.argmax(1))  # the spec: the same predictions
            # Each merge within the spec's bound on this network's own activations ...
            for name, op in trained_ops.items():
                assert_close_scaled(deployed_ops[name](inputs[name]), op(inputs[name]), 1e-5)
            # ... which compound over the 16 ops, the stem and the head (2.6e-5 measured on one run).
            assert_close_scaled(actual, expected, 1e-4)
    for hook in hooks:
        hook.remove()


def test_resume_from_last_continues_at_the_next_epoch(trained, tmp_path):
    config, run_dir, result, _ = trained
    resumed_dir = tmp_path / "run"
    shutil.copytree(run_dir, resumed_dir)
    longer = dataclasses.replace(config.trainer, max_epochs=EPOCHS + 1)  # the one key a resume changes here
    config = dataclasses.replace(config, trainer=longer)
    stored = (resumed_dir / "config.yaml").read_bytes()
    recorder = Recorder(torch.zeros(1, 3, 16, 16))
    resumed = fit(config, resumed_dir, callbacks=[recorder], progress=False, resume="last")
    assert recorder.epochs_started == [EPOCHS]
    assert len(recorder.lrs) == STEPS_PER_EPOCH
    assert resumed["epochs"] == EPOCHS + 1
    rows = csv_rows(resumed_dir)
    # the epochs logged before the resume are kept, each once, and the new one is appended
    assert sorted(epoch_values(rows, VAL_ACC1)) == list(range(1, EPOCHS + 2))
    assert len([r for r in rows if r.get(VAL_ACC1)]) == EPOCHS + 1
    # the best epoch is chosen over the whole history, including the epochs before the resume
    val_acc = epoch_values(rows, VAL_ACC1)
    assert resumed[VAL_ACC1] == pytest.approx(max(val_acc.values()))
    assert torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == \
        (EPOCHS + 1) * STEPS_PER_EPOCH
    assert (resumed_dir / "config.yaml").read_bytes() == stored  # never rewritten


class PoisonWeights(Callback):
    """Sets one weight to NaN before optimiser step `step`, so that step's loss is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.fc.weight[0, 0] = float("nan")


def test_nan_loss_raises_with_the_step(tmp_path):
    config = tiny_config(tmp_path / "data", "data.num_train=128", "trainer.max_epochs=1",
                         "model.stage3.op=conv")
    with pytest.raises(NonFiniteLossError, match=r"train/loss is nan at epoch 1, step 2"):
        fit(config, tmp_path / "run", callbacks=[PoisonWeights(2)], progress=False)
