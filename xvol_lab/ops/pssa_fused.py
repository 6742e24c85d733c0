"""Fused PSSA layer: q/k/v projection + fused pixel-shift attention, saving little for backward.

The autograd function saves x and the projection weights; the backward recomputes q, k, v (one 1x1
convolution per tensor) and runs the fused backward kernel, which recomputes the products per tap.
Training then keeps no (B, C, H, W) tensor per tap, and not even q, k, v: the activation memory is
the input's. Small layers, whose q, k, v fit SAVE_QKV_MAX_BYTES, keep them instead of recomputing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xvol_lab.ops import pssa_kernels  # noqa: F401 - defines the xvol:: ops
from xvol_lab.ops.pssa_kernels import flat_taps


def _dilation_1x1(x: Tensor) -> int:
    """Dilation has no effect on a 1x1 kernel, but on CPU it steers torch's convolution dispatch to
    oneDNN, which its heuristic skips for 1x1 kernels with one thread and batch < 16 (im2col + an MKL
    GEMM: the q/k/v projection forward 1.3-2.4x slower on this machine's CPU, benchmarks/ops.py)."""
    return 2 if x.device.type == "cpu" else 1


def conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """A 1x1 convolution (by oneDNN on CPU)."""
    return F.conv2d(x, weight, bias, dilation=_dilation_1x1(x))


def project_qkv(x: Tensor, weight: Tensor, bias: Tensor | None,
                stride: int) -> tuple[Tensor, Tensor, Tensor]:
    """q = W_q x on the stride grid (B, C, H', W'); k = W_k x, v = W_v x at full size (B, C, H, W).

    `weight` (3C, C_in, 1, 1) stacks W_q, W_k, W_v; `bias` (3C) or None. One convolution per tensor,
    each contiguous: oneDNN allocates working buffers of 2-3x its output on every call, and past about
    16 MiB of output glibc hands them back as fresh pages each time unless the process keeps freed
    memory (`xvol_lab.allocator`); the stacked q/k/v of 64 ch x 56 x 56 x batch 8 then took about 4x the
    time of its three thirds.
    """
    xs = x if stride == 1 else x[:, :, ::stride, ::stride]
    w_q, w_k, w_v = weight.chunk(3)
    b_q, b_k, b_v = (None, None, None) if bias is None else bias.chunk(3)
    return conv1x1(xs, w_q, b_q), conv1x1(x, w_k, b_k), conv1x1(x, w_v, b_v)


def _conv1x1_backward(grad: Tensor, x: Tensor, weight: Tensor,
                      bias: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Input, weight and (when it has one) bias gradients of `conv1x1(x, weight, bias)`, in one call."""
    dil = _dilation_1x1(x)
    return torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[0]] if bias else None, [1, 1], [0, 0], [dil, dil], False, [0, 0], 1,
        [True, True, bias])


def _projection_backward(x: Tensor, weight: Tensor, dq: Tensor, dkv: Tensor, stride: int,
                         bias: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gradients of `project_qkv` for x, weight and (when it has one) bias, given those of q and (k, v)."""
    c = dq.shape[1]
    xs = x if stride == 1 else x[:, :, ::stride, ::stride]
    dx, dw_kv, db_kv = _conv1x1_backward(dkv, x, weight[c:], bias)
    dxq, dw_q, db_q = _conv1x1_backward(dq, xs, weight[:c], bias)
    if stride == 1:
        dx += dxq
    else:
        dx[:, :, ::stride, ::stride] += dxq
    return dx, torch.cat([dw_q, dw_kv]), torch.cat([db_q, db_kv]) if bias else None


# q, k, v of up to this many bytes in all are kept for backward. Larger ones are recomputed there from x (one
# more projection), so that a layer keeps only its input: at 64 ch x 56 x 56, batch 8, q, k, v would be
# 19 MiB against x's 6 MiB. Deep, small layers (stage 3-4 at low resolution) keep them and skip the
# recomputation, which costs them most relative to their other work.
SAVE_QKV_MAX_BYTES = 4 << 20


class _FusedPSSA(torch.autograd.Function):
    """y = base + PSSA(project_qkv(x)); saves x, the weights and, when small (SAVE_QKV_MAX_BYTES), q, k, v."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, base: Tensor | None, heads: int,
                taps: list[int], stride: int, dtype: torch.dtype) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            q, k, v = project_qkv(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype), stride)
            y = torch.ops.xvol.pssa_fwd(q, k, v, base, heads, taps, stride)
        keep = (q.numel() + k.numel() + v.numel()) * q.element_size() <= SAVE_QKV_MAX_BYTES
        ctx.save_for_backward(x, weight, bias, *((q, k, v) if keep else ()))
        ctx.cfg = (heads, taps, stride, dtype)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, *qkv = ctx.saved_tensors
        heads, taps, stride, dtype = ctx.cfg
        xc, wc = x.to(dtype), weight.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            q, k, v = qkv or project_qkv(xc, wc, None if bias is None else bias.to(dtype), stride)
            dq, dkv = torch.ops.xvol.pssa_bwd(grad.to(dtype), q, k, v, heads, taps, stride)
            dx, dw, db = _projection_backward(xc, wc, dq, dkv, stride, bias is not None)
        return (dx.to(x.dtype), dw.to(weight.dtype), None if bias is None else db.to(bias.dtype),
                grad if ctx.needs_input_grad[3] else None, None, None, None, None)


def fused_pixel_shift_attention(x: Tensor, weight: Tensor, bias: Tensor | None, heads: int,
                                taps: tuple[tuple[int, int], ...], stride: int, dtype: torch.dtype,
                                base: Tensor | None = None) -> Tensor:
    """PSSA of one layer with the fused kernels (`dtype`: the projections' compute dtype): (B, C, H', W').

    With `base` (B, C, H', W') the result is base + attention, summed inside the kernel's single pass.
    """
    return _FusedPSSA.apply(x, weight, bias, base, heads, flat_taps(taps), stride, dtype)
