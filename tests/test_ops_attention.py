"""Fast attention paths against the readable dense references, and what a user can observe."""

from __future__ import annotations

import pytest
import torch

from xvol_lab.ops import create_op, pixel_shift_attention, pssa_taps
from xvol_lab.ops.attention_branch import AttentionConfig, AttentionLayer
from xvol_lab.ops.reference import attention_reference, layer_attention_weights, pssa_neighbourhood


def test_taps():
    assert pssa_taps(2, 8) == ((-2, -2), (-2, 0), (-2, 2), (0, -2), (0, 0), (0, 2), (2, -2), (2, 0), (2, 2))
    assert pssa_taps(3, 4) == ((-3, 0), (0, -3), (0, 0), (0, 3), (3, 0))


def test_neighbourhood_counts_exclude_outside_taps():
    allowed = pssa_neighbourhood(5, 5, 1, pssa_taps(1, 8)).reshape(5, 5, 25)
    counts = allowed.sum(-1)
    assert counts[0, 0] == 4 and counts[0, 2] == 6 and counts[2, 2] == 9


LAYERS = [("pssa", s, L, d, h) for s in (1, 2) for L, d in [(1, 8), (2, 4), (3, 8)] for h in (1, 2, 4)]
LAYERS += [("sa", s, 1, 8, h) for s in (1, 2) for h in (1, 2, 4)]


@pytest.mark.parametrize("mode,stride,shift,dirs,heads", LAYERS)
def test_fast_path_matches_dense_reference(mode, stride, shift, dirs, heads):
    torch.manual_seed(0)
    layer = AttentionLayer(6, 8, stride, AttentionConfig(mode, heads, shift, dirs)).double()
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), attention_reference(layer, x), atol=1e-12, rtol=1e-10)


def test_pssa_weights_sum_to_one_over_valid_taps_only():
    layer = AttentionLayer(4, 8, 1, AttentionConfig("pssa", 2, 2, 8)).double()
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    a = layer.pssa_weights(x)  # (B, heads, T, H, W)
    torch.testing.assert_close(a.sum(2), torch.ones(1, 2, 6, 6, dtype=torch.float64))
    # corner (0, 0) with L=2: only taps (0,0), (0,2), (2,0), (2,2) are inside
    valid = (a[0, :, :, 0, 0] > 0).all(0)
    assert valid.tolist() == [False, False, False, False, True, True, False, True, True]
    dense = layer_attention_weights(layer, x)
    torch.testing.assert_close(dense.sum(-1), torch.ones(1, 2, 36, dtype=torch.float64))


@pytest.mark.parametrize("shift,dirs", [(1, 8), (2, 4), (3, 8)])
def test_pssa_is_local(shift, dirs):
    """stack=1: output at p is unchanged when a pixel outside p + T changes."""
    torch.manual_seed(0)
    op = create_op("pssa", 4, 8, shift=shift, dirs=dirs).eval()
    x = torch.randn(1, 4, 11, 11)
    p = (5, 5)
    neighbours = {(p[0] + ty, p[1] + tx) for ty, tx in pssa_taps(shift, dirs)}
    outside = [(i, j) for i in range(11) for j in range(11) if (i, j) not in neighbours]
    y0 = op(x)[0, :, p[0], p[1]]
    x2 = x.clone()
    for i, j in outside:
        x2[0, :, i, j] = torch.randn(4) * 10
    torch.testing.assert_close(op(x2)[0, :, p[0], p[1]], y0, atol=0, rtol=0)
    x3 = x.clone()
    ty, tx = pssa_taps(shift, dirs)[0]
    x3[0, :, p[0] + ty, p[1] + tx] += 5.0
    assert not torch.allclose(op(x3)[0, :, p[0], p[1]], y0)


def test_sa_is_global():
    torch.manual_seed(0)
    op = create_op("sa", 4, 8).eval()
    x = torch.randn(1, 4, 11, 11)
    y0 = op(x)[0, :, 5, 5]
    x[0, :, 0, 0] += 5.0  # far outside any PSSA neighbourhood
    assert (op(x)[0, :, 5, 5] - y0).abs().max() > 1e-4


def test_stacking_propagates_context():
    """Two stacked PSSA layers reach 2L: the receptive field grows with the stack."""
    torch.manual_seed(0)
    one, two = create_op("pssa", 4, 8, stack=1).eval(), create_op("pssa", 4, 8, stack=2).eval()
    x = torch.randn(1, 4, 9, 9)
    x2 = x.clone()
    x2[0, :, 2, 4] += 5.0  # two rows above the centre (4, 4)
    assert torch.equal(one(x)[0, :, 4, 4], one(x2)[0, :, 4, 4])
    assert not torch.allclose(two(x)[0, :, 4, 4], two(x2)[0, :, 4, 4])


@pytest.mark.parametrize("name", ["pssa", "xvol_pssa", "sa"])
def test_inference_mode_then_training_at_the_same_shape(name):
    """A forward under inference_mode (validate before fit) must not poison any cached tensor."""
    op = create_op(name, 4, 8)
    x = torch.randn(2, 4, 7, 7)
    with torch.inference_mode():
        op(x)
    op(x).sum().backward()
    assert all(p.grad is not None for p in op.parameters())


def test_global_attention_reaches_the_flash_kernel_on_cpu():
    """sa feeds SDPA contiguous (B, heads, N, d): the flash backend accepts it, forward and backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    op = create_op("sa", 4, 8, heads=2)
    x = torch.randn(2, 4, 6, 5, requires_grad=True)
    expected = op(x)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        y = op(x)
        y.sum().backward()
    torch.testing.assert_close(y, expected)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_aggregation_keeps_the_value_dtype():
    """CUDA autocast leaves softmax weights in float32: bf16 values must still give a bf16 output."""
    from xvol_lab.ops.attention_functions import pixel_shift_aggregate

    taps = pssa_taps(1, 8)
    weights = torch.rand(2, 2, len(taps), 5, 5).softmax(2)  # float32
    v = torch.randn(2, 8, 5, 5, dtype=torch.bfloat16)
    y = pixel_shift_aggregate(weights, v, taps, 1)
    assert y.dtype == torch.bfloat16
    expected = pixel_shift_aggregate(weights.double(), v.double(), taps, 1)
    torch.testing.assert_close(y.double(), expected, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("stride", [1, 2])
def test_composite_pssa_takes_channels_last_input_and_matches_nchw(heads, stride):
    """The composite path (bf16 on CPU; float64 or no Triton on CUDA) with channels-last input: it used to
    fail for heads >= 2 (`acc.view`: "view size is not compatible"). Output and gradients equal NCHW's."""
    torch.manual_seed(0)
    op = create_op("pssa", 16, 32, stride, heads=heads).to(torch.bfloat16)
    x = torch.randn(2, 16, 9, 10, dtype=torch.bfloat16)
    outs, grads = [], []
    for fmt in (torch.contiguous_format, torch.channels_last):
        xi = x.detach().contiguous(memory_format=fmt).requires_grad_()
        y = op(xi)
        y.float().square().sum().backward()
        outs.append(y)
        grads.append(xi.grad)
    assert outs[1].shape == (2, 32, -(-9 // stride), -(-10 // stride))
    torch.testing.assert_close(outs[1], outs[0], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(grads[1], grads[0], atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("heads", [2, 4])
def test_pixel_shift_attention_keeps_channels_last_and_matches_nchw_exactly(heads):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 8, 7, 6, dtype=torch.float64) for _ in range(3))
    taps = pssa_taps(1, 8)
    ref = pixel_shift_attention(q, k, v, heads, taps, 1)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (q, k, v)]
    y = pixel_shift_attention(*cl, heads, taps, 1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=1e-12)
