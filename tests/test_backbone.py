"""Backbone / Classifier: torchvision equivalence, feature_info, every op in every stage, reparameterize."""

from __future__ import annotations

import pytest
import torch
import torchvision
from _helpers import randomize_batchnorm
from torch import nn

from xvol_lab.models import BackboneSpec, Classifier, StageSpec, build_backbone, build_classifier
from xvol_lab.models.blocks import BasicBlock, Bottleneck
from xvol_lab.ops import OPS, ReparamOp, reparameterize


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("name", "expected"), [
    ("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032), ("resnet101", 44_549_160),
])
def test_all_conv_parameter_count_equals_torchvision(name: str, expected: int) -> None:
    ours = build_classifier(BackboneSpec.preset(name), 1000)
    assert n_params(ours) == expected
    assert n_params(getattr(torchvision.models, name)(weights=None)) == expected


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_all_conv_is_torchvision_resnet(name: str) -> None:
    """torchvision's weights copied tensor by tensor in module order give identical logits."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)(weights=None)
    randomize_batchnorm(tv, seed=1)
    ours = build_classifier(BackboneSpec.preset(name), 1000)
    theirs, mine = list(tv.state_dict().items()), list(ours.state_dict().items())
    assert len(mine) == len(theirs)
    for (key, value), (tv_key, tv_value) in zip(mine, theirs, strict=True):
        assert value.shape == tv_value.shape, (key, tv_key)
        assert key.rsplit(".", 1)[1] == tv_key.rsplit(".", 1)[1], (key, tv_key)
    ours.load_state_dict({key: tv_value for (key, _), (_, tv_value) in zip(mine, theirs, strict=True)})
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    tv.eval(), ours.eval()
    with torch.no_grad():
        expected, actual = tv(x), ours(x)
    assert expected.std() > 0.1  # a non-degenerate comparison
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize(("block", "stem", "size", "channels", "reductions"), [
    ("basic", "imagenet", 64, (16, 32, 64, 128), (4, 8, 16, 32)),
    ("basic", "small", 32, (16, 32, 64, 128), (1, 2, 4, 8)),
    ("bottleneck", "imagenet", 64, (64, 128, 256, 512), (4, 8, 16, 32)),
    ("bottleneck", "small", 24, (64, 128, 256, 512), (1, 2, 4, 8)),
])
def test_feature_info_and_forward_features(block: str, stem: str, size: int, channels: tuple,
                                           reductions: tuple) -> None:
    spec = BackboneSpec(block=block, depths=(1, 1, 1, 1), width_mult=0.25, stem=stem, in_chans=2)
    backbone = build_backbone(spec)
    assert backbone.spec is spec
    assert backbone.feature_info == [
        {"num_chs": c, "reduction": r, "module": f"layer{i + 1}"}
        for i, (c, r) in enumerate(zip(channels, reductions, strict=True))]
    assert backbone.num_features == channels[-1] == spec.channels[-1]
    x = torch.randn(2, 2, size, size + 8)
    features = backbone.forward_features(x)
    assert [tuple(f.shape) for f in features] == [  # ceil(H / reduction), as for any 'same' padded conv
        (2, c, -(-size // r), -(-(size + 8) // r)) for c, r in zip(channels, reductions, strict=True)]
    assert torch.equal(backbone(x), features[-1])
    assert backbone.stem.conv.kernel_size == ((7, 7) if stem == "imagenet" else (3, 3))


def stage_ops(layer: nn.Module, op: str) -> list[nn.Module]:
    return [m for m in layer.modules() if type(m) is OPS[op]]


@pytest.mark.parametrize("preset", ["resnet34", "resnet50"])
@pytest.mark.parametrize("op", list(OPS))
def test_op_replaces_every_3x3_conv_of_its_stage(preset: str, op: str) -> None:
    spec = BackboneSpec.preset(preset, width_mult=0.125).with_stage(3, op=op, heads=4, shift=2, dirs=4)
    backbone = build_backbone(spec)
    per_block = 2 if spec.block == "basic" else 1
    for i, depth in enumerate(spec.depths):
        layer = getattr(backbone, f"layer{i + 1}")
        ops = stage_ops(layer, spec.stages[i].op)
        assert len(ops) == depth * per_block
        assert all(isinstance(b, BasicBlock if spec.block == "basic" else Bottleneck) for b in layer)
        first = layer[0].op1 if spec.block == "basic" else layer[0].op2
        assert [o.stride for o in ops] == [1 if i == 0 or o is not first else 2 for o in ops]
        # no KxK (K > 1) convolution is left outside the stage's operators
        inside = {id(m) for o in ops for m in o.modules()}
        assert not [m for m in layer.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
                    and id(m) not in inside]
    for o in stage_ops(backbone.layer3, op):  # the stage's options reach the operator
        for key, value in spec.stages[2].op_kwargs().items():
            assert getattr(o, key) == value


@pytest.mark.parametrize("op", list(OPS))
def test_every_op_in_every_stage_trains(op: str) -> None:
    """Small stem, 32 px: every stage (stride-2 first blocks included) runs, and every parameter learns."""
    spec = BackboneSpec.preset("resnet18", width_mult=0.125, stem="small", stages=(StageSpec(op=op),) * 4)
    torch.manual_seed(0)
    model = build_classifier(spec, 5)
    x = torch.randn(2, 3, 32, 32)
    features = model.backbone.forward_features(x)
    assert [tuple(f.shape) for f in features] == [
        (2, 8, 32, 32), (2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]
    logits = model(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([1, 3])).backward()
    for i in range(4):
        ops = stage_ops(getattr(model.backbone, f"layer{i + 1}"), op)
        assert len(ops) == 4
        for o in ops:
            for name, p in o.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), (i, name)
                assert p.grad.abs().sum() > 0, (i, name)


def test_zero_init_residual_makes_blocks_identity_maps() -> None:
    for preset, op in (("resnet18", "xvol_pssa"), ("resnet50", "sa")):
        spec = BackboneSpec.preset(preset, width_mult=0.125, stem="small").with_stage(2, op=op)
        backbone = build_backbone(spec, zero_init_residual=True).eval()
        block = backbone.layer2[1]  # identity shortcut
        x = torch.randn(2, spec.channels[1], 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(block(x), torch.relu(x))
        assert all(not bn.weight.any() for b in backbone.modules()
                   if isinstance(b, (BasicBlock, Bottleneck)) for bn in b.residual_norms())
        assert build_backbone(spec).layer2[1].residual_norms()[0].weight.min() == 1


def test_init_is_torchvision_like() -> None:
    torch.manual_seed(0)
    backbone = build_backbone(BackboneSpec.preset("resnet18").with_stage(4, op="xvol_sa"))
    conv = backbone.layer3[1].op2.conv.weight.detach()  # 256 x 256 x 3 x 3, kaiming normal, fan_out
    assert abs(float(conv.std()) - (2 / (256 * 9)) ** 0.5) < 0.02 * (2 / (256 * 9)) ** 0.5
    qkv = backbone.layer4[1].op2.attn[0].qkv.weight.detach()  # 1536 x 512 x 1 x 1
    assert abs(float(qkv.std()) - (2 / 1536) ** 0.5) < 0.02 * (2 / 1536) ** 0.5
    bns = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any() for m in bns)


MIXED = {
    # conv / xvol_pssa(L=2, dirs=4) / xvol_sa / pssa
    "resnet18": (StageSpec(), StageSpec(op="xvol_pssa", shift=2, dirs=4), StageSpec(op="xvol_sa"),
                 StageSpec(op="pssa", heads=2)),
    # pssa stacked, xvol_pssa(L=3), global sa in stage 4
    "resnet50": (StageSpec(op="pssa", stack=2), StageSpec(op="xvol_pssa", shift=3, heads=2),
                 StageSpec(op="xvol_sa", heads=4), StageSpec(op="sa", heads=2)),
}


@pytest.mark.parametrize(("preset", "dtype", "gamma", "tol"), [
    ("resnet18", torch.float32, (0.5, 1.5), 1e-5),
    # With BatchNorm weights in (0.5, 1.5), activations grow along resnet50's residual stream to a few
    # hundred, attention logits span ~1e4 and softmax becomes a hard argmax, so float32 rounding alone
    # (train vs deploy form, or float32 vs float64 of the same model) moves logits by ~3e-3 relative:
    # that case is checked in float64, and in float32 with weights in (0.25, 0.75) (activations O(1)).
    ("resnet50", torch.float64, (0.5, 1.5), 1e-9),
    ("resnet50", torch.float32, (0.25, 0.75), 1e-5),
])
def test_reparameterized_classifier_gives_the_same_logits(preset: str, dtype: torch.dtype,
                                                          gamma: tuple[float, float], tol: float) -> None:
    spec = BackboneSpec.preset(preset, width_mult=0.25, stem="small", stages=MIXED[preset])
    torch.manual_seed(0)
    model = build_classifier(spec, 10).to(dtype)
    randomize_batchnorm(model, seed=3, gamma=gamma)
    model.eval()
    deployed = reparameterize(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for o in deployed.modules() if isinstance(o, ReparamOp)
                   for m in o.modules())
    assert all(o.deploy for o in deployed.modules() if isinstance(o, ReparamOp))
    assert not any(o.deploy for o in model.modules() if isinstance(o, ReparamOp))  # original untouched
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4), dtype=dtype)
    with torch.no_grad():
        expected, actual = model(x), deployed(x)
        fresh = build_classifier(spec, 10, deploy=True).to(dtype).eval()
        fresh.load_state_dict(deployed.state_dict())  # a deploy checkpoint loads into a fresh model
        rebuilt = fresh(x)
    assert expected.std() > 0.05  # logits that differ between classes and images
    bound = tol * expected.abs().clamp(min=1)
    assert ((actual - expected).abs() <= bound).all(), float(((actual - expected).abs() / bound).max())
    assert torch.equal(rebuilt, actual)


def test_classifier_rejects_bad_num_classes() -> None:
    with pytest.raises(ValueError, match=r"^num_classes: got 0, expected a positive integer$"):
        Classifier(BackboneSpec(width_mult=0.125), 0)
