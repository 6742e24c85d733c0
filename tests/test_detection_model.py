"""Detectors over the searchable backbone: FPN wiring, stage freezing, options, re-parameterization."""

import re

import pytest
import torch
from _helpers import TINY_DETECTOR, randomize_batchnorm, tiny_detector
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from xvol_lab import reparameterize
from xvol_lab.errors import ConfigError
from xvol_lab.models import BackboneSpec
from xvol_lab.models.detection import TRAINABLE_ORDER, DetectorConfig, build_detector, from_torchvision_keys
from xvol_lab.ops import ReparamOp
from xvol_lab.schema import from_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py



def spec(block: str = "resnet18", **stage3) -> BackboneSpec:
    s = BackboneSpec.preset(block, width_mult=0.125)
    return s.with_stage(3, **stage3) if stage3 else s


@pytest.mark.parametrize("preset", ["resnet18", "resnet50"])
def test_fpn_reads_its_input_channels_from_feature_info(preset):
    s = spec(preset)
    model = build_detector(s, 3, TINY_DETECTOR, masks=False)
    fpn_in = [block[0].in_channels for block in model.backbone.fpn.inner_blocks]
    assert fpn_in == [f["num_chs"] for f in model.backbone.feature_info] == list(s.channels)
    features = model.backbone(torch.rand(1, 3, 64, 64))
    assert list(features) == ["0", "1", "2", "3", "pool"]
    assert [f.shape[-1] for f in features.values()] == [16, 8, 4, 2, 1]  # strides 4..32, then pooled
    assert all(f.shape[1] == TINY_DETECTOR.fpn_channels for f in features.values())


@pytest.mark.parametrize("masks, cls", [(False, FasterRCNN), (True, MaskRCNN)])
def test_num_classes_excludes_the_background(masks, cls):
    model = build_detector(spec(), 5, TINY_DETECTOR, masks=masks)
    assert type(model) is cls
    assert model.roi_heads.box_predictor.cls_score.out_features == 6
    if masks:
        assert model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 6
        assert model.roi_heads.mask_head[0][0].in_channels == TINY_DETECTOR.fpn_channels


# Options given to both sides (torchvision takes them under the same names); the rest are defaults.
SAME = dict(min_size=64, max_size=64, rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100,
            box_score_thresh=0.0, box_detections_per_img=20)


def torchvision_detector(preset: str, masks: bool) -> nn.Module:
    """torchvision's detector on its own ResNet (BatchNorm, all layers trainable: no pretrained weights)."""
    backbone = resnet_fpn_backbone(backbone_name=preset, weights=None, trainable_layers=5,
                                   norm_layer=nn.BatchNorm2d)
    return (MaskRCNN if masks else FasterRCNN)(backbone, num_classes=91, **SAME)


@pytest.mark.parametrize("preset, masks", [("resnet50", True), ("resnet18", False)])
def test_all_conv_detector_is_torchvisions(preset, masks):
    """At the default options the all-conv detector is torchvision's, layer for layer: its weights
    load under renamed keys (strict) and the predictions are identical."""
    torch.manual_seed(0)
    ref = torchvision_detector(preset, masks).eval()
    ours = build_detector(BackboneSpec.preset(preset), 90, DetectorConfig(**SAME), masks=masks).eval()
    ours.load_state_dict(from_torchvision_keys(ref.state_dict()))
    images = list(torch.rand(2, 3, 64, 64))
    with torch.no_grad():
        expected, got = ref(images), ours(images)
    assert sum(len(p["boxes"]) for p in expected) == 40  # box_detections_per_img, both images
    for e, g in zip(expected, got, strict=True):
        assert e.keys() == g.keys() and all(torch.equal(e[k], g[k]) for k in e)
    assert ours.rpn.anchor_generator.sizes == ref.rpn.anchor_generator.sizes


@pytest.mark.parametrize("trainable", [0, 2, 5])
def test_trainable_stages_freeze_like_torchvision(trainable):
    model = build_detector(spec(), 3, tiny_detector(trainable_stages=trainable), masks=False)
    body = model.backbone.body
    trained = set(TRAINABLE_ORDER[:trainable])
    for name, module in body.named_children():
        grads = {p.requires_grad for p in module.parameters()}
        assert grads == {name in trained}, name
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())
    model.train()
    for name, module in body.named_children():
        norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
        assert norms and all(m.training == (name in trained) for m in norms), name
    frozen_stats = {k: v.clone() for k, v in body.state_dict().items()
                    if "running_mean" in k and k.split(".")[0] not in trained}
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 30.0]]), "labels": torch.tensor([1])}] * 2
    model(list(torch.rand(2, 3, 64, 64)), targets)
    after = body.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen_stats.items())
    changed = [k for k, v in after.items() if "running_mean" in k and k.split(".")[0] in trained
               and not torch.equal(v, torch.zeros_like(v))]
    assert bool(changed) == (trainable > 0)


@pytest.mark.parametrize("options, message", [
    ({"trainable_stages": 6}, "trainable_stages: got 6, expected an integer in 0..5"),
    ({"anchor_sizes": (8, 16, 32, 64)}, "anchor_sizes: got (8, 16, 32, 64), expected 5 integers"),
    ({"max_size": 32, "min_size": 64}, "max_size: got 32, expected at least min_size (64)"),
    ({"fpn_channels": 0}, "fpn_channels: got 0, expected an integer >= 1"),
    ({"box_score_thresh": 1.0}, "box_score_thresh: got 1.0, expected a number in [0, 1)"),
])
def test_bad_options_name_the_field(options, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        DetectorConfig(**options)


def test_config_from_dict_names_the_key_path():
    assert from_dict(DetectorConfig, {"anchor_sizes": [4, 8, 16, 32, 64]}).anchor_sizes == (4, 8, 16, 32, 64)
    with pytest.raises(ConfigError, match=r"^detector\.trainable_stages: got -1"):
        from_dict(DetectorConfig, {"trainable_stages": -1}, "detector")
    with pytest.raises(ConfigError, match=r"^detector\.anchor_size: unknown key; expected one of min_size, "):
        from_dict(DetectorConfig, {"anchor_size": [8]}, "detector")  # a misspelt option


@pytest.mark.parametrize("masks", [False, True])
def test_reparameterize_keeps_eval_predictions(masks):
    torch.manual_seed(0)
    model = build_detector(spec(op="xvol_pssa", shift=2), 3, tiny_detector(box_score_thresh=0.0), masks=masks)
    randomize_batchnorm(model.backbone.body)
    model.eval()
    deployed = reparameterize(model)
    assert all(op.deploy for op in deployed.modules() if isinstance(op, ReparamOp))
    assert not any(op.deploy for op in model.modules() if isinstance(op, ReparamOp))
    fresh = build_detector(spec(op="xvol_pssa", shift=2), 3, tiny_detector(box_score_thresh=0.0), masks=masks,
                           deploy=True)
    fresh.load_state_dict(deployed.state_dict())  # a deploy checkpoint loads into a deploy-form build
    images = list(torch.rand(2, 3, 64, 64))
    with torch.no_grad():
        before, after, loaded = model(images), deployed(images), fresh.eval()(images)
    assert sum(len(p["boxes"]) for p in before) >= 10
    for b, a, c in zip(before, after, loaded, strict=True):
        assert all(torch.equal(a[k], c[k]) for k in a)
        assert torch.equal(b["labels"], a["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=0)
        if masks:
            torch.testing.assert_close(a["masks"], b["masks"], atol=1e-4, rtol=0)
