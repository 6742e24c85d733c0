"""SemanticFPN: output size, FPN wired from feature_info, scale stages, gradients, reparameterize."""

from __future__ import annotations

import pytest
import torch
from _helpers import randomize_batchnorm
from torch import nn

from xvol_lab.models import BackboneSpec, StageSpec
from xvol_lab.models.semantic_fpn import SemanticFPN, build_semantic_fpn
from xvol_lab.ops import ReparamOp, reparameterize


def tiny(stem: str = "small", block: str = "basic", **changes) -> BackboneSpec:
    preset = "resnet18" if block == "basic" else "resnet50"
    return BackboneSpec.preset(preset, stem=stem, width_mult=0.125, depths=[1, 1, 1, 1], **changes)


@pytest.mark.parametrize(("stem", "size", "finest"), [
    ("small", 16, 16), ("small", 15, 15), ("imagenet", 48, 12), ("imagenet", 50, 13),
])
def test_logits_are_per_pixel_at_input_size_from_the_finest_level(stem, size, finest):
    model = build_semantic_fpn(tiny(stem), 5)
    seen = {}
    model.classifier.register_forward_hook(lambda m, inp, out: seen.update(shape=tuple(inp[0].shape)))
    x = torch.randn(2, 3, size, size + 4)
    out = model(x)
    assert out.shape == (2, 5, size, size + 4)
    # the summed levels sit at the finest level's reduction (4 'imagenet', 1 'small'); odd sizes round up
    assert seen["shape"][2] == finest


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_fpn_inputs_and_scale_stages_follow_feature_info(block):
    model = build_semantic_fpn(tiny(block=block), 3)
    channels = [info["num_chs"] for info in model.backbone.feature_info]
    assert channels == ([8, 16, 32, 64] if block == "basic" else [32, 64, 128, 256])
    assert [b[0].in_channels for b in model.fpn.inner_blocks] == channels
    # level l has max(1, l) conv+GN+ReLU stages: 1x, 2x, 4x, 8x up to the finest level
    assert [len(stages) for stages in model.scale_heads] == [1, 1, 2, 3]
    first = [stages[0][0] for stages in model.scale_heads]
    assert all(conv.in_channels == 32 and conv.out_channels == 16 and conv.kernel_size == (3, 3)
               for conv in first)
    assert model.classifier.in_channels == 16 and model.classifier.out_channels == 3


@pytest.mark.parametrize(("width_mult", "fpn", "head", "groups"), [(1.0, 256, 128, 32), (0.25, 64, 32, 8)])
def test_default_widths_are_the_papers_scaled_by_width_mult(width_mult, fpn, head, groups):
    spec = BackboneSpec.preset("resnet18", width_mult=width_mult, depths=[1, 1, 1, 1])
    model = build_semantic_fpn(spec, 21)
    assert model.fpn_channels == fpn
    norm = model.scale_heads[3][1][1]
    assert isinstance(norm, nn.GroupNorm) and (norm.num_channels, norm.num_groups) == (head, groups)
    assert build_semantic_fpn(spec, 21, fpn_channels=48).scale_heads[0][0][0].out_channels == 24


def test_every_parameter_gets_a_gradient():
    model = build_semantic_fpn(tiny(stages=[StageSpec(), StageSpec(), StageSpec("xvol_pssa"),
                                            StageSpec("xvol_sa")]), 4)
    target = torch.randint(0, 4, (2, 16, 16), generator=torch.Generator().manual_seed(0))
    nn.functional.cross_entropy(model(torch.randn(2, 3, 16, 16)), target).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize(("stem", "size"), [("small", 24), ("imagenet", 48)])
def test_reparameterized_model_gives_the_same_logits(stem, size):
    spec = tiny(stem, stages=[StageSpec("xvol_pssa"), StageSpec("pssa", shift=2), StageSpec("xvol_sa"),
                              StageSpec("xvol_pssa", dirs=4)])
    torch.manual_seed(0)
    model = build_semantic_fpn(spec, 6).double()  # float64: the comparison sees the folding, not rounding
    randomize_batchnorm(model, seed=1)
    nn.init.normal_(model.classifier.weight)  # logits that differ between classes and pixels
    model.eval()
    deployed = reparameterize(model)
    ops = [m for m in deployed.modules() if isinstance(m, ReparamOp)]
    assert len(ops) == 8 and all(op.deploy for op in ops)
    assert not any(m.deploy for m in model.modules() if isinstance(m, ReparamOp))  # original untouched
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        expected, actual = model(x), deployed(x)
        fresh = build_semantic_fpn(spec, 6, deploy=True).double().eval()
        fresh.load_state_dict(deployed.state_dict())  # a deploy checkpoint loads into a fresh model
        rebuilt = fresh(x)
    assert expected.std() > 0.05
    torch.testing.assert_close(actual, expected, atol=1e-9, rtol=1e-9)
    assert torch.equal(rebuilt, actual)


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match=r"^num_classes: got 0, expected a positive integer$"):
        SemanticFPN(tiny(), 0)
    with pytest.raises(ValueError, match=r"^fpn_channels: got 4, expected an integer >= 8 or None$"):
        SemanticFPN(tiny(), 3, fpn_channels=4)
