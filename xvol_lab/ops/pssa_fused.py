"""Fused PSSA layer: q/k/v projection + fused pixel-shift attention, saving little for backward.

The autograd function saves x (a strided layer on CPU: its phase planes) and the projection weights; the
backward recomputes q, k, v (one 1x1 convolution per tensor) and runs the fused backward kernel, which
recomputes the products per tap.
Training then keeps no (B, C, H, W) tensor per tap, and not even q, k, v: the activation memory is
the input's. Small layers, whose q, k, v fit SAVE_QKV_MAX_BYTES, keep them instead of recomputing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xvol_lab.ops import pssa_kernels  # noqa: F401 - defines the xvol:: ops
from xvol_lab.ops.projection import conv1x1, conv1x1_backward, conv1x1_split
from xvol_lab.ops.pssa_kernels import flat_taps


def project_qkv(x: Tensor, weight: Tensor, bias: Tensor | None,
                stride: int) -> tuple[Tensor, Tensor, Tensor]:
    """q = W_q x on the stride grid (B, C, H', W'); k = W_k x, v = W_v x at full size (B, C, H, W).

    `weight` (3C, C_in, 1, 1) stacks W_q, W_k, W_v; `bias` (3C) or None. Each tensor is contiguous and a
    separate allocation (`xvol::conv1x1_split` on CPU, else one oneDNN convolution per tensor): past about
    16 MiB glibc hands freed memory back as fresh pages unless the process keeps it (`xvol_lab.allocator`),
    and past 32 MiB always. oneDNN also allocates working buffers of 2-3x its output on every call; its
    stacked q/k/v of 64 ch x 56 x 56 x batch 8 took about 4x the time of its three thirds.
    """
    return _project(x if stride == 1 else x[:, :, ::stride, ::stride], x, weight, bias)


def _project(xs: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """q = W_q xs, k = W_k x, v = W_v x: one `conv1x1_split` per input (x read once for q, k, v at stride 1)."""
    if xs is x:
        q, k, v = conv1x1_split(x, weight, bias, 3)
        return q, k, v
    c = weight.shape[0] // 3
    k, v = conv1x1_split(x, weight[c:], None if bias is None else bias[c:], 2)
    return conv1x1(xs, weight[:c], None if bias is None else bias[:c]), k, v


def phase_planes(x: Tensor, stride: int) -> Tensor:
    """(B, C, H, W) -> (B, C, S*S*H', W'): plane (py, px) of a channel holds x(S y' + py, S x' + px), zeros
    past the image; the layout of k and v in `xvol::pssa_fwd_phased`. One strided copy per plane."""
    b, c, h, w = x.shape
    ho, wo = -(-h // stride), -(-w // stride)
    exact = h == ho * stride and w == wo * stride  # every plane pixel is an image pixel
    planes = (x.new_empty if exact else x.new_zeros)(b, c, stride, stride, ho, wo)
    for py in range(stride):
        for px in range(stride):
            part = x[:, :, py::stride, px::stride]
            planes[:, :, py, px, :part.shape[2], :part.shape[3]] = part
    return planes.view(b, c, stride * stride * ho, wo)


def phase_image(planes: Tensor, size: tuple[int, int], stride: int) -> Tensor:
    """The inverse of `phase_planes`: (B, C, S*S*H', W') -> (B, C, H, W)."""
    b, c, n, wo = planes.shape
    planes = planes.view(b, c, stride, stride, n // (stride * stride), wo)
    x = planes.new_empty(b, c, *size)
    for py in range(stride):
        for px in range(stride):
            part = x[:, :, py::stride, px::stride]
            part.copy_(planes[:, :, py, px, :part.shape[2], :part.shape[3]])
    return x


def _q_input(x: Tensor, stride: int, phased: bool) -> Tensor:
    """The pixels of x on the stride grid, as a view: the first phase plane when x is phase planes."""
    if stride == 1:
        return x
    if phased:
        b, c, n, wo = x.shape
        return x.view(b, c, stride * stride, n // (stride * stride), wo)[:, :, 0]
    return x[:, :, ::stride, ::stride]


def _projection_backward(x: Tensor, weight: Tensor, dq: Tensor, dkv: Tensor, stride: int, phased: bool,
                         bias: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gradients of the projection of x (an image, or its phase planes when `phased`) for x, weight and
    (when it has one) bias, given those of q and (k, v)."""
    c = dq.shape[1]
    dx, dw_kv, db_kv = conv1x1_backward(dkv, x, weight[c:], bias)
    dxq, dw_q, db_q = conv1x1_backward(dq, _q_input(x, stride, phased), weight[:c], bias)
    _q_input(dx, stride, phased).add_(dxq)
    return dx, torch.cat([dw_q, dw_kv]), torch.cat([db_q, db_kv]) if bias else None


def _uses_phase_planes(x: Tensor, stride: int) -> bool:
    """Strided layers on CPU project the phase planes of x for the phased kernels; CUDA's take images."""
    return stride > 1 and x.device.type == "cpu"


# q, k, v of up to this many bytes in all are kept for backward. Larger ones are recomputed there from x (one
# more projection), so that a layer keeps only its input: at 64 ch x 56 x 56, batch 8, q, k, v would be
# 19 MiB against x's 6 MiB. Deep, small layers (stage 3-4 at low resolution) keep them and skip the
# recomputation, which costs them most relative to their other work.
SAVE_QKV_MAX_BYTES = 4 << 20


class _FusedPSSA(torch.autograd.Function):
    """y = base + PSSA(project_qkv(x)); saves x, the weights and, when small (SAVE_QKV_MAX_BYTES), q, k, v.

    A strided layer on CPU projects the phase planes of x (`phase_planes`) and runs the phased kernels: k
    and v come out in the kernels' layout, so only x (C_in channels), not k and v (2C), is rearranged.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, base: Tensor | None, heads: int,
                taps: list[int], stride: int, dtype: torch.dtype) -> Tensor:
        phased = _uses_phase_planes(x, stride)
        with torch.autocast(x.device.type, enabled=False):
            inp = phase_planes(x.to(dtype), stride) if phased else x.to(dtype)
            weight_c = weight.to(dtype)
            bias_c = None if bias is None else bias.to(dtype)
            q, k, v = _project(_q_input(inp, stride, phased), inp, weight_c, bias_c)
            image = list(x.shape[-2:])
            y = (torch.ops.xvol.pssa_fwd_phased(q, k, v, base, heads, taps, stride, image) if phased else
                 torch.ops.xvol.pssa_fwd(q, k, v, base, heads, taps, stride))
        keep = (q.numel() + k.numel() + v.numel()) * q.element_size() <= SAVE_QKV_MAX_BYTES
        ctx.save_for_backward(inp, weight, bias, *((q, k, v) if keep else ()))
        ctx.cfg = (heads, taps, stride, dtype, phased, image, x.dtype)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        inp, weight, bias, *qkv = ctx.saved_tensors
        heads, taps, stride, dtype, phased, image, x_dtype = ctx.cfg
        wc = weight.to(dtype)
        with torch.autocast(inp.device.type, enabled=False):
            q, k, v = qkv or _project(_q_input(inp, stride, phased), inp, wc,
                                      None if bias is None else bias.to(dtype))
            g = grad.to(dtype)
            dq, dkv = (torch.ops.xvol.pssa_bwd_phased(g, q, k, v, heads, taps, stride, image) if phased else
                       torch.ops.xvol.pssa_bwd(g, q, k, v, heads, taps, stride))
            dx, dw, db = _projection_backward(inp, wc, dq, dkv, stride, phased, bias is not None)
            if phased:
                dx = phase_image(dx, tuple(image), stride)
        return (dx.to(x_dtype), dw.to(weight.dtype), None if bias is None else db.to(bias.dtype),
                grad if ctx.needs_input_grad[3] else None, None, None, None, None)


def fused_pixel_shift_attention(x: Tensor, weight: Tensor, bias: Tensor | None, heads: int,
                                taps: tuple[tuple[int, int], ...], stride: int, dtype: torch.dtype,
                                base: Tensor | None = None) -> Tensor:
    """PSSA of one layer with the fused kernels (`dtype`: the projections' compute dtype): (B, C, H', W').

    With `base` (B, C, H', W') the result is base + attention, summed inside the kernel's single pass.
    """
    return _FusedPSSA.apply(x, weight, bias, base, heads, flat_taps(taps), stride, dtype)
