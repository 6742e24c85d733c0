"""SegmentationTask: mIoU / pixel accuracy by hand, ignored pixels, and a short run on shapes-seg."""

from __future__ import annotations

import warnings

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from _helpers import gloo_ranks
from lightning.pytorch.callbacks import Callback
from torch.nn import functional as F

from xvol_lab.data import DataConfig
from xvol_lab.data.segmentation import IGNORE_INDEX, ShapesSegDataModule
from xvol_lab.models import BackboneSpec
from xvol_lab.tasks.metrics import TRAIN_LOSS, VAL_LOSS
from xvol_lab.tasks.segmentation import VAL_MIOU, VAL_PIXEL_ACC, SegmentationTask, segmentation_metrics

# Hand-computed example (3 classes, 10 labelled pixels):
#   target      0 0 0 0 1 1 1 2 2 2
#   prediction  0 0 0 1 1 1 2 2 2 0
# class 0: TP 3, FP 1 (the last pixel), FN 1 (4th)  -> IoU 3 / 5 = 0.6
# class 1: TP 2, FP 1 (4th),            FN 1 (7th)  -> IoU 2 / 4 = 0.5
# class 2: TP 2, FP 1 (7th),            FN 1 (last) -> IoU 2 / 4 = 0.5
# mIoU = (0.6 + 0.5 + 0.5) / 3 = 0.5333...; pixel accuracy = 7 / 10
TARGET = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
PREDICTION = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]
MIOU, PIXEL_ACC = (0.6 + 0.5 + 0.5) / 3, 0.7


def logits_of(prediction: list[int], num_classes: int) -> torch.Tensor:
    """Logits (1, C, 1, N) whose argmax is `prediction`."""
    return F.one_hot(torch.tensor(prediction), num_classes).float().T[None, :, None, :] * 5.0


def mask_of(target: list[int]) -> torch.Tensor:
    return torch.tensor(target)[None, None, :]  # (1, 1, N)


def score(pairs: list[tuple[list[int], list[int]]], num_classes: int = 3) -> dict[str, float]:
    metrics = segmentation_metrics(num_classes)
    for prediction, target in pairs:
        metrics.update(logits_of(prediction, num_classes), mask_of(target))
    return {k: float(v) for k, v in metrics.compute().items()}


def test_ground_truth_fed_back_scores_one():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (2, 16, 16), generator=gen)
    target[:, :3] = IGNORE_INDEX
    logits = F.one_hot(target.clamp(max=4), 5).permute(0, 3, 1, 2).float()
    metrics = segmentation_metrics(5)
    metrics.update(logits, target)
    assert {k: float(v) for k, v in metrics.compute().items()} == {VAL_MIOU: 1.0, VAL_PIXEL_ACC: 1.0}


def test_a_known_confusion_gives_the_hand_computed_scores():
    assert score([(PREDICTION, TARGET)]) == pytest.approx({VAL_MIOU: MIOU, VAL_PIXEL_ACC: PIXEL_ACC})
    # accumulated over batches, not averaged per batch (per batch: (0.625 + 1/3) / 2 = 0.479)
    halves = [(PREDICTION[:5], TARGET[:5]), (PREDICTION[5:], TARGET[5:])]
    assert score(halves) == pytest.approx({VAL_MIOU: MIOU, VAL_PIXEL_ACC: PIXEL_ACC})
    # a class absent from both prediction and target does not count in the mean
    assert score([(PREDICTION, TARGET)], num_classes=4)[VAL_MIOU] == pytest.approx(MIOU)


def test_ignored_pixels_count_nowhere():
    wrong = [2, 1, 0, 2, 1]  # predictions at five pixels labelled 255
    with_ignored = score([(PREDICTION + wrong, TARGET + [IGNORE_INDEX] * 5)])
    assert with_ignored == pytest.approx({VAL_MIOU: MIOU, VAL_PIXEL_ACC: PIXEL_ACC})
    task = SegmentationTask(tiny_spec(), 3)
    logits = torch.randn(1, 3, 1, 15, generator=torch.Generator().manual_seed(0))
    target = mask_of(TARGET + [IGNORE_INDEX] * 5)
    labelled = F.cross_entropy(logits[..., :10], target[..., :10])
    torch.testing.assert_close(task.criterion(logits, target), labelled)


def tiny_spec() -> dict:
    return BackboneSpec.preset("resnet18", stem="small", width_mult=0.125).to_dict()


class EpochLosses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.losses.append(float(trainer.callback_metrics[f"{TRAIN_LOSS}_epoch"]))


def confusion_miou(model: torch.nn.Module, dm: ShapesSegDataModule) -> tuple[float, float]:
    """mIoU (over classes present in prediction or target) and pixel accuracy, with numpy."""
    k = dm.num_classes
    confusion = np.zeros((k, k), np.int64)
    with torch.no_grad():
        for batch in dm.val_dataloader():
            images, masks = dm.on_after_batch_transfer(batch, 0)
            pred = model(images).argmax(1)
            keep = masks != IGNORE_INDEX
            np.add.at(confusion, (masks[keep].numpy(), pred[keep].numpy()), 1)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return float((tp[union > 0] / union[union > 0]).mean()), float(tp.sum() / confusion.sum())


@pytest.mark.slow
def test_short_training_run_lowers_the_loss_and_logs_the_metrics(tmp_path):
    cfg = DataConfig(name="shapes-seg", root=str(tmp_path), image_size=32, num_train=48, num_val=16,
                     num_classes=4, batch_size=16, num_workers=0)
    dm = ShapesSegDataModule(cfg)
    optim = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0, "warmup_epochs": 0, "schedule": "constant"}
    L.seed_everything(0, verbose=False)
    task = SegmentationTask(tiny_spec(), dm.num_classes, optim)
    losses = EpochLosses()
    trainer = L.Trainer(max_epochs=5, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[losses])
    trainer.fit(task, datamodule=dm)
    assert len(losses.losses) == 5
    assert losses.losses[-1] < 0.7 * losses.losses[0], losses.losses
    # the logged epoch metrics are those of the whole validation set under the final weights
    task.eval()
    miou, pixel_acc = confusion_miou(task, dm)
    logged = trainer.callback_metrics
    assert float(logged[VAL_MIOU]) == pytest.approx(miou, abs=1e-5)
    assert float(logged[VAL_PIXEL_ACC]) == pytest.approx(pixel_acc, abs=1e-5)
    assert 0 < float(logged[VAL_LOSS]) < losses.losses[0]
    # the checkpoint rebuilds the architecture from its hyper-parameters
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = SegmentationTask.load_from_checkpoint(tmp_path / "last.ckpt", map_location="cpu").eval()
    images, _ = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), task(images))


def validate(task: SegmentationTask, dm: ShapesSegDataModule) -> tuple[int, dict[str, float]]:
    """Run the task's validation step over `dm`'s val loader (no trainer); images seen and metrics."""
    seen = 0
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        for i, batch in enumerate(dm.val_dataloader()):
            images, masks = dm.normalize(batch)
            task.validation_step((images, masks), i)
            seen += len(images)
    metrics = {k: float(v) for k, v in task.val_metrics.compute().items()}
    metrics[VAL_LOSS] = float(task.val_loss_sum.compute() / task.val_pixels.compute())
    return seen, metrics


def _validate_rank(rank: int, cfg: DataConfig) -> tuple[int, dict]:
    class Rank:  # what the loaders read of a 2-process trainer
        accelerator, num_devices, world_size, global_rank = None, 2, 2, rank

    torch.manual_seed(0)
    task = SegmentationTask(tiny_spec(), cfg.num_classes).eval()
    dm = ShapesSegDataModule(cfg)
    dm.setup("validate")
    dm.trainer = Rank()
    return validate(task, dm)  # compute() sums the metric states over both processes


@pytest.mark.slow
def test_two_gloo_processes_validate_each_image_once(tmp_path):
    """9 validation images on 2 processes: 5 + 4 images in batches [2, 2, 1] and [2, 2] (padding would
    repeat one); the synced metrics equal one process's over the whole set."""
    cfg = DataConfig(name="shapes-seg", root=str(tmp_path), image_size=16, num_train=4, num_val=9,
                     num_classes=3, batch_size=2, num_workers=0)
    dm = ShapesSegDataModule(cfg)
    dm.prepare_data()
    dm.setup("validate")
    torch.manual_seed(0)
    expected = validate(SegmentationTask(tiny_spec(), cfg.num_classes).eval(), dm)
    assert expected[0] == 9
    got = gloo_ranks(_validate_rank, cfg)
    assert [seen for seen, _ in got] == [5, 4]
    for _, metrics in got:
        assert metrics == pytest.approx(expected[1], rel=1e-6)
