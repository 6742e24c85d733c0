"""The schemas of the fused PSSA ops, `xvol::pssa_fwd` and `xvol::pssa_bwd`, and their fake (meta)
implementations: the one module every backend (pssa_kernels.py for CPU, pssa_triton.py for CUDA)
registers its kernels against."""

from __future__ import annotations

import torch
from torch import Tensor

torch.library.define("xvol::pssa_fwd",
                     "(Tensor q, Tensor k, Tensor v, Tensor? base, int heads, int[] taps, int stride) "
                     "-> Tensor")
torch.library.define("xvol::pssa_bwd",
                     "(Tensor grad, Tensor q, Tensor k, Tensor v, int heads, int[] taps, int stride) "
                     "-> (Tensor, Tensor)")


@torch.library.register_fake("xvol::pssa_fwd")
def _pssa_fwd_fake(q: Tensor, k: Tensor, v: Tensor, base: Tensor | None, heads: int, taps: list[int],
                   stride: int) -> Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.register_fake("xvol::pssa_bwd")
def _pssa_bwd_fake(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, heads: int, taps: list[int],
                   stride: int) -> tuple[Tensor, Tensor]:
    """(dq, dkv): dkv stacks dk and dv on the channel axis, as the projection lays k and v out."""
    b, c, h, w = k.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), k.new_empty(b, 2 * c, h, w)
