"""The 1x1 convolutions of the q/k/v projections: `xvol::conv1x1` on CPU (conv1x1_cpu.cpp, with its
autograd formula), oneDNN elsewhere.

The kernel computes whole vectors of one image's pixels (16 float / 8 double lanes): where an image's pixel
count fills its vectors it runs at 210-235 GFLOP/s on one core of this project's CPU, as fast as a 3x3
convolution, where oneDNN's 1x1 convolution reaches 125 (64 input channels) to 205 (512). Where an image
ends in a part-filled vector the idle lanes cost their share: at 7x7, 49 of 64 lanes work and oneDNN is
faster (196 against 168 GFLOP/s at 512 channels). `conv1x1` runs the kernel where at least
MIN_LANE_USE of the lanes work.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from xvol_lab.ops.kernels.backends import CPU_DTYPES, cpu_kernels_available
from xvol_lab.ops.kernels.schemas import xvol


def _dilation_1x1(x: Tensor) -> int:
    """Dilation has no effect on a 1x1 kernel, but on CPU it steers torch's convolution dispatch to
    oneDNN, which its heuristic skips for 1x1 kernels with one thread and batch < 16 (im2col + an MKL
    GEMM: the q/k/v projection forward 1.3-2.4x slower on this machine's CPU, benchmarks/ops.py)."""
    return 2 if x.device.type == "cpu" else 1


MIN_LANE_USE = 0.9  # 14x14: 196 of 208 float lanes, as fast as oneDNN; 7x7: 49 of 64, slower


def lane_use(pixels: int, dtype: torch.dtype) -> float:
    """The share of vector lanes that hold pixels when each image's `pixels` are cut into 64-byte vectors."""
    lanes = 512 // torch.finfo(dtype).bits
    return pixels / (-(-pixels // lanes) * lanes)


def uses_cpu_kernel(x: Tensor) -> bool:
    """Whether `conv1x1` runs `xvol::conv1x1` for x: CPU float32/float64 whose images fill at least
    MIN_LANE_USE of the kernel's lanes, with the kernels built, outside autocast (the op does not cast) and
    outside ONNX export (the op has no ONNX form)."""
    return (x.device.type == "cpu" and x.dtype in CPU_DTYPES and x.shape[2] * x.shape[3] > 0
            and lane_use(x.shape[2] * x.shape[3], x.dtype) >= MIN_LANE_USE
            and not torch.is_autocast_enabled("cpu") and not torch.onnx.is_in_onnx_export()
            and cpu_kernels_available())


def conv1x1(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """A 1x1 convolution: by `xvol::conv1x1` on CPU, else by oneDNN (`F.conv2d`)."""
    if uses_cpu_kernel(x):
        return xvol.conv1x1(x, weight, bias)
    return F.conv2d(x, weight, bias, dilation=_dilation_1x1(x))


def conv1x1_split(x: Tensor, weight: Tensor, bias: Tensor | None, parts: int) -> list[Tensor]:
    """`conv1x1` with the output channels split into `parts` tensors. On CPU separate allocations (one pass
    over x by the CPU kernel; separate outputs stay below glibc's mmap threshold where a stacked one does
    not); on CUDA the channel chunks of one convolution (one pass over x, one cuDNN call, and the caching
    allocator has no threshold; the Triton kernels read the chunks through their strides)."""
    if uses_cpu_kernel(x):
        return list(xvol.conv1x1_split(x, weight, bias, parts))
    if x.device.type == "cuda":
        return list(F.conv2d(x, weight, bias).chunk(parts, dim=1))
    biases = [None] * parts if bias is None else bias.chunk(parts)
    return [conv1x1(x, w, b) for w, b in zip(weight.chunk(parts), biases, strict=True)]


def conv1x1_backward(grad: Tensor, x: Tensor, weight: Tensor,
                     bias: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Input, weight and (when it has one) bias gradients of `conv1x1(x, weight, bias)`. The input gradient
    is a 1x1 convolution of `grad` with the transposed weight (`xvol::conv1x1` on CPU); the weight and bias
    gradients come from one `aten.convolution_backward` call."""
    dil = _dilation_1x1(x)
    kernel = uses_cpu_kernel(grad)
    dx, dw, db = torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[0]] if bias else None, [1, 1], [0, 0], [dil, dil], False, [0, 0], 1,
        [not kernel, True, bias])
    if kernel:
        dx = xvol.conv1x1(grad, weight.transpose(0, 1), None)
    return dx, dw, db


def _setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor | None], output: Tensor) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    x, weight = ctx.saved_tensors
    return conv1x1_backward(grad.contiguous(), x, weight, ctx.has_bias)


def _split_setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor | None, int], output: list[Tensor]) -> None:
    _setup_context(ctx, inputs[:3], output)
    ctx.part_shape = output[0].shape


def _split_backward(ctx: Any, grads: list[Tensor | None]) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
    grad = torch.cat([ctx.saved_tensors[0].new_zeros(ctx.part_shape) if g is None else g for g in grads], dim=1)
    return (*_backward(ctx, grad), None)


torch.library.register_autograd("xvol::conv1x1", _backward, setup_context=_setup_context)
torch.library.register_autograd("xvol::conv1x1_split", _split_backward, setup_context=_split_setup_context)
