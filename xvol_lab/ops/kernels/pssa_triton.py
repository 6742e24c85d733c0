"""Fused PSSA kernels in Triton (CUDA): the CUDA implementations of `xvol::pssa_fwd` / `xvol::pssa_bwd`.

One program per (batch*head, block of output pixels). The taps are compile-time constants (`TAPS`, a
tuple of (ty, tx) offsets: no tap tensor, no host-to-device copy per call) and the kernels loop over
them with `tl.static_range`, one (channels, pixels) gather of k or v per tap, so only the small
(taps, pixels) logit tile is padded (to the next power of two: 16 for dirs=8, 8 for dirs=4). The key
kernel loops over the taps at run time (`_tap` selects the constant offsets): unrolled, the compiler kept
every tap's rows, masks and weights live across its channel loop (255 registers and spills on sm_90a;
111 without unrolling, 109-128 for the other two kernels, `ptxas -v`). Every tensor
is addressed through its strides: NCHW, channels-last and the channel chunks of a 3C projection are read
and written in place, never copied. Accumulation in float32 for every input dtype; outputs take the
dtype of q (bf16 stays bf16) and the layout of q (`schemas.triton_output_format`). The backward recomputes
the logits; a second kernel gathers dk, dv per input pixel (no atomics). Block sizes and `num_warps` are
autotuned over `CONFIGS` per (head dim, pixel count); `config=` picks one (the interpreter tests run each).
Importing this module registers the CUDA kernels; `TRITON_INTERPRET=1` runs the launchers on CPU tensors.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from xvol_lab.ops.kernels.schemas import triton_output_format

CONFIGS = [  # (pixels, channels) per program block, and warps
    triton.Config({"BP": 32, "BD": 32}, num_warps=4),
    triton.Config({"BP": 64, "BD": 16}, num_warps=4),
    triton.Config({"BP": 64, "BD": 32}, num_warps=8),
]
AUTOTUNE_KEY = ["d", "n_pix"]


@triton.jit
def _at(p, w_out, ty: tl.constexpr, tx: tl.constexpr, stride: tl.constexpr, height, width, n_pix):
    """Row and column of tap (ty, tx) at output pixels p, and whether it lies inside the image."""
    yi = (p // w_out) * stride + ty
    xi = (p % w_out) * stride + tx
    return yi, xi, (p < n_pix) & (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)


@triton.jit
def _dot_taps(a_ptr, sac, sah, saw, b_ptr, sbc, sbh, sbw, p, d, w_out, height, width, n_pix,
              TAPS: tl.constexpr, stride: tl.constexpr, T_PAD: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr):
    """(T_PAD, BP) float32: sum_c a(c, p) b(c, p + t) for each tap t (a on the output grid, b gathered)
    and the (T_PAD, BP) mask of the valid taps."""
    tap = tl.arange(0, T_PAD)[:, None]
    out = tl.zeros((T_PAD, BP), dtype=tl.float32)
    valid = tl.zeros((T_PAD, BP), dtype=tl.int1)
    a_pix = (p // w_out) * sah + (p % w_out) * saw
    for t in tl.static_range(len(TAPS)):
        yi, xi, ok = _at(p, w_out, TAPS[t][0], TAPS[t][1], stride, height, width, n_pix)
        acc = tl.zeros((BP,), dtype=tl.float32)
        for c0 in range(0, d, BD):
            c = c0 + tl.arange(0, BD)
            cm = (c < d)[:, None]
            av = tl.load(a_ptr + c[:, None] * sac + a_pix[None, :], mask=cm & (p < n_pix)[None, :], other=0.0)
            bv = tl.load(b_ptr + c[:, None] * sbc + (yi * sbh + xi * sbw)[None, :], mask=cm & ok[None, :],
                         other=0.0)
            acc += tl.sum(av.to(tl.float32) * bv.to(tl.float32), axis=0)
        out = tl.where(tap == t, acc[None, :], out)
        valid = tl.where(tap == t, ok[None, :], valid)
    return out, valid


@triton.jit
def _tap(TAPS: tl.constexpr, t):
    """Offsets (ty, tx) of tap t, a runtime index, selected among the constant taps."""
    ty = 0
    tx = 0
    for j in tl.static_range(len(TAPS)):
        ty = tl.where(t == j, TAPS[j][0], ty)
        tx = tl.where(t == j, TAPS[j][1], tx)
    return ty, tx


@triton.jit
def _softmax(logits, valid, scale):
    z = tl.where(valid, logits * scale, float("-inf"))
    m = tl.max(z, axis=0)
    m = tl.where(m == float("-inf"), 0.0, m)  # padding pixels: every tap invalid
    e = tl.where(valid, tl.exp(z - m[None, :]), 0.0)
    s = tl.sum(e, axis=0)
    return e / tl.where(s == 0.0, 1.0, s)[None, :]


@triton.jit
def _row(tile, t: tl.constexpr, T_PAD: tl.constexpr):
    """Row t of a (T_PAD, BP) tile, as (BP,)."""
    return tl.sum(tl.where(tl.arange(0, T_PAD)[:, None] == t, tile, 0.0), axis=0)


@triton.jit
def _gather_sum(w, src_ptr, ssc, ssh, ssw, c0, p, d, w_out, height, width, n_pix, TAPS: tl.constexpr,
                stride: tl.constexpr, T_PAD: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr):
    """(BD, BP) float32: sum_t w_t(p) src(c, p + t) for channels c0 .. c0 + BD."""
    c = c0 + tl.arange(0, BD)
    cm = (c < d)[:, None]
    acc = tl.zeros((BD, BP), dtype=tl.float32)
    for t in tl.static_range(len(TAPS)):
        yi, xi, ok = _at(p, w_out, TAPS[t][0], TAPS[t][1], stride, height, width, n_pix)
        v = tl.load(src_ptr + c[:, None] * ssc + (yi * ssh + xi * ssw)[None, :], mask=cm & ok[None, :], other=0.0)
        acc += _row(w, t, T_PAD)[None, :] * v.to(tl.float32)
    return acc


@triton.jit
def _program_attention(q_ptr, k_ptr, heads, d, height, width, w_out, n_pix, sqb, sqc, sqh, sqw,
                       skb, skc, skh, skw, scale, TAPS: tl.constexpr, stride: tl.constexpr,
                       T_PAD: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr):
    """This program's batch b and head h, its output pixels p, the head's key base, and the softmax
    attention a (T_PAD, BP) over the taps."""
    bh = tl.program_id(0)
    b, h = bh // heads, bh % heads
    p = tl.program_id(1) * BP + tl.arange(0, BP)
    k_base = k_ptr + b * skb + h * d * skc
    logits, valid = _dot_taps(q_ptr + b * sqb + h * d * sqc, sqc, sqh, sqw, k_base, skc, skh, skw, p, d, w_out,
                              height, width, n_pix, TAPS, stride, T_PAD, BP, BD)
    return bh, b, h, p, k_base, _softmax(logits, valid, scale)


@triton.jit
def _pssa_fwd_kernel(q_ptr, k_ptr, v_ptr, base_ptr, y_ptr, heads, d, height, width, w_out, n_pix,
                     sqb, sqc, sqh, sqw, skb, skc, skh, skw, svb, svc, svh, svw, sbb, sbc, sbh, sbw,
                     syb, syc, syh, syw, scale, HAS_BASE: tl.constexpr, TAPS: tl.constexpr,
                     stride: tl.constexpr, T_PAD: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr):
    _, b, h, p, _, a = _program_attention(q_ptr, k_ptr, heads, d, height, width, w_out, n_pix, sqb, sqc, sqh, sqw,
                                          skb, skc, skh, skw, scale, TAPS, stride, T_PAD, BP, BD)
    pm = p < n_pix
    v_base = v_ptr + b * svb + h * d * svc
    oy, ox = p // w_out, p % w_out
    for c0 in range(0, d, BD):
        c = c0 + tl.arange(0, BD)
        out_mask = (c < d)[:, None] & pm[None, :]
        y = _gather_sum(a, v_base, svc, svh, svw, c0, p, d, w_out, height, width, n_pix,
                        TAPS, stride, T_PAD, BP, BD)
        if HAS_BASE:
            y += tl.load(base_ptr + b * sbb + (h * d + c)[:, None] * sbc + (oy * sbh + ox * sbw)[None, :],
                         mask=out_mask, other=0.0).to(tl.float32)
        y_at = y_ptr + b * syb + (h * d + c)[:, None] * syc + (oy * syh + ox * syw)[None, :]
        tl.store(y_at, y.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _pssa_bwd_query_kernel(g_ptr, q_ptr, k_ptr, v_ptr, dq_ptr, a_ptr, ds_ptr, heads, d, height, width, w_out,
                           n_pix, sgb, sgc, sgh, sgw, sqb, sqc, sqh, sqw, skb, skc, skh, skw, svb, svc, svh, svw,
                           sdb, sdc, sdh, sdw, scale, TAPS: tl.constexpr, stride: tl.constexpr,
                           T_PAD: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr):
    """Per output pixel: a and ds = a (da - <a, da>) * scale into (BH, T, P) float32 buffers, and dq."""
    bh, b, h, p, k_base, a = _program_attention(q_ptr, k_ptr, heads, d, height, width, w_out, n_pix,
                                                sqb, sqc, sqh, sqw, skb, skc, skh, skw, scale,
                                                TAPS, stride, T_PAD, BP, BD)
    pm = p < n_pix
    v_base = v_ptr + b * svb + h * d * svc
    g_base = g_ptr + b * sgb + h * d * sgc
    da, _ = _dot_taps(g_base, sgc, sgh, sgw, v_base, svc, svh, svw, p, d, w_out, height, width, n_pix,
                            TAPS, stride, T_PAD, BP, BD)  # <g(p), v(p + t)>
    ds = a * (da - tl.sum(a * da, axis=0)[None, :]) * scale
    t = tl.arange(0, T_PAD)
    buf = bh * len(TAPS) * n_pix + t[:, None] * n_pix + p[None, :]
    buf_mask = (t < len(TAPS))[:, None] & pm[None, :]
    tl.store(a_ptr + buf, a, mask=buf_mask)
    tl.store(ds_ptr + buf, ds, mask=buf_mask)
    oy, ox = p // w_out, p % w_out
    for c0 in range(0, d, BD):
        c = c0 + tl.arange(0, BD)
        dq = _gather_sum(ds, k_base, skc, skh, skw, c0, p, d, w_out, height, width, n_pix,
                         TAPS, stride, T_PAD, BP, BD)
        tl.store(dq_ptr + b * sdb + (h * d + c)[:, None] * sdc + (oy * sdh + ox * sdw)[None, :],
                 dq.to(dq_ptr.dtype.element_ty), mask=(c < d)[:, None] & pm[None, :])


@triton.jit
def _pssa_bwd_key_kernel(g_ptr, q_ptr, a_ptr, ds_ptr, dk_ptr, dv_ptr, heads, d, height, width, h_out, w_out,
                         n_pix, sgb, sgc, sgh, sgw, sqb, sqc, sqh, sqw, skb, skc, skh, skw, svb, svc, svh, svw,
                         TAPS: tl.constexpr, stride: tl.constexpr, BP: tl.constexpr, BD: tl.constexpr):
    """Per input pixel r: dk(r) = sum_t ds_t(p) q(p), dv(r) = sum_t a_t(p) g(p), p = (r - t) / stride."""
    bh = tl.program_id(0)
    b, h = bh // heads, bh % heads
    plane = height * width
    r = tl.program_id(1) * BP + tl.arange(0, BP)
    ry, rx = r // width, r % width
    q_base = q_ptr + b * sqb + h * d * sqc
    g_base = g_ptr + b * sgb + h * d * sgc
    for c0 in range(0, d, BD):
        c = c0 + tl.arange(0, BD)
        cm = (c < d)[:, None]
        dk = tl.zeros((BD, BP), dtype=tl.float32)
        dv = tl.zeros((BD, BP), dtype=tl.float32)
        for t in range(len(TAPS)):  # a dynamic loop: one tap's rows, masks and weights live at a time
            ty, tx = _tap(TAPS, t)
            ys, xs = ry - ty, rx - tx  # stride * output row / column
            yo, xo = ys // stride, xs // stride
            ok = ((r < plane) & (ys >= 0) & (xs >= 0) & (ys % stride == 0) & (xs % stride == 0) & (yo < h_out)
                  & (xo < w_out))
            buf = bh * len(TAPS) * n_pix + t * n_pix + yo * w_out + xo
            a = tl.load(a_ptr + buf, mask=ok, other=0.0)
            ds = tl.load(ds_ptr + buf, mask=ok, other=0.0)
            m2 = cm & ok[None, :]
            q = tl.load(q_base + c[:, None] * sqc + (yo * sqh + xo * sqw)[None, :], mask=m2, other=0.0)
            g = tl.load(g_base + c[:, None] * sgc + (yo * sgh + xo * sgw)[None, :], mask=m2, other=0.0)
            dk += ds[None, :] * q.to(tl.float32)
            dv += a[None, :] * g.to(tl.float32)
        out_mask = cm & (r < plane)[None, :]
        pix = (ry * skh + rx * skw)[None, :]
        tl.store(dk_ptr + b * skb + (h * d + c)[:, None] * skc + pix, dk.to(dk_ptr.dtype.element_ty), mask=out_mask)
        pix = (ry * svh + rx * svw)[None, :]
        tl.store(dv_ptr + b * svb + (h * d + c)[:, None] * svc + pix, dv.to(dv_ptr.dtype.element_ty), mask=out_mask)


_TUNED = {kernel: triton.autotune(configs=CONFIGS, key=AUTOTUNE_KEY)(kernel)
          for kernel in (_pssa_fwd_kernel, _pssa_bwd_query_kernel)}
_TUNED[_pssa_bwd_key_kernel] = triton.autotune(configs=CONFIGS, key=["d", "height", "width"])(_pssa_bwd_key_kernel)


def _launch(kernel, grid_pixels: int, rows: int, config: triton.Config | None, *args, **kwargs) -> None:
    """Run `kernel` autotuned, or with `config`: one program per (row, block of `grid_pixels`)."""
    grid = lambda meta: (rows, triton.cdiv(grid_pixels, meta["BP"]))  # noqa: E731
    if config is None and os.environ.get("TRITON_INTERPRET") == "1":
        config = CONFIGS[0]  # the interpreter has no device timer to autotune with
    if config is None:
        _TUNED[kernel][grid](*args, **kwargs)
    else:
        kernel[grid](*args, **kwargs, **config.kwargs, num_warps=config.num_warps)


def _taps(taps: list[int]) -> tuple[tuple[int, int], ...]:
    return tuple(zip(taps[0::2], taps[1::2], strict=True))


def _strides(t: Tensor | None) -> tuple[int, int, int, int]:
    return (0, 0, 0, 0) if t is None else t.stride()


def pssa_fwd_triton(q: Tensor, k: Tensor, v: Tensor, base: Tensor | None, heads: int, taps: list[int],
                    stride: int, config: triton.Config | None = None) -> Tensor:
    """y = [base +] PSSA(q, k, v): (B, C, H', W') in the dtype and layout of q."""
    dtype = q.dtype
    k, v = k.to(dtype), v.to(dtype)
    base = None if base is None else base.to(dtype)
    b, c, height, width = k.shape
    h_out, w_out = q.shape[-2:]
    d = c // heads
    y = torch.empty(q.shape, dtype=dtype, device=q.device, memory_format=triton_output_format(q))
    tap_pairs = _taps(taps)
    _launch(_pssa_fwd_kernel, h_out * w_out, b * heads, config, q, k, v, y if base is None else base, y, heads, d,
            height, width, w_out, h_out * w_out, *q.stride(), *k.stride(), *v.stride(), *_strides(base),
            *y.stride(), d ** -0.5, HAS_BASE=base is not None, TAPS=tap_pairs, stride=stride,
            T_PAD=triton.next_power_of_2(len(tap_pairs)))
    return y


def pssa_bwd_triton(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, heads: int, taps: list[int],
                    stride: int, config: triton.Config | None = None) -> tuple[Tensor, Tensor]:
    """(dq, dkv) with dkv (B, 2C, H, W) stacking dk and dv, in the dtype and layout of q."""
    dtype = q.dtype
    k, v, grad = k.to(dtype), v.to(dtype), grad.to(dtype)
    b, c, height, width = k.shape
    h_out, w_out = q.shape[-2:]
    d, tap_pairs = c // heads, _taps(taps)
    n_pix = h_out * w_out
    fmt = triton_output_format(q)
    dq = torch.empty(q.shape, dtype=dtype, device=q.device, memory_format=fmt)
    dkv = torch.empty(b, 2 * c, height, width, dtype=dtype, device=q.device, memory_format=fmt)
    dk, dv = dkv[:, :c], dkv[:, c:]
    a = torch.empty(b * heads, len(tap_pairs), n_pix, dtype=torch.float32, device=q.device)
    ds = torch.empty_like(a)
    _launch(_pssa_bwd_query_kernel, n_pix, b * heads, config, grad, q, k, v, dq, a, ds, heads, d, height, width,
            w_out, n_pix, *grad.stride(), *q.stride(), *k.stride(), *v.stride(), *dq.stride(), d ** -0.5,
            TAPS=tap_pairs, stride=stride, T_PAD=triton.next_power_of_2(len(tap_pairs)))
    _launch(_pssa_bwd_key_kernel, height * width, b * heads, config, grad, q, a, ds, dk, dv, heads, d, height,
            width, h_out, w_out, n_pix, *grad.stride(), *q.stride(), *dk.stride(), *dv.stride(), TAPS=tap_pairs,
            stride=stride)
    return dq, dkv


torch.library.impl("xvol::pssa_fwd", "CUDA", pssa_fwd_triton)
torch.library.impl("xvol::pssa_bwd", "CUDA", pssa_bwd_triton)
