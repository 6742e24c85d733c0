"""Fused PSSA layer: q/k/v projection + fused pixel-shift attention, saving little for backward.

The autograd function saves x (a strided layer on CPU: its phase planes) and the projection weights; the
backward recomputes q, k, v (one 1x1 convolution per tensor, `xvol_lab.ops.kernels.projection`) and runs
the fused backward kernel, which recomputes the products per tap.
Training then keeps no (B, C, H, W) tensor per tap, and not even q, k, v: the activation memory is
the input's. Small layers, whose q, k, v fit SAVE_QKV_MAX_BYTES, keep them instead of recomputing.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from xvol_lab.ops.kernels.projection import (
    phase_image,
    phase_planes,
    project,
    projection_backward,
    q_input,
)
from xvol_lab.ops.kernels.schemas import flat_taps, xvol


def _uses_phase_planes(x: Tensor, stride: int) -> bool:
    """Strided layers on CPU project the phase planes of x for the phased kernels; CUDA's take images."""
    return stride > 1 and x.device.type == "cpu"


# q, k, v of up to this many bytes in all are kept for backward. Larger ones are recomputed there from x (one
# more projection), so that a layer keeps only its input: at 64 ch x 56 x 56, batch 8, q, k, v would be
# 19 MiB against x's 6 MiB. Deep, small layers (stage 3-4 at low resolution) keep them and skip the
# recomputation, which costs them most relative to their other work.
SAVE_QKV_MAX_BYTES = 4 << 20
# On CUDA, where recomputing them costs a projection's bandwidth and the device has tens of GiB, a layer keeps
# q, k, v up to this share of the device's memory (312 MiB on an 80 GiB H100: every ResNet-50 layer at batch
# 128, bf16; stage 1 at 56 x 56 is 3 x 64 x 56 x 56 x 128 x 2 B = 147 MiB).
SAVE_QKV_CUDA_SHARE = 1 / 256


@lru_cache(maxsize=16)
def _cuda_memory(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).total_memory


def save_qkv_max_bytes(device: torch.device) -> int:
    """The largest q, k, v (bytes, all three) a layer on `device` keeps for backward instead of recomputing."""
    if device.type == "cuda":
        return int(_cuda_memory(device) * SAVE_QKV_CUDA_SHARE)
    return SAVE_QKV_MAX_BYTES


class _FusedPSSA(torch.autograd.Function):
    """y = base + PSSA(project_qkv(x)); saves x, the weights and, when small (`save_qkv_max_bytes`), q, k, v.

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
            q, k, v = project(q_input(inp, stride, phased), inp, weight_c, bias_c)
            image = list(x.shape[-2:])
            y = (xvol.pssa_fwd_phased(q, k, v, base, heads, taps, stride, image) if phased else
                 xvol.pssa_fwd(q, k, v, base, heads, taps, stride))
        keep = (q.numel() + k.numel() + v.numel()) * q.element_size() <= save_qkv_max_bytes(x.device)
        ctx.save_for_backward(inp, weight, bias, *((q, k, v) if keep else ()))
        ctx.cfg = (heads, taps, stride, dtype, phased, image, x.dtype)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        inp, weight, bias, *qkv = ctx.saved_tensors
        heads, taps, stride, dtype, phased, image, x_dtype = ctx.cfg
        wc = weight.to(dtype)
        with torch.autocast(inp.device.type, enabled=False):
            q, k, v = qkv or project(q_input(inp, stride, phased), inp, wc,
                                      None if bias is None else bias.to(dtype))
            g = grad.to(dtype)
            dq, dkv = (xvol.pssa_bwd_phased(g, q, k, v, heads, taps, stride, image) if phased else
                       xvol.pssa_bwd(g, q, k, v, heads, taps, stride))
            dx, dw, db = projection_backward(inp, wc, dq, dkv, stride, phased, bias is not None)
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
