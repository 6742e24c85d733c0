"""The Triton kernels, run on CPU tensors by Triton's interpreter, against the C++ kernels and the
composite path; and (gpu-marked) compiled on CUDA against the CPU reference."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from xvol_lab.ops import create_op
from xvol_lab.ops.kernels import backends as kernels

REPO = Path(__file__).resolve().parents[1]
triton = pytest.importorskip("triton")

INTERPRETED = textwrap.dedent("""
    import torch
    from xvol_lab.ops import pssa_taps
    from xvol_lab.ops.attention_functions import pixel_shift_attention
    from xvol_lab.ops.kernels.schemas import flat_taps
    from xvol_lab.ops.kernels.pssa_triton import pssa_bwd_triton, pssa_fwd_triton

    torch.manual_seed(0)
    cases = [(1, 1, 8, 2, (7, 6)), (2, 3, 4, 1, (6, 7)), (1, 2, 8, 1, (3, 3))]
    for stride, shift, dirs, heads, (h, w) in cases:
        taps = pssa_taps(shift, dirs)
        ho, wo = -(-h // stride), -(-w // stride)
        c = 8
        kv = torch.randn(2, 3 * c, h, w, dtype=torch.float64)
        q = torch.randn(2, c, ho, wo, dtype=torch.float64, requires_grad=True)
        k, v = kv[:, c:2 * c].requires_grad_(), kv[:, 2 * c:].requires_grad_()  # strided channel chunks
        base, grad = (torch.randn(2, c, ho, wo, dtype=torch.float64) for _ in range(2))
        ref = base + pixel_shift_attention(q, k, v, heads, taps, stride)
        dq_ref, dk_ref, dv_ref = torch.autograd.grad(ref, (q, k, v), grad)
        q32, k32, v32 = (t.detach().float() for t in (q, k, v))
        y = pssa_fwd_triton(q32, k32, v32, base.float(), heads, flat_taps(taps), stride)
        dq, dkv = pssa_bwd_triton(grad.float(), q32, k32, v32, heads, flat_taps(taps), stride)
        tol = dict(atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y.double(), ref.detach(), **tol)
        torch.testing.assert_close(dq.double(), dq_ref, **tol)
        torch.testing.assert_close(dkv.double(), torch.cat([dk_ref, dv_ref], 1), **tol)
        q16, k16, v16 = (t.bfloat16() for t in (q32, k32, v32))
        yb = pssa_fwd_triton(q16, k16, v16, None, heads, flat_taps(taps), stride)
        assert yb.dtype == torch.bfloat16
        torch.testing.assert_close(yb.double(), (ref - base).detach(), atol=0.1, rtol=0.05)
    print("triton kernels agree")
""")


def test_triton_kernels_in_the_interpreter_match_the_composite_path():
    """Forward and backward: stride 1/2, L 1-3, dirs 4/8, heads 1/2, a 3x3 image (L=2: only the centre
    tap and borders), strided q/k/v chunks, bf16 in and out."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "triton kernels agree" in out.stdout


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_cuda_dispatch_is_triton():
    assert kernels.pssa_backend("cuda", torch.float32) == "triton"
    assert kernels.pssa_backend("cuda", torch.bfloat16) == "triton"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name,stride,opts", [("pssa", 1, {}), ("pssa", 2, {"shift": 2, "dirs": 4}),
                                              ("xvol_pssa", 1, {"heads": 2}), ("pssa", 1, {"stack": 2}),
                                              ("sa", 1, {}), ("xvol_sa", 2, {"heads": 2})])
def test_cuda_forward_and_backward_match_the_cpu_reference(name, stride, opts, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full float32 in the projections
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    op = create_op(name, 32, 64, stride, **opts).double()
    x = torch.randn(2, 32, 15, 13, dtype=torch.float64, requires_grad=True)
    y = op(x)
    y.square().sum().backward()
    ref_grads = [x.grad.clone()] + [p.grad.clone() for p in op.parameters()]
    op_cuda = op.float().cuda()
    op_cuda.zero_grad()
    xc = x.detach().float().cuda().requires_grad_(True)
    yc = op_cuda(xc)
    yc.square().sum().backward()
    torch.testing.assert_close(yc.double().cpu(), y.detach(), atol=1e-4, rtol=1e-4)
    grads = [xc.grad] + [p.grad for p in op_cuda.parameters()]
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.double().cpu(), r, atol=1e-3, rtol=1e-3)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", ["pssa", "xvol_pssa", "sa", "xvol_sa"])
def test_cuda_bf16_autocast_keeps_bf16_activations(name):
    op = create_op(name, 64, 64).cuda()
    x = torch.randn(4, 64, 28, 28, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = op.attn(x) if hasattr(op, "attn") else op(x)
    assert y.dtype == torch.bfloat16


@pytest.mark.gpu
@needs_cuda
def test_cuda_sa_at_56px_batch_64_fits_the_fused_memory_ceiling():
    """Flash/memory-efficient SDPA: far below the ~2.3 GiB the math path saves per sa layer."""
    op = create_op("sa", 64, 64).cuda()
    x = torch.randn(64, 64, 56, 56, device="cuda", requires_grad=True)
    torch.cuda.synchronize(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    base = torch.cuda.memory_allocated(x.device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = op(x)
    y.float().sum().backward()
    torch.cuda.synchronize(x.device)
    peak = torch.cuda.max_memory_allocated(x.device) - base
    assert peak < 1.0 * 2**30, f"peak {peak / 2**30:.2f} GiB"
