"""Deploy layers with one head and C_in == C_out fold W_k into the queries: logits <(W_k^T W_q) x(p), x(p+t)>,
one 1x1 projection less, and still within the spec's accuracy."""

from __future__ import annotations

import itertools

import pytest
import torch
from _helpers import assert_close_scaled, randomize_batchnorm

from xvol_lab.ops import create_op, pssa_taps, reparameterize
from xvol_lab.ops import pssa_kernels as kernels
from xvol_lab.ops.attention import pixel_shift_attention
from xvol_lab.ops.pssa_fused import fused_pixel_shift_attention, project_qkv
from xvol_lab.ops.reference import dynamic_conv_reference

FOLDED = [(n, s, L, d) for n, s, L, d in itertools.product(["xvol_pssa", "pssa"], [1, 2], [1, 2, 3], [4, 8])]


def _pair(name, stride, dtype, **opts):
    torch.manual_seed(0)
    op = randomize_batchnorm(create_op(name, 8, 8, stride, **opts)).eval().to(dtype)
    return op, reparameterize(op), torch.randn(2, 8, 9, 7, dtype=dtype) * 2


@pytest.mark.parametrize("name,stride,shift,dirs", FOLDED)
def test_single_head_deploy_folds_the_keys_within_spec(name, stride, shift, dirs):
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-9)):
        op, deployed, x = _pair(name, stride, dtype, heads=1, shift=shift, dirs=dirs)
        layer = deployed.attn[0]
        assert layer.folded and layer.qv.weight.shape == (16, 8, 1, 1) and not hasattr(layer, "qkv")
        with torch.no_grad():
            assert_close_scaled(deployed(x), op(x), tol)
            if name == "xvol_pssa" and dtype == torch.float64:  # W~_v is still the dynamic kernel's basis
                assert_close_scaled(dynamic_conv_reference(deployed, x), op(x), 1e-9)


def test_only_single_head_pssa_layers_with_equal_channels_fold():
    def folded(name, c_in, **opts):
        return [layer.folded for layer in reparameterize(create_op(name, c_in, 8, **opts).eval()).attn]

    assert folded("pssa", 6, heads=1, stack=3) == [False, True, True]  # the first layer maps 6 -> 8
    assert folded("xvol_pssa", 8, heads=2) == [False]
    assert folded("pssa", 8, heads=1) == [True]
    assert folded("sa", 8, heads=1) == [False]
    op, deployed, x = _pair("pssa", 2, torch.float64, heads=1, stack=3, shift=2)
    with torch.no_grad():
        assert_close_scaled(deployed(x), op(x), 1e-9)


def test_folded_deploy_runs_one_projection_less():
    """Static convolution, W_k^T W_q and W_v: three convolutions where the unfolded form runs four."""
    def convolutions(heads):
        _, deployed, x = _pair("xvol_pssa", 1, torch.float32, heads=heads)
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            deployed(x)
        return {e.key: e.count for e in prof.key_averages()}.get("aten::conv2d")

    assert (convolutions(1), convolutions(2)) == (3, 4)


def test_folded_deploy_state_dict_loads_into_a_fresh_deploy_op():
    _, deployed, x = _pair("xvol_pssa", 2, torch.float32, heads=1, shift=2)
    fresh = create_op("xvol_pssa", 8, 8, 2, heads=1, shift=2, deploy=True).eval()
    fresh.load_state_dict(deployed.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), deployed(x), atol=0, rtol=0)


@pytest.mark.skipif(not kernels.cpu_kernels_available(), reason="no C++ toolchain")
@pytest.mark.parametrize("stride,size", [(1, (9, 7)), (1, (20, 19)), (2, (9, 7)), (2, (20, 19))])
def test_folded_fused_layer_matches_the_composite_path(stride, size):
    """Forward and gradients of the fused kernels with k = x against the composite path, in float64."""
    taps = pssa_taps(2, 8)
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=gen, dtype=torch.float64)
               for shape in [(2, 8, *size), (16, 8, 1, 1), (16,)])
    base = torch.randn(2, 8, -(-size[0] // stride), -(-size[1] // stride), generator=gen, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b, base)]
    fused = fused_pixel_shift_attention(*leaves[:3], 1, taps, stride, torch.float64, leaves[3], folded=True)
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, w, b, base)]
    q, k, v = project_qkv(*ref_leaves[:3], stride, folded=True)
    assert k is ref_leaves[0]
    ref = ref_leaves[3] + pixel_shift_attention(q, k, v, 1, taps, stride)
    torch.testing.assert_close(fused, ref, atol=1e-12, rtol=1e-12)
    grad = torch.randn_like(ref)
    for g, e in zip(torch.autograd.grad(fused, leaves, grad), torch.autograd.grad(ref, ref_leaves, grad),
                    strict=True):
        torch.testing.assert_close(g, e, atol=1e-11, rtol=1e-11)
