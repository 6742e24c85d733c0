"""DetectionTask: COCO results, COCOeval metrics (vs torchmetrics), DDP gathering, training steps."""

import warnings

import lightning.pytorch as L
import numpy as np
import pytest
import torch
from _helpers import TINY_DETECTOR, gloo_ranks
from lightning.pytorch.callbacks import Callback
from pycocotools import mask as mask_utils
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchmetrics.detection import MeanAveragePrecision

from xvol_lab.data.coco import CocoInstances, collate_lists, detection_transforms
from xvol_lab.data.device import DeviceNormalize
from xvol_lab.data.shapes_coco import ShapesCocoParams, generate_shapes_coco
from xvol_lab.models import BackboneSpec
from xvol_lab.schema import to_dict
from xvol_lab.tasks.coco_eval import (
    broadcast_metrics,
    evaluate,
    gather_results,
    merge_results,
    rescale_prediction,
    to_coco_results,
)
from xvol_lab.tasks.detection import (
    VAL_BOX_AP,
    VAL_BOX_AP50,
    VAL_BOX_AP75,
    VAL_MASK_AP,
    VAL_MASK_AP50,
    DetectionTask,
)

# pycocotools' mask.decode trips a numpy 2 DeprecationWarning (copy keyword) on every call.
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.usefixtures("one_thread")]  # tests/conftest.py

PARAMS = ShapesCocoParams(image_size=64, num_train=8, num_val=8, num_classes=3, seed=0)
TINY = to_dict(TINY_DETECTOR)
SPEC = to_dict(BackboneSpec.preset("resnet18", width_mult=0.125))
BOX_KEYS = {VAL_BOX_AP, VAL_BOX_AP50, VAL_BOX_AP75}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return generate_shapes_coco(tmp_path_factory.mktemp("data"), PARAMS)


def split(folder, name: str, image_size: int = 64) -> CocoInstances:
    return CocoInstances(folder / f"annotations/instances_{name}.json", folder / "images" / name,
                         transforms=detection_transforms(image_size, train=False))


class Replay(nn.Module):
    """Stands in for the detector in validation: returns the given predictions in loader order."""

    def __init__(self, predictions: list[dict]) -> None:
        super().__init__()
        self.predictions = list(predictions)

    def forward(self, images):
        out, self.predictions = self.predictions[:len(images)], self.predictions[len(images):]
        return out


def truth(ds: CocoInstances) -> list[dict]:
    """The loader's own targets as predictions (score 1, masks as soft masks (N, 1, H, W))."""
    return [{"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"])),
             "masks": t["masks"][:, None].float()} for _, t in ds]


def noisy(ds: CocoInstances, seed: int = 0) -> list[dict]:
    """Ground truth with jittered boxes, random scores, misses and false positives."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for p in truth(ds):
        keep = torch.rand(len(p["labels"]), generator=gen) > 0.2
        boxes = p["boxes"][keep] + torch.randn(int(keep.sum()), 4, generator=gen) * 1.5
        extra = torch.rand(2, 2, generator=gen) * 40
        boxes = torch.cat([boxes, torch.cat([extra, extra + 16], 1)]).clamp(0, 64)
        labels = torch.cat([p["labels"][keep], torch.randint(1, 4, (2,), generator=gen)])
        masks = torch.cat([p["masks"][keep], torch.rand(2, 1, 64, 64, generator=gen)])
        out.append({"boxes": boxes, "labels": labels, "scores": torch.rand(len(labels), generator=gen),
                    "masks": masks})
    return out


def validate(task: DetectionTask, ds, batch_size: int = 3) -> dict[str, float]:
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trainer.validate(task, DataLoader(ds, batch_size=batch_size, collate_fn=collate_lists),
                                verbose=False)[0]


@pytest.mark.parametrize("masks", [False, True])
def test_ground_truth_as_predictions_scores_ap_one(folder, masks):
    ds = split(folder, "val")
    task = DetectionTask(SPEC, 3, detector=TINY, masks=masks)
    task.model = Replay(truth(ds))
    metrics = validate(task, ds)
    expected = BOX_KEYS | ({VAL_MASK_AP, VAL_MASK_AP50} if masks else set())
    assert metrics == pytest.approx(dict.fromkeys(expected, 1.0), abs=1e-9)


def test_predictions_are_mapped_back_to_the_annotation_size(folder):
    ds = split(folder, "val", image_size=32)  # the loader halves the images; COCO boxes are at 64 px
    assert next(iter(ds))[0].shape == (3, 32, 32)
    task = DetectionTask(SPEC, 3, detector=TINY)
    task.model = Replay(truth(ds))
    assert validate(task, ds) == pytest.approx(dict.fromkeys(BOX_KEYS, 1.0), abs=1e-9)


def test_logged_ap_agrees_with_torchmetrics(folder):
    ds = split(folder, "val")
    predictions = noisy(ds)
    task = DetectionTask(SPEC, 3, detector=TINY, masks=True)
    task.model = Replay(predictions)
    metrics = validate(task, ds)
    reference = MeanAveragePrecision(iou_type=("bbox", "segm"), backend="pycocotools")
    targets = []
    for image_id in ds.image_ids:
        anns = ds.coco.imgToAnns[image_id]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        targets.append({"boxes": torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1),
                        "labels": torch.tensor([ds.label_of[a["category_id"]] for a in anns]),
                        "masks": torch.from_numpy(np.stack([ds.coco.annToMask(a) for a in anns])).bool(),
                        "area": torch.tensor([float(a["area"]) for a in anns]),
                        "iscrowd": torch.tensor([a["iscrowd"] for a in anns])})
    preds = [{**p, "masks": p["masks"][:, 0] > 0.5} for p in predictions]
    ref = {k: float(v) for k, v in reference(preds, targets).items() if v.numel() == 1}
    assert 0.2 < metrics[VAL_BOX_AP] < 0.8 and 0.2 < metrics[VAL_MASK_AP] < 0.8
    pairs = [(VAL_BOX_AP, "bbox_map"), (VAL_BOX_AP50, "bbox_map_50"), (VAL_BOX_AP75, "bbox_map_75"),
             (VAL_MASK_AP, "segm_map"), (VAL_MASK_AP50, "segm_map_50")]
    for ours, theirs in pairs:
        assert metrics[ours] == pytest.approx(ref[theirs], abs=1e-3), ours


def test_coco_results_of_one_image():
    mask = torch.zeros(2, 1, 10, 12)
    mask[0, 0, 2:5, 3:9] = 0.9
    mask[1, 0, 0:2, 0:2] = 0.4  # below the 0.5 threshold: an empty mask
    prediction = {"boxes": torch.tensor([[3.0, 2.0, 9.0, 5.0], [0.5, 0.0, 2.0, 2.5]]),
                  "labels": torch.tensor([2, 1]), "scores": torch.tensor([0.9, 0.3]), "masks": mask}
    results = to_coco_results(7, prediction, category_ids=[11, 42])
    assert [r["bbox"] for r in results["bbox"]] == [[3.0, 2.0, 6.0, 3.0], [0.5, 0.0, 1.5, 2.5]]
    assert [r["category_id"] for r in results["bbox"]] == [42, 11]
    assert results["bbox"][0]["score"] == pytest.approx(0.9) and results["bbox"][0]["image_id"] == 7
    decoded = mask_utils.decode([r["segmentation"] for r in results["segm"]])  # (H, W, N)
    assert decoded.shape == (10, 12, 2)
    assert np.array_equal(decoded[..., 0], (mask[0, 0] > 0.5).numpy()) and decoded[..., 1].sum() == 0
    assert all("bbox" not in r for r in results["segm"])  # loadRes would rebuild the mask from a bbox
    assert to_coco_results(7, {k: v[:0] for k, v in prediction.items()}, [11, 42]) == {"bbox": [], "segm": []}


def test_rescale_prediction_scales_boxes_and_masks():
    mask = torch.zeros(1, 1, 4, 8)
    mask[0, 0, 1:3, 2:6] = 1.0
    prediction = {"boxes": torch.tensor([[2.0, 1.0, 6.0, 3.0]]), "masks": mask, "scores": torch.ones(1)}
    out = rescale_prediction(prediction, (4, 8), (8, 16))
    torch.testing.assert_close(out["boxes"], torch.tensor([[4.0, 2.0, 12.0, 6.0]]))
    assert out["masks"].shape == (1, 1, 8, 16)
    ys, xs = torch.nonzero(out["masks"][0, 0] > 0.5, as_tuple=True)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (4, 11, 2, 5)
    assert rescale_prediction(prediction, (4, 8), (4, 8))["boxes"] is prediction["boxes"]


def test_padded_duplicates_are_counted_once(folder):
    ds = split(folder, "val")
    results = {t["image_id"]: to_coco_results(t["image_id"], p, ds.category_ids)
               for (_, t), p in zip(ds, noisy(ds), strict=True)}
    ids = sorted(results)
    # Two ranks as DistributedSampler(num_replicas=3) would pad 8 images to 9: image ids[0] twice.
    ranks = [{i: results[i] for i in ids[:3]}, {i: results[i] for i in ids[3:6]},
             {i: results[i] for i in ids[6:] + ids[:1]}]
    merged = merge_results(ranks)
    assert sorted(merged) == ids
    expected = evaluate(ds.coco, results, ("bbox", "segm"))
    assert evaluate(ds.coco, merged, ("bbox", "segm")) == expected
    # Counting the padded copy twice would change the score: duplicates are false positives.
    first = results[ids[0]]
    doubled = {**results, ids[0]: {k: v + v for k, v in first.items()}}
    assert evaluate(ds.coco, doubled, ("bbox",))[VAL_BOX_AP] < expected[VAL_BOX_AP]


def _gather(rank: int, parts: list) -> tuple[bool, dict]:
    merged = gather_results(parts[rank])
    metrics = {"images": float(len(merged)), "first": merged[1]["bbox"][0]["score"]} if rank == 0 else None
    return merged is None, broadcast_metrics(metrics)


@pytest.mark.slow
def test_results_are_gathered_on_rank_zero_and_metrics_broadcast():
    def result(image_id: int, score: float) -> dict:
        return {"bbox": [{"image_id": image_id, "category_id": 1, "bbox": [0, 0, 1, 1], "score": score}]}

    parts = [{1: result(1, 0.5), 2: result(2, 0.5)}, {3: result(3, 0.5), 1: result(1, 0.9)}]  # 1: padding
    assert gloo_ranks(_gather, parts, timeout=60) == [(False, {"images": 3.0, "first": 0.5}),
                                                      (True, {"images": 3.0, "first": 0.5})]


class LossRecorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.parametrize("masks", [False, True])
def test_training_steps_lower_the_summed_loss(folder, masks):
    L.seed_everything(0, verbose=False)
    train = CocoInstances(folder / "annotations/instances_train.json", folder / "images/train")
    task = DetectionTask(SPEC, 3, optim={"lr": 0.02, "warmup_epochs": 0, "schedule": "constant",
                                         "weight_decay": 0.0}, detector=TINY, masks=masks)
    recorder = LossRecorder()
    trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[recorder])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # collate, then what the datamodule does after the transfer (uint8 -> float in [0, 1])
        loader = DataLoader(Subset(train, [0, 1]), batch_size=2,
                            collate_fn=lambda b: DeviceNormalize()(collate_lists(b)))
        trainer.fit(task, loader)
    terms = ["loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"] + ["loss_mask"] * masks
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if not k.endswith(("_step", "_epoch"))}
    assert set(logged) == {"train/loss"} | {f"train/{t}" for t in terms}
    assert all(np.isfinite(v) for v in logged.values()) and len(recorder.losses) == 6
    assert logged["train/loss"] == pytest.approx(sum(logged[f"train/{t}"] for t in terms), rel=1e-5)
    assert np.mean(recorder.losses[-2:]) < 0.7 * recorder.losses[0]
