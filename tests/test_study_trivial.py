"""`trivial_level`: chance / majority class, all-background mIoU computed by hand, detector AP 0."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xvol_lab.study.config import load_study_config
from xvol_lab.study.trivial import trivial_level


def test_classification_is_the_majority_class_rate(tiny_study):
    objectives = [{"metric": "val/acc1", "direction": "maximize"},
                  {"metric": "val/acc5", "direction": "maximize"},
                  {"metric": "params_m", "direction": "minimize"}]
    _, config = load_study_config(tiny_study(base={"data": {"num_classes": 10, "num_val": 25}},
                                             objectives=objectives, pruner={"name": "none"}))
    # labels 0..9, 0..9, 0..4: classes 0-4 have 3 images, 5-9 have 2
    assert trivial_level(config) == {"val/acc1": pytest.approx(3 / 25), "val/acc5": pytest.approx(15 / 25)}
    _, config = load_study_config(tiny_study(base={"data": {"name": "shapes-context", "image_size": 32,
                                                            "num_classes": 2, "num_val": 1000}}))
    assert trivial_level(config) == {"val/acc1": 0.5}
    objectives = [{"metric": "val/acc1_auc", "direction": "maximize"}, {"metric": "val/acc1", "direction": "maximize"}]
    _, config = load_study_config(tiny_study(base={"data": {"name": "shapes-context", "image_size": 32,
                                                            "num_classes": 2, "num_val": 1000},
                                                   "trainer": {"curve_points": 4}}, objectives=objectives))
    assert trivial_level(config) == {"val/acc1_auc": 0.0, "val/acc1": 0.5}  # the curve rescales chance to 0


def test_segmentation_is_background_everywhere_scored_by_hand(tiny_study, tmp_path):
    data = {"name": "shapes-seg", "num_classes": 4, "num_train": 4, "num_val": 6, "image_size": 16}
    objectives = [{"metric": "val/miou", "direction": "maximize"},
                  {"metric": "val/pixel_acc", "direction": "maximize"}]
    _, config = load_study_config(tiny_study(task="semantic_segmentation",
                                             base={"task": "semantic_segmentation", "data": data},
                                             objectives=objectives))
    levels = trivial_level(config)
    masks = [np.asarray(Image.open(p)) for p in
             sorted(Path(tmp_path / "data" / "shapes-seg").glob("*/masks/val/*.png"))]
    assert len(masks) == 6
    labels = np.concatenate([m.ravel() for m in masks])
    labels = labels[labels != 255]
    background = (labels == 0).mean()
    shapes_present = len(set(labels.tolist()) - {0})
    assert 0 < background < 1 and shapes_present >= 1
    # IoU of background = background pixels / all pixels (predicted everywhere); the shape classes
    # present in the masks score 0; absent ones are left out of the mean
    assert levels["val/miou"] == pytest.approx(background / (1 + shapes_present), abs=1e-6)
    assert levels["val/pixel_acc"] == pytest.approx(background, abs=1e-6)


def test_detection_ap_is_zero_and_measured_objectives_have_none(tiny_study):
    objectives = [{"metric": "val/box_ap", "direction": "maximize"},
                  {"metric": "val/mask_ap", "direction": "maximize"},
                  {"metric": "latency_ms", "direction": "minimize"}]
    _, config = load_study_config(tiny_study(
        task="instance_segmentation",
        base={"task": "instance_segmentation",
              "data": {"name": "shapes-coco", "image_size": 64, "num_classes": 3, "num_train": 4,
                       "num_val": 2}},
        objectives=objectives, pruner={"name": "none"}))
    assert trivial_level(config) == {"val/box_ap": 0.0, "val/mask_ap": 0.0}
