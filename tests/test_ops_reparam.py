"""The deploy merge is exact to the reference's accuracy on its whole grid of options."""

from __future__ import annotations

import itertools

import pytest
import torch
from _helpers import assert_close_scaled, randomize_batchnorm

from xvol_lab.ops import create_op, reparameterize
from xvol_lab.ops.reference import dynamic_conv_reference, dynamic_kernel

GRID = [("xvol_pssa", s, {"shift": L, "dirs": d, "heads": h})
        for s, L, d, h in itertools.product([1, 2], [1, 2, 3], [4, 8], [1, 2, 4])]
GRID += [("xvol_sa", s, {"heads": h}) for s, h in itertools.product([1, 2], [1, 2, 4])]
GRID += [("pssa", s, {"shift": L, "dirs": d, "heads": h})
         for s, L, d, h in itertools.product([1, 2], [1, 3], [4, 8], [1, 4])]
GRID += [("sa", s, {"heads": h}) for s, h in itertools.product([1, 2], [1, 4])]
GRID += [("conv", s, {"kernel_size": k}) for s, k in itertools.product([1, 2], [1, 3, 5])]
GRID += [("pointwise", s, {}) for s in (1, 2)]
IDS = [f"{n}-s{s}-" + "-".join(f"{k}{v}" for k, v in o.items()) for n, s, o in GRID]


def _pair(name, stride, opts, dtype, seed=0):
    torch.manual_seed(seed)
    op = randomize_batchnorm(create_op(name, 6, 8, stride, **opts), seed).eval().to(dtype)
    x = torch.randn(2, 6, 9, 7, dtype=dtype) * 2
    return op, reparameterize(op), x


@pytest.mark.parametrize("name,stride,opts", GRID, ids=IDS)
def test_deploy_fp32_within_spec(name, stride, opts):
    op, deployed, x = _pair(name, stride, opts, torch.float32)
    with torch.no_grad():
        assert_close_scaled(deployed(x), op(x), 1e-5)


@pytest.mark.parametrize("name,stride,opts", GRID, ids=IDS)
def test_deploy_fp64_within_spec(name, stride, opts):
    op, deployed, x = _pair(name, stride, opts, torch.float64)
    with torch.no_grad():
        assert_close_scaled(deployed(x), op(x), 1e-9)


XVOL = [g for g in GRID if g[0].startswith("xvol")]
XVOL_IDS = [i for i, g in zip(IDS, GRID, strict=True) if g in XVOL]


@pytest.mark.parametrize("name,stride,opts", XVOL, ids=XVOL_IDS)
def test_deploy_is_one_dynamic_convolution(name, stride, opts):
    """Materialising K_p and evaluating sum_r K_p[r] x(r) + b reproduces the train form."""
    op, deployed, x = _pair(name, stride, opts, torch.float64)
    with torch.no_grad():
        assert_close_scaled(dynamic_conv_reference(deployed, x), op(x), 1e-9)
    assert {n for n, _ in deployed.named_parameters()} == {"conv.weight", "conv.bias", "attn.0.qkv.weight"}


def test_dynamic_kernel_footprint():
    """K >= 2L+1 keeps the conv's footprint; otherwise the union with the dilated taps."""
    x = torch.randn(1, 2, 9, 9, dtype=torch.float64)
    for k, shift, expected in [(3, 1, {(i, j) for i in range(3, 6) for j in range(3, 6)}),
                               (3, 3, {(i, j) for i in range(3, 6) for j in range(3, 6)}
                                | {(4 + a, 4 + b) for a in (-3, 0, 3) for b in (-3, 0, 3)})]:
        op = randomize_batchnorm(create_op("xvol_pssa", 2, 4, kernel_size=k, shift=shift)).eval().double()
        kernel = dynamic_kernel(reparameterize(op), x)  # (B, N', N, C_out, C_in)
        centre = kernel[0, 4 * 9 + 4].abs().sum((-1, -2)).reshape(9, 9)
        assert {tuple(ij) for ij in (centre > 0).nonzero().tolist()} == expected


@pytest.mark.parametrize("name", ["pssa", "xvol_pssa"])
def test_stacked_deploy_folds_batchnorm_and_keeps_the_stack(name):
    op, deployed, x = _pair(name, 2, {"stack": 3, "shift": 2}, torch.float64)
    assert len(deployed.attn) == 3
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())
    with torch.no_grad():
        assert_close_scaled(deployed(x), op(x), 1e-9)


def test_dynamic_kernel_rejects_train_form():
    with pytest.raises(ValueError, match="deployed X-volution with stack=1"):
        dynamic_kernel(create_op("xvol_pssa", 2, 4), torch.randn(1, 2, 5, 5))


def test_deploy_weights_are_differentiable_functions_of_train_weights():
    op = randomize_batchnorm(create_op("xvol_pssa", 4, 8)).eval()
    state = op.deploy_state_dict()
    state["conv.bias"].sum().backward()
    assert op.bn_conv.bias.grad is not None and op.bn_attn.bias.grad is not None


@pytest.mark.parametrize("stride", [1, 2])
def test_deploy_adds_the_dynamic_part_inside_the_fused_kernel(stride):
    """The deploy form's dynamic part is summed onto the static convolution in the kernel's one pass (at
    stride 2 the phased kernel): no shifted tensor and no separate add; within the spec's tolerance."""
    op, deployed, _ = _pair("xvol_pssa", stride, {"heads": 2}, torch.float32)
    x = torch.randn(2, 6, 20, 19) * 2
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        y = deployed(x)
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("xvol::pssa_fwd" if stride == 1 else "xvol::pssa_fwd_phased") == 1
    assert not {"aten::add", "aten::add_", "aten::addcmul_", "aten::constant_pad_nd"} & set(calls)
    with torch.no_grad():
        assert_close_scaled(y, op(x), 1e-5)



CHANNELS_LAST = [g for g in GRID if g[2] in ({"shift": 3, "dirs": 8, "heads": 4}, {"heads": 4}, {"kernel_size": 3}, {})]


@pytest.mark.parametrize("name,stride,opts", CHANNELS_LAST,
                         ids=[IDS[GRID.index(g)] for g in CHANNELS_LAST])
def test_an_op_held_channels_last_trains_and_deploys_as_the_contiguous_one(name, stride, opts):
    # `trainer.channels_last` (the ablations' setting) stores weights and images channels-last: the
    # training form gives the contiguous output, and its deploy merge stays within the spec
    op, _, x = _pair(name, stride, opts, torch.float32)
    with torch.no_grad():
        expected = op(x)
        op.to(memory_format=torch.channels_last)  # in place, as `TaskModule.prepare_network` does
        x_last = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(op(x_last), expected, atol=1e-5, rtol=1e-5)
        assert_close_scaled(reparameterize(op)(x_last), expected, 1e-5)
