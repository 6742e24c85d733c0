"""Fused PSSA layer: q/k/v projection + fused pixel-shift attention, saving only the layer input.

The autograd function saves x and the projection weights; the backward recomputes q, k, v (one 1x1
convolution) and runs the fused backward kernel, which recomputes the products per tap. Training then
keeps no (B, C, H, W) tensor per tap, and not even q, k, v: the activation memory is the input's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_input, conv2d_weight

from xvol_lab.ops import pssa_kernels  # noqa: F401 - defines the xvol:: ops
from xvol_lab.ops.pssa_kernels import flat_taps


def project_qkv(x: Tensor, weight: Tensor, bias: Tensor | None, out_chs: int,
                stride: int) -> tuple[Tensor, Tensor, Tensor]:
    """q = W_q x on the stride grid (B, C, H', W'); k = W_k x, v = W_v x at full size (B, C, H, W).

    `weight` (3C, C_in, 1, 1) stacks W_q, W_k, W_v; `bias` (3C) or None.
    """
    c = out_chs
    if stride == 1:
        q, k, v = F.conv2d(x, weight, bias).chunk(3, dim=1)
        return q, k, v
    q = F.conv2d(x[:, :, ::stride, ::stride], weight[:c], None if bias is None else bias[:c])
    k, v = F.conv2d(x, weight[c:], None if bias is None else bias[c:]).chunk(2, dim=1)
    return q, k, v


_MKLDNN = torch.backends.mkldnn.is_available()  # a constant, also inside torch.compile graphs
# oneDNN allocates its working buffers (2-3x the output) on every call. Past about 16 MiB of output
# they exceed what glibc keeps for reuse (its mmap threshold tops out at 32 MiB) and come back as fresh
# pages every call: 64 ch x 56 x 56 x batch 8 (18.4 MiB) took 10944 page faults and 3.3x the time of
# F.conv2d, while up to 9.2 MiB oneDNN ran 1.5-2.9x faster than it (benchmarks/ops.py).
ONEDNN_MAX_OUT_BYTES = 16 << 20


def _conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1x1 convolution without autograd. On CPU in float32, for outputs up to ONEDNN_MAX_OUT_BYTES, it
    calls oneDNN directly: torch's heuristic picks its im2col path for 1x1 kernels with one thread and
    batch < 16, 1.5-2.9x slower there. (Not inside torch.compile, which has no fake kernel for it.)"""
    if x.device.type == "cpu" and x.dtype == torch.float32 and _MKLDNN and not torch.compiler.is_compiling():
        out_bytes = x.shape[0] * weight.shape[0] * x.shape[2] * x.shape[3] * x.element_size()
        if out_bytes <= ONEDNN_MAX_OUT_BYTES:
            return torch.ops.aten.mkldnn_convolution(x, weight, bias, [0, 0], [1, 1], [1, 1], 1)
    return F.conv2d(x, weight, bias)


def _project_fast(x: Tensor, weight: Tensor, bias: Tensor | None, out_chs: int,
                  stride: int) -> tuple[Tensor, Tensor, Tensor]:
    """`project_qkv` for the fused layer, which differentiates it by hand (no autograd needed)."""
    c = out_chs
    if stride == 1:
        q, k, v = _conv1x1(x, weight, bias).chunk(3, dim=1)
        return q, k, v
    q = _conv1x1(x[:, :, ::stride, ::stride], weight[:c], None if bias is None else bias[:c])
    k, v = _conv1x1(x, weight[c:], None if bias is None else bias[c:]).chunk(2, dim=1)
    return q, k, v


def _projection_backward(x: Tensor, weight: Tensor, dq: Tensor, dkv: Tensor, stride: int,
                         bias: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gradients of `project_qkv` for x, weight and (when it has one) bias, given those of q and (k, v)."""
    c = dq.shape[1]
    xs = x if stride == 1 else x[:, :, ::stride, ::stride]
    dx = conv2d_input(x.shape, weight[c:], dkv)
    dxq = conv2d_input(xs.shape, weight[:c], dq)
    if stride == 1:
        dx += dxq
    else:
        dx[:, :, ::stride, ::stride] += dxq
    dw = torch.cat([conv2d_weight(xs, weight[:c].shape, dq), conv2d_weight(x, weight[c:].shape, dkv)])
    return dx, dw, torch.cat([dq.sum((0, 2, 3)), dkv.sum((0, 2, 3))]) if bias else None


class _FusedPSSA(torch.autograd.Function):
    """y = base + PSSA(project_qkv(x)); saves x, weight, bias only."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, base: Tensor | None, out_chs: int,
                heads: int, taps: list[int], stride: int, dtype: torch.dtype) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            q, k, v = _project_fast(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
                                    out_chs, stride)
            y = torch.ops.xvol.pssa_fwd(q, k, v, base, heads, taps, stride)
        ctx.save_for_backward(x, weight, bias)
        ctx.cfg = (out_chs, heads, taps, stride, dtype)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        out_chs, heads, taps, stride, dtype = ctx.cfg
        xc, wc = x.to(dtype), weight.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            q, k, v = _project_fast(xc, wc, None if bias is None else bias.to(dtype), out_chs, stride)
            dq, dkv = torch.ops.xvol.pssa_bwd(grad.to(dtype), q, k, v, heads, taps, stride)
            dx, dw, db = _projection_backward(xc, wc, dq, dkv, stride, bias is not None)
        return (dx.to(x.dtype), dw.to(weight.dtype), None if bias is None else db.to(bias.dtype),
                grad if ctx.needs_input_grad[3] else None, None, None, None, None, None)


def fused_pixel_shift_attention(x: Tensor, weight: Tensor, bias: Tensor | None, out_chs: int, heads: int,
                                taps: tuple[tuple[int, int], ...], stride: int, dtype: torch.dtype,
                                base: Tensor | None = None) -> Tensor:
    """PSSA of one layer with the fused kernels (`dtype`: the projections' compute dtype): (B, C, H', W').

    With `base` (B, C, H', W') the result is base + attention, summed inside the kernel's single pass.
    """
    return _FusedPSSA.apply(x, weight, bias, base, out_chs, heads, flat_taps(taps), stride, dtype)
