"""The q/k/v projection of an attention layer: q = W_q x on the stride grid, k = W_k x, v = W_v x at full
size (1x1 convolutions, `conv1x1`), its backward, and the phase-plane layout of strided inputs that the
phased CPU kernels take.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xvol_lab.ops.kernels.conv1x1 import conv1x1, conv1x1_backward, conv1x1_split


def project_qkv(x: Tensor, weight: Tensor, bias: Tensor | None,
                stride: int) -> tuple[Tensor, Tensor, Tensor]:
    """q = W_q x on the stride grid (B, C, H', W'); k = W_k x, v = W_v x at full size (B, C, H, W).

    `weight` (3C, C_in, 1, 1) stacks W_q, W_k, W_v; `bias` (3C) or None. Each tensor is contiguous and a
    separate allocation (`xvol::conv1x1_split` on CPU, else one oneDNN convolution per tensor): past about
    16 MiB glibc hands freed memory back as fresh pages unless the process keeps it (`xvol_lab.allocator`),
    and past 32 MiB always. oneDNN also allocates working buffers of 2-3x its output on every call; its
    stacked q/k/v of 64 ch x 56 x 56 x batch 8 took about 4x the time of its three thirds.
    """
    return project(x if stride == 1 else x[:, :, ::stride, ::stride], x, weight, bias)


def project(xs: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
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


def q_input(x: Tensor, stride: int, phased: bool) -> Tensor:
    """The pixels of x on the stride grid, as a view: the first phase plane when x is phase planes."""
    if stride == 1:
        return x
    if phased:
        b, c, n, wo = x.shape
        return x.view(b, c, stride * stride, n // (stride * stride), wo)[:, :, 0]
    return x[:, :, ::stride, ::stride]


def projection_backward(x: Tensor, weight: Tensor, dq: Tensor, dkv: Tensor, stride: int, phased: bool,
                         bias: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gradients of the projection of x (an image, or its phase planes when `phased`) for x, weight and
    (when it has one) bias, given those of q and (k, v)."""
    c = dq.shape[1]
    dx, dw_kv, db_kv = conv1x1_backward(dkv, x, weight[c:], bias)
    dxq, dw_q, db_q = conv1x1_backward(dq, q_input(x, stride, phased), weight[:c], bias)
    q_input(dx, stride, phased).add_(dxq)
    return dx, torch.cat([dw_q, dw_kv]), torch.cat([db_q, db_kv]) if bias else None
