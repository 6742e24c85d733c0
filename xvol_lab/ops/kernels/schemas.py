"""The schemas of the `xvol::` ops and their fake (meta) implementations: the one module every backend
(the C++ extension built by backends.py for CPU, pssa_triton.py for CUDA) registers its kernels against.
The package imports it first (`xvol_lab.ops.kernels`), so `xvol`, the ops' namespace, is complete for
every module that uses it.

`xvol::pssa_fwd` / `xvol::pssa_bwd`: the fused PSSA kernels. `xvol::conv1x1` (CPU): the 1x1 convolution of
the q/k/v projections (`xvol_lab.ops.kernels.conv1x1`); `xvol::conv1x1_split` the same, its output channels
split into `parts` tensors.

`xvol::pssa_fwd_phased` / `xvol::pssa_bwd_phased` (CPU) take k and v, and return dk and dv, as the
phase planes of stride S, (B, C, S*S*H', W'): plane (py, px) of a channel holds pixel (S y' + py,
S x' + px) of the (H, W) `image`, zeros past it. A projection of the phase planes of x gives them
directly, so a strided layer rearranges its input instead of k and v.
"""

from __future__ import annotations

import torch
from torch import Tensor

torch.library.define("xvol::pssa_fwd",
                     "(Tensor q, Tensor k, Tensor v, Tensor? base, int heads, int[] taps, int stride) "
                     "-> Tensor")
torch.library.define("xvol::pssa_bwd",
                     "(Tensor grad, Tensor q, Tensor k, Tensor v, int heads, int[] taps, int stride) "
                     "-> (Tensor, Tensor)")
torch.library.define("xvol::pssa_fwd_phased",
                     "(Tensor q, Tensor k, Tensor v, Tensor? base, int heads, int[] taps, int stride, int[] image) "
                     "-> Tensor")
torch.library.define("xvol::pssa_bwd_phased",
                     "(Tensor grad, Tensor q, Tensor k, Tensor v, int heads, int[] taps, int stride, int[] image) "
                     "-> (Tensor, Tensor)")

torch.library.define("xvol::conv1x1", "(Tensor x, Tensor weight, Tensor? bias) -> Tensor")
torch.library.define("xvol::conv1x1_split", "(Tensor x, Tensor weight, Tensor? bias, int parts) -> Tensor[]")


def triton_output_format(q: Tensor) -> torch.memory_format:
    """The layout the Triton kernels write for query `q`: channels-last when channels are q's fastest
    dimension (channels-last input, or its projection's channel chunks), else NCHW."""
    return torch.channels_last if q.dim() == 4 and q.stride(1) == 1 and q.shape[1] > 1 else torch.contiguous_format


def pssa_output_format(q: Tensor) -> torch.memory_format:
    """The layout of `xvol::pssa_fwd`'s output and `xvol::pssa_bwd`'s gradients for query `q`: the Triton
    kernels' on CUDA (they address every tensor by its strides), NCHW on CPU (the C++ kernels')."""
    return triton_output_format(q) if q.device.type == "cuda" else torch.contiguous_format


@torch.library.register_fake("xvol::pssa_fwd")
def _pssa_fwd_fake(q: Tensor, k: Tensor, v: Tensor, base: Tensor | None, heads: int, taps: list[int],
                   stride: int) -> Tensor:
    return torch.empty_like(q, memory_format=pssa_output_format(q))


@torch.library.register_fake("xvol::pssa_bwd")
def _pssa_bwd_fake(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, heads: int, taps: list[int],
                   stride: int) -> tuple[Tensor, Tensor]:
    """(dq, dkv): dkv stacks dk and dv on the channel axis, as the projection lays k and v out."""
    b, c, h, w = k.shape
    fmt = pssa_output_format(q)
    return (torch.empty_like(q, memory_format=fmt),
            torch.empty(b, 2 * c, h, w, dtype=q.dtype, device=q.device, memory_format=fmt))


@torch.library.register_fake("xvol::pssa_fwd_phased")
def _pssa_fwd_phased_fake(q: Tensor, k: Tensor, v: Tensor, base: Tensor | None, heads: int, taps: list[int],
                          stride: int, image: list[int]) -> Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.register_fake("xvol::pssa_bwd_phased")
def _pssa_bwd_phased_fake(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, heads: int, taps: list[int],
                          stride: int, image: list[int]) -> tuple[Tensor, Tensor]:
    """(dq, dkv): dkv stacks dk and dv as phase planes, (B, 2C, S*S*H', W')."""
    b, c, h, w = k.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), k.new_empty(b, 2 * c, h, w)


@torch.library.register_fake("xvol::conv1x1")
def _conv1x1_fake(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[0], *x.shape[2:])


@torch.library.register_fake("xvol::conv1x1_split")
def _conv1x1_split_fake(x: Tensor, weight: Tensor, bias: Tensor | None, parts: int) -> list[Tensor]:
    return [x.new_empty(x.shape[0], weight.shape[0] // parts, *x.shape[2:]) for _ in range(parts)]


xvol = torch.ops.xvol  # the namespace of the ops defined above


def flat_taps(taps: tuple[tuple[int, int], ...]) -> list[int]:
    """(ty0, tx0, ty1, tx1, ...): the op schema's int[] form of the taps."""
    return [o for tap in taps for o in tap]
