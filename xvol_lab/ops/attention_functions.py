"""The attention functions in plain torch: global multi-head self-attention and Pixel Shift Self-Attention.

Queries live on the stride grid (B, C, H', W'); keys and values at full resolution (B, C, H, W).
`xvol_lab.ops.reference` holds the readable dense versions the tests compare against.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

Tap = tuple[int, int]


def pssa_taps(shift: int, dirs: int) -> tuple[Tap, ...]:
    """Offsets T(L, dirs) in row-major order: 9 taps for dirs=8, the centre and 4 axes for dirs=4."""
    return tuple((a * shift, b * shift) for a in (-1, 0, 1) for b in (-1, 0, 1)
                 if dirs == 8 or a == 0 or b == 0)


def out_size(size: int, stride: int) -> int:
    """ceil(size / stride): the output extent of every operator."""
    return -(-size // stride)


@lru_cache(maxsize=256)
def _invalid_taps(taps: tuple[Tap, ...], height: int, width: int, stride: int, device: str) -> Tensor:
    """Bool (T, H', W'): True where p + t falls outside the image (excluded from the softmax).

    Built outside inference mode: a cached inference tensor could not be saved for a later backward.
    """
    with torch.inference_mode(False):
        ys = torch.arange(0, height, stride, device=device)
        xs = torch.arange(0, width, stride, device=device)
        masks = [((ys + ty < 0) | (ys + ty >= height))[:, None]
                 | ((xs + tx < 0) | (xs + tx >= width))[None, :] for ty, tx in taps]
        return torch.stack(masks)


def _shifted(padded: Tensor, tap: Tap, pad: int, out_hw: tuple[int, int], stride: int) -> Tensor:
    """View of ``x(p + t)`` for p on the stride grid, from x zero-padded by `pad`: (B, C, H', W')."""
    ty, tx = tap
    ho, wo = out_hw
    return padded[:, :, pad + ty: pad + ty + stride * (ho - 1) + 1: stride,
                  pad + tx: pad + tx + stride * (wo - 1) + 1: stride]


def pixel_shift_weights(q: Tensor, k: Tensor, heads: int, taps: tuple[Tap, ...], stride: int) -> Tensor:
    """Attention coefficients a_i(p, t): (B, heads, T, H', W'), zero for taps outside the image."""
    b, c, ho, wo = q.shape
    height, width = k.shape[-2:]
    d = c // heads
    pad = max(max(abs(ty), abs(tx)) for ty, tx in taps)
    kp = F.pad(k, (pad, pad, pad, pad))
    qh = (q * d ** -0.5).view(b, heads, d, ho, wo)  # (B, heads, d, H', W')
    logits = torch.stack(
        [(qh * _shifted(kp, t, pad, (ho, wo), stride).view(b, heads, d, ho, wo)).sum(2) for t in taps],
        dim=2)  # (B, heads, T, H', W')
    invalid = _invalid_taps(taps, height, width, stride, str(q.device))
    return logits.masked_fill(invalid, float("-inf")).softmax(dim=2)


def pixel_shift_aggregate(weights: Tensor, v: Tensor, taps: tuple[Tap, ...], stride: int,
                          out: Tensor | None = None) -> Tensor:
    """y_i(p) = sum_t a_i(p, t) v_i(p + t): (B, C, H', W') from weights (B, heads, T, H', W').

    The result has the dtype of `v` (CUDA autocast leaves the softmax weights in float32; they must
    not promote a bf16 value path to float32).

    With `out` (B, C, H', W') the sum is accumulated into it in place (fused multiply-adds, no
    temporaries); autograd-safe, since no backward needs the accumulator's old value. Without it, the
    sum goes into a fresh tensor in the layout of `v` (channels-last stays channels-last).
    """
    b, heads, _, ho, wo = weights.shape
    c = v.shape[1]
    weights = weights.to(v.dtype)
    pad = max(max(abs(ty), abs(tx)) for ty, tx in taps)
    vp = F.pad(v, (pad, pad, pad, pad))
    shifted = [_shifted(vp, t, pad, (ho, wo), stride).view(b, heads, c // heads, ho, wo) for t in taps]
    start = 0
    if out is None:  # splitting C of a (B, C, H', W') tensor is a view in every layout; merging back is not
        out = torch.empty((b, c, ho, wo), dtype=v.dtype, device=v.device, memory_format=_layout(v))
        out.view(b, heads, c // heads, ho, wo).copy_(weights[:, :, :1] * shifted[0])  # first tap: a product
        start = 1
    acc = out.view(b, heads, c // heads, ho, wo)
    for j in range(start, len(taps)):
        acc = acc.addcmul_(weights[:, :, j: j + 1], shifted[j])
    return acc.reshape(b, c, ho, wo)  # a view of `out`; returned from `acc` so that traced exports see the sums


def _layout(t: Tensor) -> torch.memory_format:
    """channels-last when `t` is (and is not also NCHW-contiguous, as 1x1 images are), else NCHW."""
    cl = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def pixel_shift_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, taps: tuple[Tap, ...],
                          stride: int, out: Tensor | None = None) -> Tensor:
    """PSSA: softmax over the valid taps of <q(p), k(p+t)>/sqrt(d), then the weighted sum of v(p+t)."""
    return pixel_shift_aggregate(pixel_shift_weights(q, k, heads, taps, stride), v, taps, stride, out)


def global_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, out: Tensor | None = None) -> Tensor:
    """Global multi-head self-attention (fused scaled_dot_product_attention): (B, C, H', W').

    With `out`, the result is added to it in place.
    """
    b, c, ho, wo = q.shape
    d = c // heads
    # Contiguous (B, heads, N, d): the flash and memory-efficient kernels need a unit-stride last
    # dimension; strided views silently fall back to the math path (the whole score matrix saved).
    qh = q.reshape(b, heads, d, ho * wo).transpose(2, 3).to(v.dtype).contiguous()  # (B, heads, N', d)
    kh = k.reshape(b, heads, d, -1).transpose(2, 3).to(v.dtype).contiguous()  # (B, heads, N, d)
    vh = v.reshape(b, heads, d, -1).transpose(2, 3).contiguous()  # (B, heads, N, d)
    y = F.scaled_dot_product_attention(qh, kh, vh)  # (B, heads, N', d)
    y = y.transpose(2, 3).reshape(b, c, ho, wo)
    return y if out is None else out.add_(y)
