"""Readable dense reference paths, for tests and for reading: slow, small inputs only.

- PSSA is global attention restricted to the neighbourhood {p + t : t in T(L, dirs)}: one dense
  (N' x N) attention matrix with every other key masked out, the same formula as `sa`.
- The deploy X-volution is one dynamic convolution: `dynamic_kernel` materialises K_p[r] for every
  output position p and input position r, and `dynamic_conv_reference` evaluates
  y(p) = sum_r K_p[r] x(r) + b with one einsum, with no convolution, shift or fused kernel involved.
"""

from __future__ import annotations

import torch
from torch import Tensor

from xvol_lab.ops.attention_branch import AttentionLayer
from xvol_lab.ops.attention_functions import out_size
from xvol_lab.ops.xvolution import _XVolution


def pssa_neighbourhood(height: int, width: int, stride: int, taps: tuple[tuple[int, int], ...],
                       device: torch.device | str = "cpu") -> Tensor:
    """Bool (N', N): True where input position r = p + t for a tap t, p on the stride grid."""
    ho, wo = out_size(height, stride), out_size(width, stride)
    allowed = torch.zeros(ho, wo, height, width, dtype=torch.bool, device=device)
    for py in range(ho):
        for px in range(wo):
            for ty, tx in taps:
                ry, rx = stride * py + ty, stride * px + tx
                if 0 <= ry < height and 0 <= rx < width:
                    allowed[py, px, ry, rx] = True
    return allowed.reshape(ho * wo, height * width)


def dense_attention_weights(q: Tensor, k: Tensor, heads: int, allowed: Tensor | None = None) -> Tensor:
    """a_i(p, r) = softmax_r <q_i(p), k_i(r)> / sqrt(d) over the allowed keys: (B, heads, N', N)."""
    b, c = q.shape[:2]
    d = c // heads
    qh = q.reshape(b, heads, d, -1)  # (B, heads, d, N')
    kh = k.reshape(b, heads, d, -1)  # (B, heads, d, N)
    logits = torch.einsum("bhdp,bhdr->bhpr", qh, kh) / d ** 0.5
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return logits.softmax(dim=-1)


def layer_attention_weights(layer: AttentionLayer, x: Tensor) -> Tensor:
    """Dense attention matrix of one attention layer (sa, or pssa as masked global attention)."""
    q, k, _ = layer.project(x)
    allowed = None
    if layer.cfg.mode == "pssa":
        allowed = pssa_neighbourhood(*x.shape[-2:], layer.stride, layer.cfg.taps, x.device)
    return dense_attention_weights(q, k, layer.cfg.heads, allowed)


def attention_reference(layer: AttentionLayer, x: Tensor) -> Tensor:
    """y_i(p) = sum_r a_i(p, r) v_i(r) with the dense attention matrix: (B, C, H', W')."""
    _, _, v = layer.project(x)
    a = layer_attention_weights(layer, x)
    b, heads = a.shape[:2]
    c = v.shape[1]
    ho, wo = out_size(x.shape[-2], layer.stride), out_size(x.shape[-1], layer.stride)
    y = torch.einsum("bhpr,bhdr->bhdp", a, v.reshape(b, heads, c // heads, -1))
    return y.reshape(b, c, ho, wo)


def static_kernel(weight: Tensor, height: int, width: int, stride: int) -> Tensor:
    """The convolution as a dense map (N', N, C_out, C_in): S[p, r] = W[r - p] inside the KxK window."""
    c_out, c_in, kh, kw = weight.shape
    ho, wo = out_size(height, stride), out_size(width, stride)
    dense = weight.new_zeros(ho, wo, height, width, c_out, c_in)
    for py in range(ho):
        for px in range(wo):
            for i in range(kh):
                for j in range(kw):
                    ry, rx = stride * py + i - kh // 2, stride * px + j - kw // 2
                    if 0 <= ry < height and 0 <= rx < width:
                        dense[py, px, ry, rx] = weight[:, :, i, j]
    return dense.reshape(ho * wo, height * width, c_out, c_in)


def dynamic_kernel(op: _XVolution, x: Tensor) -> Tensor:
    """K_p[r] = W~_c[r - p] [in window] + sum_i a_i(p, r) W~_v,i : (B, N', N, C_out, C_in).

    `op` is a deployed X-volution with stack = 1 (the merge is exact only then).
    """
    if not op.deploy or op.cfg.stack != 1:
        raise ValueError("dynamic_kernel: needs a deployed X-volution with stack=1")
    layer = op.attn[0]
    a = layer_attention_weights(layer, x)  # (B, heads, N', N)
    heads, c = op.cfg.heads, op.out_chs
    w_dyn = layer.qkv.weight[2 * c:, :, 0, 0].reshape(heads, c // heads, -1)  # W~_v: (heads, d, C_in)
    dynamic = torch.einsum("bhpr,hdc->bprhdc", a, w_dyn).flatten(3, 4)  # (B, N', N, C_out, C_in)
    return static_kernel(op.conv.weight, *x.shape[-2:], op.stride)[None] + dynamic


def dynamic_conv_reference(op: _XVolution, x: Tensor) -> Tensor:
    """Evaluate the deploy X-volution as the dynamic convolution y(p) = sum_r K_p[r] x(r) + b."""
    kernel = dynamic_kernel(op, x)
    y = torch.einsum("bproc,bcr->bop", kernel, x.flatten(2)) + op.conv.bias[:, None]
    ho, wo = out_size(x.shape[-2], op.stride), out_size(x.shape[-1], op.stride)
    return y.reshape(x.shape[0], op.out_chs, ho, wo)
