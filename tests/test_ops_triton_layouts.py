"""The Triton PSSA kernels under Triton's interpreter (CPU tensors) against the composite path: NCHW and
channels-last tensors and 3C-projection channel chunks read and written in place, float32/bf16/fp16,
stride 1/2, heads 1-4, dirs 4/8, every autotune config; and no tensor built from host data per call.

The interpreter runs each kernel program in Python: the cases cover each value of every axis once
(a covering design, four cases) rather than their product, which would take ten minutes here."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("triton")

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from _host_copies import HostTensorCount
    from xvol_lab.ops import pssa_taps
    from xvol_lab.ops.attention_functions import pixel_shift_attention
    from xvol_lab.ops.kernels.pssa_triton import CONFIGS, pssa_bwd_triton, pssa_fwd_triton
    from xvol_lab.ops.kernels.schemas import flat_taps

    F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
    CASES = [  # layout, dtype, stride, heads, dirs, shift, config
        ("nchw", F32, 1, 1, 8, 1, 0), ("nhwc", BF16, 2, 2, 4, 2, 1), ("nhwc", F16, 1, 3, 8, 1, 2),
        ("nchw", BF16, 2, 4, 8, 1, 0)]
    TOL = {F32: 1e-5, BF16: 4e-2, F16: 5e-3}
    assert len(CONFIGS) == 3
    torch.manual_seed(0)
    for layout, dtype, stride, heads, dirs, shift, config in CASES:
        fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
        c, (h, w) = 4 * heads, (7, 6)
        ho, wo = -(-h // stride), -(-w // stride)
        taps = pssa_taps(shift, dirs)
        qkv = torch.randn(2, 3 * c, h, w, dtype=torch.float64).contiguous(memory_format=fmt)
        q = qkv[:, :c, ::stride, ::stride].detach().contiguous(memory_format=fmt).requires_grad_()
        k, v = qkv[:, c:2 * c].requires_grad_(), qkv[:, 2 * c:].requires_grad_()  # channel chunks
        base, grad = (torch.randn(2, c, ho, wo, dtype=torch.float64).contiguous(memory_format=fmt)
                      for _ in range(2))
        ref = base + pixel_shift_attention(q, k, v, heads, taps, stride)
        dq_ref, dk_ref, dv_ref = torch.autograd.grad(ref, (q, k, v), grad)
        qkv_d = qkv.to(dtype)  # the kernel's inputs: views of one 3C tensor, as the projection makes them
        q_d, k_d, v_d = q.detach().to(dtype), qkv_d[:, c:2 * c], qkv_d[:, 2 * c:]
        assert k_d.is_contiguous() is False
        with HostTensorCount() as count:
            y = pssa_fwd_triton(q_d, k_d, v_d, base.to(dtype), heads, flat_taps(taps), stride, CONFIGS[config])
            dq, dkv = pssa_bwd_triton(grad.to(dtype), q_d, k_d, v_d, heads, flat_taps(taps), stride,
                                      CONFIGS[config])
        assert count.calls == [], count.calls
        for out in (y, dq, dkv):
            assert out.dtype == dtype and out.is_contiguous(memory_format=fmt), (layout, out.stride())
        tol = TOL[dtype]
        torch.testing.assert_close(y.double(), ref.detach(), atol=tol, rtol=tol)
        torch.testing.assert_close(dq.double(), dq_ref, atol=4 * tol, rtol=4 * tol)
        torch.testing.assert_close(dkv.double(), torch.cat([dk_ref, dv_ref], 1), atol=4 * tol, rtol=4 * tol)
        print("case ok", layout, dtype, stride, heads, dirs, config)
    print("all cases agree")
""")


@pytest.mark.slow  # the interpreter: about a minute of CPU here
def test_triton_kernels_read_and_write_every_layout_in_place_and_match_the_composite_path():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / "tests")], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert out.stdout.count("case ok") == 4 and "all cases agree" in out.stdout
