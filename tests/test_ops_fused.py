"""Fused PSSA kernels against the composite path and the dense reference; dispatch and fallback."""

from __future__ import annotations

import itertools
import logging
import sys

import pytest
import torch

from xvol_lab.ops import create_op, pssa_taps
from xvol_lab.ops.attention_branch import AttentionConfig, AttentionLayer
from xvol_lab.ops.attention_functions import pixel_shift_attention
from xvol_lab.ops.kernels import backends as kernels
from xvol_lab.ops.kernels.projection import project_qkv
from xvol_lab.ops.kernels.pssa_autograd import fused_pixel_shift_attention
from xvol_lab.ops.reference import attention_reference

pytestmark = pytest.mark.skipif(not kernels.cpu_kernels_available(), reason="no C++ toolchain")

# (H, W): tiny images where every pixel is a border one (L=3 leaves only the centre tap on 3x3),
# odd sizes, and sizes large enough for the vector blocks (16 float / 8 double lanes) plus tails. The
# kernels zero-pad planes where many blocks touch a border; 40x37 at L=1 (few border blocks) runs
# unpadded, its border blocks in scalar code.
SIZES = [(3, 3), (9, 7), (20, 19), (40, 37)]
OPTIONS = [(s, L, d, h) for s, L, d, h in itertools.product([1, 2], [1, 2, 3], [4, 8], [1, 2, 4])]


def _inputs(c_in, c, size, dtype, seed=0, base=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c_in, *size, generator=gen, dtype=dtype)
    w = torch.randn(3 * c, c_in, 1, 1, generator=gen, dtype=dtype) / c_in ** 0.5
    b = torch.randn(3 * c, generator=gen, dtype=dtype)
    return x, w, b


def _composite(x, w, b, c, heads, taps, stride, base=None):
    q, k, v = project_qkv(x, w, b, stride)
    y = pixel_shift_attention(q, k, v, heads, taps, stride)
    return y if base is None else base + y


@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
@pytest.mark.parametrize("stride,shift,dirs,heads", OPTIONS)
def test_fused_forward_matches_the_composite_path(stride, shift, dirs, heads, size):
    taps = pssa_taps(shift, dirs)
    for dtype, tol in ((torch.float64, dict(atol=1e-12, rtol=1e-12)),
                       (torch.float32, dict(atol=1e-5, rtol=1e-5))):
        x, w, b = _inputs(5, 8, size, dtype)
        fused = fused_pixel_shift_attention(x, w, b, heads, taps, stride, dtype)
        torch.testing.assert_close(fused, _composite(x, w, b, 8, heads, taps, stride), **tol)


@pytest.mark.parametrize("size", [(9, 7), (20, 19), (40, 37)], ids=["9x7", "20x19", "40x37"])
@pytest.mark.parametrize("stride,shift,dirs,heads", OPTIONS)
def test_fused_gradients_match_the_composite_path(stride, shift, dirs, heads, size):
    taps = pssa_taps(shift, dirs)
    ho, wo = -(-size[0] // stride), -(-size[1] // stride)
    x, w, b = _inputs(5, 8, size, torch.float64)
    base = torch.randn(2, 8, ho, wo, dtype=torch.float64)
    grad = torch.randn(2, 8, ho, wo, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (x, w, b, base)]
    fused = fused_pixel_shift_attention(*leaves[:3], heads, taps, stride, torch.float64, base=leaves[3])
    got = torch.autograd.grad(fused, leaves, grad)
    ref_leaves = [t.clone().requires_grad_(True) for t in (x, w, b, base)]
    ref = _composite(*ref_leaves[:3], 8, heads, taps, stride, base=ref_leaves[3])
    expected = torch.autograd.grad(ref, ref_leaves, grad)
    torch.testing.assert_close(fused, ref, atol=1e-12, rtol=1e-12)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("size", [(3, 3), (9, 7), (20, 19), (12, 16)], ids=["3x3", "9x7", "20x19", "12x16"])
@pytest.mark.parametrize("shift,dirs,heads", [(1, 8, 1), (2, 4, 2), (3, 8, 4)])
def test_strided_ops_on_images_and_on_phase_planes_match_the_composite_path(shift, dirs, heads, size):
    """At stride 2, xvol::pssa_fwd/bwd (k, v as images) and xvol::pssa_fwd/bwd_phased (k, v as phase
    planes, which the layers use on CPU) give the composite path's outputs and q, k, v gradients."""
    from xvol_lab.ops.kernels.projection import phase_image, phase_planes
    from xvol_lab.ops.kernels.schemas import flat_taps

    taps = pssa_taps(shift, dirs)
    gen = torch.Generator().manual_seed(0)
    ho, wo = -(-size[0] // 2), -(-size[1] // 2)
    q = torch.randn(2, 8, ho, wo, generator=gen, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 8, *size, generator=gen, dtype=torch.float64, requires_grad=True) for _ in "kv")
    grad = torch.randn(2, 8, ho, wo, generator=gen, dtype=torch.float64)
    ref = pixel_shift_attention(q, k, v, heads, taps, 2)
    expected = torch.autograd.grad(ref, (q, k, v), grad)
    tol = dict(atol=1e-12, rtol=1e-12)
    ops, flat = torch.ops.xvol, flat_taps(taps)
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    kp, vp = phase_planes(kd, 2), phase_planes(vd, 2)
    assert kp.shape == (2, 8, 4 * ho, wo)
    torch.testing.assert_close(phase_image(kp, size, 2), kd, atol=0, rtol=0)
    torch.testing.assert_close(ops.pssa_fwd(qd, kd, vd, None, heads, flat, 2), ref, **tol)
    torch.testing.assert_close(ops.pssa_fwd_phased(qd, kp, vp, None, heads, flat, 2, list(size)), ref, **tol)
    dq, dkv = ops.pssa_bwd(grad, qd, kd, vd, heads, flat, 2)
    dq_p, dkv_p = ops.pssa_bwd_phased(grad, qd, kp, vp, heads, flat, 2, list(size))
    for got_q, got_kv in ((dq, dkv), (dq_p, phase_image(dkv_p, size, 2))):
        torch.testing.assert_close(got_q, expected[0], **tol)
        torch.testing.assert_close(got_kv, torch.cat(expected[1:], 1), **tol)


@pytest.mark.parametrize("shift,dirs,heads", [(1, 8, 2), (3, 4, 1)])
def test_strided_layer_on_images_matches_the_composite_path(shift, dirs, heads, monkeypatch):
    """The strided layer as CUDA runs it (k and v projected as images, xvol::pssa_fwd/bwd), here on CPU:
    forward and gradients in float64, odd and even sizes."""
    from xvol_lab.ops.kernels import pssa_autograd

    monkeypatch.setattr(pssa_autograd, "_uses_phase_planes", lambda x, stride: False)
    taps = pssa_taps(shift, dirs)
    for size in ((9, 7), (12, 16)):
        x, w, b = _inputs(5, 8, size, torch.float64)
        leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
        fused = fused_pixel_shift_attention(*leaves, heads, taps, 2, torch.float64)
        ref_leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
        ref = _composite(*ref_leaves, 8, heads, taps, 2)
        torch.testing.assert_close(fused, ref, atol=1e-12, rtol=1e-12)
        grad = torch.randn_like(ref)
        for g, e in zip(torch.autograd.grad(fused, leaves, grad), torch.autograd.grad(ref, ref_leaves, grad),
                        strict=True):
            torch.testing.assert_close(g, e, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("limit", [0, 1 << 20], ids=["recompute", "keep"])
@pytest.mark.parametrize("stride,shift,dirs", [(1, 1, 8), (1, 2, 4), (2, 1, 8), (2, 3, 4)])
def test_fused_gradcheck(stride, shift, dirs, limit, monkeypatch):
    from xvol_lab.ops.kernels import pssa_autograd

    monkeypatch.setattr(pssa_autograd, "SAVE_QKV_MAX_BYTES", limit)  # q, k, v recomputed in backward, or kept
    x, w, b = _inputs(3, 4, (5, 6), torch.float64, seed=1)
    args = [t.requires_grad_(True) for t in (x, w, b)]
    taps = pssa_taps(shift, dirs)
    assert torch.autograd.gradcheck(
        lambda x, w, b: fused_pixel_shift_attention(x, w, b, 2, taps, stride, torch.float64), args)


@pytest.mark.parametrize("stride,stack", [(1, 2), (2, 3)])
def test_stacked_op_matches_the_dense_reference(stride, stack):
    torch.manual_seed(0)
    op = create_op("pssa", 4, 8, stride, heads=2, shift=2, stack=stack).double()
    x = torch.randn(2, 4, 11, 10, dtype=torch.float64)
    y = op.attn(x)
    ref = x
    for layer in op.attn:
        ref = attention_reference(layer, ref)
    torch.testing.assert_close(y, ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("limit", [0, 1 << 20], ids=["recompute", "keep"])
def test_training_saves_the_layer_input_and_small_qkv_only(limit, monkeypatch):
    """The fused layer keeps x and the weights for backward, never shifted copies; q, k, v too when they
    fit SAVE_QKV_MAX_BYTES, else the backward recomputes them. Both give the same gradients, bit for bit."""
    from xvol_lab.ops.kernels import pssa_autograd

    torch.manual_seed(0)
    layer = AttentionLayer(8, 16, 1, AttentionConfig("pssa", 2))
    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    qkv = 3 * 2 * 16 * 12 * 12
    assert qkv * 4 <= 1 << 20
    monkeypatch.setattr(pssa_autograd, "SAVE_QKV_MAX_BYTES", limit)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    assert sum(t.numel() for t in saved) == x.numel() + layer.qkv.weight.numel() + (qkv if limit else 0)
    grads = torch.autograd.grad(y.square().sum(), [x, layer.qkv.weight])
    monkeypatch.setattr(pssa_autograd, "SAVE_QKV_MAX_BYTES", limit ^ (1 << 20))  # the other policy
    other = torch.autograd.grad(layer(x).square().sum(), [x, layer.qkv.weight])
    for g, o in zip(grads, other, strict=True):
        assert torch.equal(g, o)


def test_dispatch_picks_the_fastest_available_backend(monkeypatch):
    assert kernels.pssa_backend("cpu", torch.float32) == "cpu"
    assert kernels.pssa_backend("cpu", torch.float64) == "cpu"
    assert kernels.pssa_backend("cpu", torch.bfloat16) == "torch"
    monkeypatch.setattr(kernels, "triton_kernels_available", lambda: True)
    assert kernels.pssa_backend("cuda", torch.bfloat16) == "triton"
    assert kernels.pssa_backend("cuda", torch.float32) == "triton"
    assert kernels.pssa_backend("cuda", torch.float64) == "torch"
    monkeypatch.setattr(kernels, "triton_kernels_available", lambda: False)
    assert kernels.pssa_backend("cuda", torch.float16) == "torch"
    assert kernels.pssa_backend("meta", torch.float32) == "torch"


def _fused_calls(fn) -> int:
    """How many times `fn()` runs the fused forward kernel."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == "xvol::pssa_fwd")


def test_create_op_runs_the_dispatched_kernel_by_default():
    op = create_op("xvol_pssa", 4, 8)
    x = torch.randn(1, 4, 6, 6)
    assert _fused_calls(lambda: op(x)) == 1
    assert _fused_calls(lambda: op.double()(x.double())) == 1
    op.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _fused_calls(lambda: op(x)) == 0  # CPU bf16: the composite path
        assert op(x).dtype == torch.bfloat16


def test_build_failure_falls_back_with_one_warning(monkeypatch, caplog):
    import torch.utils.cpp_extension as cpp_extension

    def no_compiler(**kwargs):
        raise RuntimeError("Error building extension: g++ not found")

    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.setattr(kernels, "_AVAILABLE", {})
    try:
        with caplog.at_level(logging.WARNING, logger="xvol_lab.ops.kernels.backends"):
            assert kernels.pssa_backend("cpu", torch.float32) == "torch"
            assert kernels.pssa_backend("cpu", torch.float64) == "torch"
        assert len(caplog.records) == 1 and "g++ not found" in caplog.records[0].getMessage()
        y = create_op("pssa", 4, 8)(torch.randn(1, 4, 5, 5))  # the composite path, no crash
        assert y.shape == (1, 8, 5, 5)
    finally:
        monkeypatch.undo()
    assert kernels.cpu_kernels_available()


_AVX2_CHECK = """
import torch
from tests.test_ops_fused import OPTIONS, _composite, _inputs
from xvol_lab.ops import pssa_taps
from xvol_lab.ops.kernels.pssa_autograd import fused_pixel_shift_attention
from xvol_lab.ops.kernels.backends import _cpu_build_flags, pssa_backend

assert pssa_backend("cpu", torch.float64) == "cpu" and "avx2" in _cpu_build_flags()[0]
from tests.test_ops_conv1x1 import SHAPES, _operands
for shape in SHAPES:  # the projections' kernel: lanes past an image's end loaded one by one
    x, w, b = _operands(*shape, torch.float64)
    torch.testing.assert_close(torch.ops.xvol.conv1x1(x, w, b), torch.nn.functional.conv2d(x, w, b),
                               atol=1e-12, rtol=1e-12)
    for part in torch.ops.xvol.conv1x1_split(x, w.repeat(3, 1, 1, 1), b.repeat(3), 3):
        torch.testing.assert_close(part, torch.nn.functional.conv2d(x, w, b), atol=1e-12, rtol=1e-12)
for stride, shift, dirs, heads in OPTIONS[::5]:
    for size in ((3, 3), (20, 19)):
        taps = pssa_taps(shift, dirs)
        leaves = [t.requires_grad_() for t in _inputs(5, 8, size, torch.float64)]
        ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
        fused = fused_pixel_shift_attention(*leaves, heads, taps, stride, torch.float64)
        ref = _composite(*ref_leaves, 8, heads, taps, stride)
        torch.testing.assert_close(fused, ref, atol=1e-12, rtol=1e-12)
        for g, e in zip(torch.autograd.grad(fused.sum(), leaves), torch.autograd.grad(ref.sum(), ref_leaves)):
            torch.testing.assert_close(g, e, atol=1e-11, rtol=1e-11)
print("checked")
"""


def test_kernels_built_without_avx512_match_the_composite_path():
    """Builds for CPUs without AVX-512 load the lanes of a plane's end blocks one by one instead of by
    masked loads: built here for AVX2 (torch's ATEN_CPU_CAPABILITY), forward and gradients in float64."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", _AVX2_CHECK], env=env, cwd=root, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("checked")


def test_fused_op_compiles_in_one_graph():
    """trainer.compile: dynamo traces the fused layer (dispatch decided outside the graph) without a break."""
    torch.manual_seed(0)
    op = create_op("xvol_pssa", 4, 8, 2)
    x = torch.randn(2, 4, 9, 8, requires_grad=True)
    expected = op(x)
    (grad,) = torch.autograd.grad(expected.square().sum(), x)
    compiled = torch.compile(op, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(torch.autograd.grad(y.square().sum(), x)[0], grad)


@pytest.mark.parametrize("stride,bias", [(1, True), (2, True), (2, False)])
def test_projection_equals_plain_1x1_convolutions(stride, bias):
    """project_qkv (xvol::conv1x1 on CPU, one convolution per tensor) computes W_q x on the stride
    grid and W_k x, W_v x at full size, forward and gradients, in float64 within 1e-12."""
    x, w, b = _inputs(5, 8, (9, 7), torch.float64)
    b = b if bias else None
    leaves = [t.clone().requires_grad_() for t in (x, w)]
    got = project_qkv(*leaves, b, stride)
    ref_leaves = [t.clone().requires_grad_() for t in (x, w)]
    xr, wr = ref_leaves
    bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
    expected = (torch.nn.functional.conv2d(xr[:, :, ::stride, ::stride], wr[:8], bq),
                torch.nn.functional.conv2d(xr, wr[8:16], bk), torch.nn.functional.conv2d(xr, wr[16:], bv))
    tol = dict(atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got, expected, **tol)
    assert all(t.is_contiguous() for t in got)
    grads = [torch.randn_like(t) for t in got]
    torch.testing.assert_close(torch.autograd.grad(got, leaves, grads),
                               torch.autograd.grad(expected, ref_leaves, grads), **tol)


def test_kernel_build_name_is_keyed_by_the_environment(monkeypatch):
    """Two virtual environments sharing torch's extension cache (same torch version, same sources)
    each get their own build: one never rebuilds, nor loads, the other's."""
    here = kernels._cpu_build_flags()
    assert kernels._cpu_build_flags() == here  # stable within one environment
    monkeypatch.setattr(sys, "prefix", sys.prefix + "-other-venv")
    other = kernels._cpu_build_flags()
    assert other[0] != here[0] and other[1] == here[1]
    assert other[0].rsplit("_", 1)[0] == here[0].rsplit("_", 1)[0]  # same ISA, another digest
