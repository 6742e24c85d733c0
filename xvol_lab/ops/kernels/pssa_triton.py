"""Fused PSSA kernels in Triton (CUDA): the CUDA implementations of `xvol::pssa_fwd` / `xvol::pssa_bwd`.

Same algorithm as the C++ kernels (pssa_cpu.cpp): one program per (batch*head, block of output pixels)
holds the logits of all taps (T padded to 16) in registers, loads the shifted k and v as one gathered
(taps, channels, pixels) tile per channel block, and never writes a shifted copy. Accumulation in
float32 for every input dtype; outputs take the dtype of q/k/v (bf16 stays bf16). The backward
recomputes the logits; a second kernel gathers dk, dv per input pixel (no atomics).
Importing this module registers the CUDA kernels; `TRITON_INTERPRET=1` runs the launchers on CPU
tensors, which is how the tests check them without a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

T_PAD = 16  # taps, padded to a power of two (9 for dirs=8, 5 for dirs=4)
BLOCK_P = 32  # pixels per program
BLOCK_D = 16  # channels per inner step


@triton.jit
def _tap_geometry(taps_ptr, n_taps, p, n_pix, w_out, height, width, stride: tl.constexpr,
                  T: tl.constexpr):
    """Input offsets (T, P) of tap t at output pixel p, and whether they lie inside the image."""
    t = tl.arange(0, T)
    ty = tl.load(taps_ptr + 2 * t, mask=t < n_taps, other=0)
    tx = tl.load(taps_ptr + 2 * t + 1, mask=t < n_taps, other=0)
    yi = (p // w_out)[None, :] * stride + ty[:, None]
    xi = (p % w_out)[None, :] * stride + tx[:, None]
    valid = ((t < n_taps)[:, None] & (p < n_pix)[None, :] & (yi >= 0) & (yi < height) & (xi >= 0)
             & (xi < width))
    return yi * width + xi, valid


@triton.jit
def _logits(q_base, k_base, off, valid, p, n_pix, d, plane_q, plane_k, T: tl.constexpr, BP: tl.constexpr,
            BD: tl.constexpr):
    """sum_c q(c, p) k(c, p + t): (T, P) in float32."""
    acc = tl.zeros((T, BP), dtype=tl.float32)
    for c0 in range(0, d, BD):
        c = c0 + tl.arange(0, BD)
        cm = c < d
        q = tl.load(q_base + c[:, None] * plane_q + p[None, :], mask=cm[:, None] & (p < n_pix)[None, :],
                    other=0.0).to(tl.float32)
        k = tl.load(k_base + c[None, :, None] * plane_k + off[:, None, :],
                    mask=cm[None, :, None] & valid[:, None, :], other=0.0).to(tl.float32)
        acc += tl.sum(q[None, :, :] * k, axis=1)
    return acc


@triton.jit
def _softmax(logits, valid, scale):
    z = tl.where(valid, logits * scale, float("-inf"))
    m = tl.max(z, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)  # padding pixels: every tap invalid
    e = tl.where(valid, tl.exp(z - m[None, :]), 0.0)
    s = tl.sum(e, axis=0)
    return e / tl.where(s == 0.0, 1.0, s)[None, :]


@triton.jit
def _pssa_fwd_kernel(q_ptr, k_ptr, v_ptr, base_ptr, y_ptr, taps_ptr, n_taps, heads, d, height, width, h_out,
                     w_out, sq, sk, sv, sbase, sy, scale, HAS_BASE: tl.constexpr, stride: tl.constexpr,
                     T: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr):
    bh = tl.program_id(0)
    b, h = bh // heads, bh % heads
    n_pix, plane = h_out * w_out, height * width
    p = tl.program_id(1) * BP + tl.arange(0, BP)
    off, valid = _tap_geometry(taps_ptr, n_taps, p, n_pix, w_out, height, width, stride, T)
    q_base = q_ptr + b * sq + h * d * n_pix
    k_base = k_ptr + b * sk + h * d * plane
    v_base = v_ptr + b * sv + h * d * plane
    a = _softmax(_logits(q_base, k_base, off, valid, p, n_pix, d, n_pix, plane, T, BP, BD), valid, scale)
    for c0 in range(0, d, BD):
        c = c0 + tl.arange(0, BD)
        cm = c < d
        m3 = cm[None, :, None] & valid[:, None, :]
        v = tl.load(v_base + c[None, :, None] * plane + off[:, None, :], mask=m3, other=0.0).to(tl.float32)
        y = tl.sum(a[:, None, :] * v, axis=0)  # (BD, BP)
        out_mask = cm[:, None] & (p < n_pix)[None, :]
        if HAS_BASE:
            y += tl.load(base_ptr + b * sbase + (h * d + c)[:, None] * n_pix + p[None, :], mask=out_mask,
                         other=0.0).to(tl.float32)
        y_at = y_ptr + b * sy + (h * d + c)[:, None] * n_pix + p[None, :]
        tl.store(y_at, y.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _pssa_bwd_query_kernel(g_ptr, q_ptr, k_ptr, v_ptr, dq_ptr, a_ptr, ds_ptr, taps_ptr, n_taps, heads, d,
                           height, width, h_out, w_out, sg, sq, sk, sv, sdq, scale, stride: tl.constexpr,
                           T: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr):
    """Per output pixel: a and ds = a (da - <a, da>) * scale into (BH, T, P) buffers, and dq."""
    bh = tl.program_id(0)
    b, h = bh // heads, bh % heads
    n_pix, plane = h_out * w_out, height * width
    p = tl.program_id(1) * BP + tl.arange(0, BP)
    off, valid = _tap_geometry(taps_ptr, n_taps, p, n_pix, w_out, height, width, stride, T)
    q_base = q_ptr + b * sq + h * d * n_pix
    k_base = k_ptr + b * sk + h * d * plane
    v_base = v_ptr + b * sv + h * d * plane
    g_base = g_ptr + b * sg + h * d * n_pix
    a = _softmax(_logits(q_base, k_base, off, valid, p, n_pix, d, n_pix, plane, T, BP, BD), valid, scale)
    da = _logits(g_base, v_base, off, valid, p, n_pix, d, n_pix, plane, T, BP, BD)  # <g(p), v(p + t)>
    ds = a * (da - tl.sum(a * da, axis=0)[None, :]) * scale
    t = tl.arange(0, T)
    buf = bh * n_taps * n_pix + t[:, None] * n_pix + p[None, :]
    buf_mask = (t < n_taps)[:, None] & (p < n_pix)[None, :]
    tl.store(a_ptr + buf, a, mask=buf_mask)
    tl.store(ds_ptr + buf, ds, mask=buf_mask)
    for c0 in range(0, d, BD):
        c = c0 + tl.arange(0, BD)
        cm = c < d
        m3 = cm[None, :, None] & valid[:, None, :]
        k = tl.load(k_base + c[None, :, None] * plane + off[:, None, :], mask=m3, other=0.0).to(tl.float32)
        dq = tl.sum(ds[:, None, :] * k, axis=0)
        tl.store(dq_ptr + b * sdq + (h * d + c)[:, None] * n_pix + p[None, :], dq.to(dq_ptr.dtype.element_ty),
                 mask=cm[:, None] & (p < n_pix)[None, :])


@triton.jit
def _pssa_bwd_key_kernel(g_ptr, q_ptr, a_ptr, ds_ptr, dk_ptr, dv_ptr, taps_ptr, n_taps, heads, d, height,
                         width, h_out, w_out, sg, sq, sdkv, stride: tl.constexpr, T: tl.constexpr,
                         BP: tl.constexpr, BD: tl.constexpr):
    """Per input pixel r: dk(r) = sum_t ds_t(p) q(p), dv(r) = sum_t a_t(p) g(p), p = (r - t) / stride."""
    bh = tl.program_id(0)
    b, h = bh // heads, bh % heads
    n_pix, plane = h_out * w_out, height * width
    r = tl.program_id(1) * BP + tl.arange(0, BP)
    t = tl.arange(0, T)
    ty = tl.load(taps_ptr + 2 * t, mask=t < n_taps, other=0)
    tx = tl.load(taps_ptr + 2 * t + 1, mask=t < n_taps, other=0)
    ys = (r // width)[None, :] - ty[:, None]  # stride * yo
    xs = (r % width)[None, :] - tx[:, None]
    yo, xo = ys // stride, xs // stride
    valid = ((t < n_taps)[:, None] & (r < plane)[None, :] & (ys >= 0) & (xs >= 0) & (ys % stride == 0)
             & (xs % stride == 0) & (yo < h_out) & (xo < w_out))
    po = yo * w_out + xo  # (T, BP) output pixel that reads r through tap t
    buf = bh * n_taps * n_pix + t[:, None] * n_pix + po
    a = tl.load(a_ptr + buf, mask=valid, other=0.0)
    ds = tl.load(ds_ptr + buf, mask=valid, other=0.0)
    q_base = q_ptr + b * sq + h * d * n_pix
    g_base = g_ptr + b * sg + h * d * n_pix
    for c0 in range(0, d, BD):
        c = c0 + tl.arange(0, BD)
        cm = c < d
        m3 = cm[None, :, None] & valid[:, None, :]
        q = tl.load(q_base + c[None, :, None] * n_pix + po[:, None, :], mask=m3, other=0.0).to(tl.float32)
        g = tl.load(g_base + c[None, :, None] * n_pix + po[:, None, :], mask=m3, other=0.0).to(tl.float32)
        out_mask = cm[:, None] & (r < plane)[None, :]
        dk_at = dk_ptr + b * sdkv + (h * d + c)[:, None] * plane + r[None, :]
        tl.store(dk_at, tl.sum(ds[:, None, :] * q, axis=0).to(dk_ptr.dtype.element_ty), mask=out_mask)
        dv_at = dv_ptr + b * sdkv + (heads * d + h * d + c)[:, None] * plane + r[None, :]
        tl.store(dv_at, tl.sum(a[:, None, :] * g, axis=0).to(dv_ptr.dtype.element_ty), mask=out_mask)


def _planes(t: Tensor, dtype: torch.dtype) -> Tensor:
    """`t` when each batch element's (C, H, W) block is contiguous (channel chunks of the projection)."""
    t = t.to(dtype)
    _, c, h, w = t.shape
    return t if t.stride()[1:] == (h * w, w, 1) else t.contiguous()


def _taps_tensor(taps: list[int], device: torch.device) -> Tensor:
    if len(taps) // 2 > T_PAD:
        raise ValueError(f"pssa_triton: at most {T_PAD} taps, got {len(taps) // 2}")
    return torch.tensor(taps, dtype=torch.int32, device=device)


def pssa_fwd_triton(q: Tensor, k: Tensor, v: Tensor, base: Tensor | None, heads: int, taps: list[int],
                    stride: int) -> Tensor:
    """y = [base +] PSSA(q, k, v): (B, C, H', W') in the dtype of q."""
    dtype = q.dtype
    q, k, v = (_planes(t, dtype) for t in (q, k, v))
    b, c, height, width = k.shape
    h_out, w_out = q.shape[-2:]
    d = c // heads
    y = torch.empty(q.shape, dtype=dtype, device=q.device)
    base = None if base is None else _planes(base, dtype)
    grid = (b * heads, triton.cdiv(h_out * w_out, BLOCK_P))
    _pssa_fwd_kernel[grid](q, k, v, y if base is None else base, y, _taps_tensor(taps, q.device),
                           len(taps) // 2, heads, d, height, width, h_out, w_out, q.stride(0), k.stride(0),
                           v.stride(0), 0 if base is None else base.stride(0), y.stride(0), d ** -0.5,
                           HAS_BASE=base is not None, stride=stride, T=T_PAD, BP=BLOCK_P, BD=BLOCK_D)
    return y


def pssa_bwd_triton(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, heads: int, taps: list[int],
                    stride: int) -> tuple[Tensor, Tensor]:
    """(dq, dkv) with dkv (B, 2C, H, W) stacking dk and dv."""
    dtype = q.dtype
    q, k, v, grad = (_planes(t, dtype) for t in (q, k, v, grad))
    b, c, height, width = k.shape
    h_out, w_out = q.shape[-2:]
    d, n_taps = c // heads, len(taps) // 2
    taps_t = _taps_tensor(taps, q.device)
    dq = torch.empty(q.shape, dtype=dtype, device=q.device)
    dkv = torch.empty(b, 2 * c, height, width, dtype=dtype, device=q.device)
    a = torch.empty(b * heads, n_taps, h_out * w_out, dtype=torch.float32, device=q.device)
    ds = torch.empty_like(a)
    grid = (b * heads, triton.cdiv(h_out * w_out, BLOCK_P))
    _pssa_bwd_query_kernel[grid](grad, q, k, v, dq, a, ds, taps_t, n_taps, heads, d, height, width, h_out,
                                 w_out, grad.stride(0), q.stride(0), k.stride(0), v.stride(0), dq.stride(0),
                                 d ** -0.5, stride=stride, T=T_PAD, BP=BLOCK_P, BD=BLOCK_D)
    grid = (b * heads, triton.cdiv(height * width, BLOCK_P))
    _pssa_bwd_key_kernel[grid](grad, q, a, ds, dkv, dkv, taps_t, n_taps, heads, d, height, width, h_out,
                               w_out, grad.stride(0), q.stride(0), dkv.stride(0), stride=stride, T=T_PAD,
                               BP=BLOCK_P, BD=BLOCK_D)
    return dq, dkv


torch.library.impl("xvol::pssa_fwd", "CUDA", pssa_fwd_triton)
torch.library.impl("xvol::pssa_bwd", "CUDA", pssa_bwd_triton)
