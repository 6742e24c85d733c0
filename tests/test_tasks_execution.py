"""How a run executes on its hardware, checked on CPU: determinism and SyncBatchNorm resolved for a
(faked) CUDA accelerator, the learning rate scaled to the global batch, the divergence check without
host synchronisation between checks, torch.compile and channels-last giving the eager numbers."""

from __future__ import annotations

import dataclasses
import logging
import math

import lightning.pytorch as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xvol_lab.data import DataConfig
from xvol_lab.errors import ConfigError
from xvol_lab.models import BackboneSpec, build_classifier
from xvol_lab.tasks import NonFiniteLossError, fit
from xvol_lab.tasks.classification import ClassificationTask
from xvol_lab.tasks.config import OptimConfig, RunConfig, TrainerConfig, load_run_config
from xvol_lab.tasks.detection import DetectionTask
from xvol_lab.tasks.execution import deterministic_mode, effective_optim, global_batch, sync_batchnorm

SPEC = BackboneSpec.preset("resnet18", stem="small", width_mult=0.125)
OPTIM = {"lr": 0.05, "warmup_epochs": 0, "schedule": "constant", "weight_decay": 0.0}


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_classifier_head_equals_the_adaptive_average_pool_it_replaces():
    torch.manual_seed(0)
    model = build_classifier(SPEC, 5).double().eval()
    x = torch.randn(3, 3, 20, 24, dtype=torch.float64)
    features = model.backbone(x)
    pooled = nn.Flatten(1)(nn.AdaptiveAvgPool2d(1)(features))
    torch.testing.assert_close(features.mean((2, 3)), pooled, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model(x), model.fc(pooled), rtol=1e-12, atol=1e-12)


def test_deterministic_true_becomes_warn_on_cuda_only(fake_cuda, caplog):
    with caplog.at_level(logging.INFO, logger="xvol_lab.tasks.execution"):
        assert deterministic_mode(TrainerConfig(deterministic=True)) == "warn"  # auto -> CUDA here
        assert deterministic_mode(TrainerConfig(deterministic=True, accelerator="gpu")) == "warn"
        assert deterministic_mode(TrainerConfig(deterministic=True, accelerator="cuda")) == "warn"
    assert len(caplog.records) == 3 and "runs as 'warn'" in caplog.records[0].getMessage()
    assert deterministic_mode(TrainerConfig(deterministic=True, accelerator="cpu")) is True
    assert deterministic_mode(TrainerConfig(deterministic=False, accelerator="cuda")) is False


def test_deterministic_true_stays_true_without_cuda():
    assert deterministic_mode(TrainerConfig(deterministic=True)) is True


def run_config(task: str, **trainer) -> RunConfig:
    data = {"classification": "shapes", "semantic_segmentation": "shapes-seg"}.get(task, "shapes-coco")
    return RunConfig(task=task, data=DataConfig(name=data, batch_size=16, num_classes=3),
                     trainer=TrainerConfig(**trainer))


@pytest.mark.parametrize("task, devices, nodes, expected", [
    ("semantic_segmentation", 2, 1, True), ("detection", 1, 2, True), ("instance_segmentation", -1, 1, True),
    ("semantic_segmentation", 1, 1, False),  # one process: nothing to sync
    ("classification", 8, 1, False),  # large per-GPU batches
])
def test_sync_batchnorm_defaults_on_for_dense_tasks_under_multi_gpu_ddp(fake_cuda, task, devices, nodes,
                                                                         expected):
    assert sync_batchnorm(run_config(task, devices=devices, num_nodes=nodes)) is expected
    assert sync_batchnorm(run_config(task, devices=devices, num_nodes=nodes, sync_batchnorm=False)) is False
    assert sync_batchnorm(run_config(task, devices=devices, num_nodes=nodes, sync_batchnorm=True)) is True


def test_sync_batchnorm_needs_cuda():
    assert sync_batchnorm(run_config("detection", devices=2)) is False  # the default: off on CPU
    expected = (r"^trainer.sync_batchnorm: got true with accelerator 'auto' and no CUDA, expected false or "
                r"null \(SyncBatchNorm runs on CUDA only\)$")
    with pytest.raises(ConfigError, match=expected):
        sync_batchnorm(run_config("detection", devices=2, sync_batchnorm=True))


def test_lr_scaling_rules():
    for rule, factor in (("none", 1.0), ("linear", 2.0), ("sqrt", math.sqrt(2.0))):
        assert OptimConfig(lr=0.1, lr_scaling=rule).scaled_lr(512) == pytest.approx(0.1 * factor)
    assert OptimConfig(lr=0.1, lr_scaling="linear", reference_batch=64).scaled_lr(16) == pytest.approx(0.025)
    config = load_run_config(None, ["data.batch_size=64", "trainer.accumulate_grad_batches=2",
                                    "optim.lr=0.1", "optim.lr_scaling=linear"])
    assert global_batch(config, 8) == 64 * 8 * 2
    scaled = effective_optim(config, 8)
    assert scaled.lr == pytest.approx(0.4) and scaled.lr_scaling == "none"
    assert effective_optim(dataclasses.replace(config, optim=OptimConfig(lr=0.1)), 8).lr == 0.1
    with pytest.raises(ConfigError, match=r"^--set optim.reference_batch=0: optim.reference_batch: got 0, "
                                          r"expected an integer >= 1$"):
        load_run_config(None, ["optim.reference_batch=0"])
    with pytest.raises(ConfigError, match=r"optim.lr_scaling: got 'cubic', expected one of 'none', "):
        load_run_config(None, ["optim.lr_scaling=cubic"])


def random_loader(n: int = 96, batch: int = 8, classes: int = 4) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 16, 16, generator=gen),
                         torch.randint(0, classes, (n,), generator=gen))
    return DataLoader(data, batch_size=batch)


class Poison(Callback):
    """Sets one weight to NaN before optimiser step `step`, so that step's loss (and all later) is NaN."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.last_step = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.last_step = trainer.global_step
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.fc.weight[0, 0] = float("nan")


HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__")


@pytest.mark.parametrize("every, bad_step", [(4, 5), (5, 9)])
def test_nan_is_caught_within_log_every_n_steps_without_host_reads_between(monkeypatch, every, bad_step):
    """A NaN at step k stops the run after step k + every - 1 at the latest; only the checking steps
    read the device (counted by patching every Tensor-to-host conversion while the step hooks run)."""
    L.seed_everything(0, verbose=False)
    task = ClassificationTask(SPEC.to_dict(), 4, OPTIM)
    reads: dict[int, int] = {}
    inside = {"step": None}
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, **kwargs):
            if inside["step"] is not None:
                reads[inside["step"]] = reads.get(inside["step"], 0) + 1
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    for hook in ("training_step", "on_train_batch_end"):
        real_hook = getattr(task, hook)

        def watched(*args, _real=real_hook, **kwargs):
            inside["step"] = args[-1]  # batch_idx: optimiser step index (one epoch, no accumulation)
            try:
                return _real(*args, **kwargs)
            finally:
                inside["step"] = None
        monkeypatch.setattr(task, hook, watched)
    poison = Poison(bad_step)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=every,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[poison])
    expected = (rf"^train/loss is nan at epoch 1, step {bad_step} \(checked every {every} steps, "
                rf"found at step \d+\)$")
    with pytest.raises(NonFiniteLossError, match=expected) as err:
        trainer.fit(task, random_loader())
    found = int(str(err.value).rsplit(" ", 1)[1].rstrip(")"))
    # found: steps completed at the check; the NaN step and at most every - 1 after it ran
    assert bad_step < found <= bad_step + every and poison.last_step == found - 1
    # host reads only at the checks: the steps whose count is a multiple of `every`
    checks = {s for s in range(found) if (s + 1) % every == 0}
    assert set(reads) == checks, reads


def test_compiled_network_gives_the_eager_loss_and_gradients():
    """`trainer.compile` (backend aot_eager here: inductor's C++ build takes minutes on this CPU) and
    channels-last: same loss and gradients as the eager network, same parameter names."""
    torch.manual_seed(0)
    eager = ClassificationTask(SPEC.to_dict(), 4, OPTIM)
    fast = ClassificationTask(SPEC.to_dict(), 4, OPTIM)
    fast.load_state_dict(eager.state_dict())
    fast.prepare_network(channels_last=True, compile_backend="aot_eager")
    assert fast.state_dict().keys() == eager.state_dict().keys()
    assert fast.model.fc.weight.is_contiguous() and \
        fast.model.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    losses = []
    for task in (eager, fast):
        task.train()
        loss = F.cross_entropy(task.model(task.images_in(x)), y)
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for (name, a), (_, b) in zip(eager.model.named_parameters(), fast.model.named_parameters(), strict=True):
        # channels-last convolutions sum in another order: float32 rounding, relative to the largest entry
        scale = float(a.grad.abs().max())
        torch.testing.assert_close(b.grad / scale, a.grad / scale, rtol=0, atol=1e-4, msg=name)


def test_detection_compiles_the_backbone_alone():
    task = DetectionTask(SPEC.to_dict(), 2, OPTIM, detector={"min_size": 32, "max_size": 32})
    task.prepare_network(compile_backend="eager")
    traced: dict[str, bool] = {}
    for name in ("backbone", "rpn", "roi_heads"):
        getattr(task.model, name).register_forward_pre_hook(
            lambda module, args, name=name: traced.__setitem__(name, torch.compiler.is_compiling()))
    task.eval()
    with torch.no_grad():
        task([torch.rand(3, 32, 32)])
    assert traced == {"backbone": True, "rpn": False, "roi_heads": False}


class Lrs(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_fit_runs_compiled_channels_last_with_the_scaled_lr(tmp_path):
    config = load_run_config(None, [
        f"data.root={tmp_path / 'data'}", "data.image_size=16", "data.num_classes=4", "data.num_train=32",
        "data.num_val=8", "data.batch_size=8", "data.num_workers=0", "model.width_mult=0.125",
        "model.depths=[1, 1, 1, 1]", "trainer.accelerator=cpu", "trainer.max_epochs=1",
        "trainer.compile=true", "trainer.compile_backend=eager", "trainer.channels_last=true",
        "optim.lr=0.1", "optim.lr_scaling=sqrt", "optim.reference_batch=32", "optim.warmup_epochs=0",
        "optim.schedule=constant"])
    lrs = Lrs()
    result = fit(config, tmp_path / "run", callbacks=[lrs], progress=False)
    assert lrs.lrs == [pytest.approx(0.05)] * 4  # 0.1 * sqrt(8 / 32), every step
    assert math.isfinite(result["val/loss"]) and result["epochs"] == 1.0
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["optim"]["lr_scaling"] == "sqrt"  # the run's rule, re-applied on resume
    assert not any("_orig_mod" in k for k in saved["state_dict"])


def test_progress_bar_reads_the_metrics_every_log_every_n_steps(monkeypatch):
    from lightning.pytorch.callbacks import RichProgressBar

    from xvol_lab.tasks.callbacks import ProgressBar

    reads = []
    monkeypatch.setattr(RichProgressBar, "get_metrics", lambda self, trainer, module: reads.append(
        (trainer.training, trainer.global_step)) or {"step": trainer.global_step})

    class State:
        training, global_step = True, 0

    bar, trainer = ProgressBar(every=4), State()
    shown = []
    for step in range(10):
        trainer.global_step = step
        shown.append(bar.get_metrics(trainer, None)["step"])
    assert reads == [(True, 0), (True, 4), (True, 8)] and shown == [0, 0, 0, 0, 4, 4, 4, 4, 8, 8]
    trainer.training = False  # validation: always fresh
    assert bar.get_metrics(trainer, None) == {"step": 9} and reads[-1] == (False, 9)
