"""FLOP counts: torchvision's ResNet figures for all-conv specs, and PSSA's products counted by hand."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from xvol_lab.models import BackboneSpec, build_classifier
from xvol_lab.models.cost import EXTRA_FLOPS, count_flops
from xvol_lab.ops import create_op, reparameterize


def test_all_conv_resnet_counts_like_torchvision():
    ours = build_classifier(BackboneSpec.preset("resnet18"), 1000)
    theirs = torchvision.models.resnet18()
    assert count_flops(ours, (1, 3, 64, 64)) == count_flops(theirs, (1, 3, 64, 64))


@pytest.mark.parametrize("limit", [0, 1 << 20], ids=["recompute", "keep"])
def test_pssa_flops_by_hand_fused_kernels(limit, monkeypatch):
    """Training runs the projection once more in backward when q, k, v are recomputed, not when kept."""
    monkeypatch.setattr("xvol_lab.ops.kernels.pssa_autograd.SAVE_QKV_MAX_BYTES", limit)
    c_in, c, h, w, taps = 8, 16, 6, 5, 9
    op = create_op("pssa", c_in, c, heads=2)
    n = h * w
    projections = 2 * c_in * 3 * c * n
    assert count_flops(op, (1, c_in, h, w)) == projections + 4 * taps * c * n
    x = torch.randn(1, c_in, h, w, requires_grad=True)
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOPS)
    with counter:
        op.attn(x).sum().backward()
    backward = 10 * taps * c * n + 2 * projections  # fused backward; input and weight gradients
    forward = projections * (2 if limit == 0 else 1)
    assert counter.get_total_flops() == forward + 4 * taps * c * n + (c * n - 1) + backward


def test_strided_pssa_flops_by_hand_fused_kernels():
    """Stride 2 on CPU: q projected on the 3x3 grid, k and v on the phase planes of the 5x6 input
    (2*2 planes of 3x3: 36 pixels, the odd height padded), the phased kernel on 9 output pixels."""
    c_in, c, taps = 8, 16, 9
    op = create_op("pssa", c_in, c, 2, heads=2)
    nq, nkv = 3 * 3, 2 * 2 * 3 * 3
    assert count_flops(op, (1, c_in, 5, 6)) == 2 * c_in * c * (nq + 2 * nkv) + 4 * taps * c * nq


def test_pssa_flops_by_hand_composite_path(monkeypatch):
    monkeypatch.setattr("xvol_lab.ops.attention_branch.pssa_backend", lambda device, dtype: "torch")
    c_in, c, h, w, taps = 8, 16, 6, 5, 9
    op = create_op("pssa", c_in, c, heads=2).eval()
    n = h * w
    projections = 2 * c_in * 3 * c * n  # the q/k/v 1x1 convolutions
    logits = c * n + taps * (c * n + (c - 2) * n)  # scale q; per tap: product, sum over d (2 heads)
    aggregate = c * n + (taps - 1) * 2 * c * n  # first product, then fused multiply-adds
    assert count_flops(op, (1, c_in, h, w)) == projections + logits + aggregate


def test_deploy_form_costs_the_same_as_train_form():
    """BatchNorm is not counted; the merge moves the branch sum into the fused multiply-adds."""
    spec = BackboneSpec.preset("resnet18", width_mult=0.25, stem="small").with_stage(3, op="xvol_pssa")
    model = build_classifier(spec, 10)
    train, deploy = count_flops(model, (1, 3, 32, 32)), count_flops(reparameterize(model), (1, 3, 32, 32))
    assert abs(deploy - train) / train < 0.01
    assert model.training and torch.is_grad_enabled()  # the count leaves the model as it was


def test_global_attention_flops_on_cpu_flash_kernel():
    """Contiguous SDPA runs the CPU flash kernel; its product FLOPs are counted, not 0."""
    c_in, c, h, w, heads = 8, 16, 6, 5, 2
    op = create_op("sa", c_in, c, heads=heads).eval()
    n = h * w
    projections = 2 * c_in * 3 * c * n
    attention = 2 * (2 * heads * n * n * (c // heads))  # q k^T and a v, 2 FLOPs per multiply-add
    assert count_flops(op, (1, c_in, h, w)) == projections + attention
