// Fused Pixel Shift Self-Attention on CPU (float32, float64), registered as xvol::pssa_fwd / pssa_bwd.
//
// Forward: one pass per (batch, head, output row): the logits <q(p), k(p+t)>/sqrt(d) for every tap t,
// the softmax over the valid taps (out-of-image taps excluded), and y(p) = sum_t a(p, t) v(p+t), plus an
// optional `base` added (the deploy form's convolution output). No shifted copy is materialised.
// Backward: recomputes the logits and products from q, k, v (nothing else is saved), in two passes:
//   1. per output row: a, da_t = <g, v_t>, ds_t = a_t (da_t - sum_u a_u da_u) / sqrt(d), dq = sum_t ds_t k_t;
//   2. per input row r (race-free gather): dk(r) += ds_t(p) q(p), dv(r) += a_t(p) g(p) for p = (r - t)/s.
// Tensors are contiguous NCHW: q (B, C, H', W') on the stride grid, k and v (B, C, H, W); C = heads * d.
// Taps are passed flat: (ty0, tx0, ty1, tx1, ...). The centre tap is always valid, so no row is empty.
//
// Stride 1 (the common case) runs a register-blocked path: a plane is flat, so tap t is the constant
// offset ty*W + tx; a block of N pixels keeps the T logits in vector registers over the d channels
// (1 + T loads per T fused multiply-adds), masks the out-of-image taps per pixel (row wrap-around
// included), and applies a vector exp. Blocks whose shifted reads would leave the plane, and stride 2,
// take the row path below.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

// Channel rows lie H*W apart: too many streams for the hardware prefetcher, so the rows the next
// output row will read are prefetched while this one is computed (a 2-4x speed-up measured).
template <typename scalar_t>
inline void prefetch_row(const scalar_t* row, int64_t n) {
  for (int64_t i = 0; i < n; i += 64 / static_cast<int64_t>(sizeof(scalar_t))) __builtin_prefetch(row + i);
}

template <typename T>
struct View {  // an NCHW tensor whose (C, H, W) block is contiguous; sb: its batch stride
  T* p = nullptr;
  int64_t sb = 0, plane = 0, C = 1;
  T* ch(int64_t c) const { return p + (c / C) * sb + (c % C) * plane; }  // channel c counted over the batch
};

struct Geometry {
  int64_t B, heads, d, H, W, Ho, Wo, T;
  std::vector<int64_t> ty, tx, lo, hi;  // tap offsets; valid output columns [lo, hi) of each tap
  std::vector<int64_t> dy;              // the distinct row offsets ty

  Geometry(const at::Tensor& q, const at::Tensor& k, int64_t heads_, at::IntArrayRef taps, int64_t s)
      : B(k.size(0)), heads(heads_), d(k.size(1) / heads_), H(k.size(2)), W(k.size(3)),
        Ho(q.size(2)), Wo(q.size(3)), T(static_cast<int64_t>(taps.size()) / 2) {
    for (int64_t t = 0; t < T; ++t) {
      ty.push_back(taps[2 * t]);
      tx.push_back(taps[2 * t + 1]);
      lo.push_back(std::min(Wo, std::max<int64_t>(0, -floor_div(tx[t], s))));  // ceil(-tx / s)
      hi.push_back(std::max(lo[t], std::min(Wo, floor_div(W - 1 - tx[t], s) + 1)));
      if (std::find(dy.begin(), dy.end(), ty[t]) == dy.end()) dy.push_back(ty[t]);
    }
  }
  // Prefetch channel ch's rows of q-like (H', W') and k-like (H, W) tensors for output row yo.
  template <typename scalar_t>
  void prefetch(View<const scalar_t> qlike, View<const scalar_t> klike, int64_t ch, int64_t yo, int64_t s) const {
    if (yo >= Ho) return;
    if (qlike.p) prefetch_row(qlike.ch(ch) + yo * Wo, Wo);
    for (int64_t oy : dy) {
      const int64_t r = yo * s + oy;
      if (r >= 0 && r < H) prefetch_row(klike.ch(ch) + r * W, W);
    }
  }
  bool row_valid(int64_t t, int64_t yo, int64_t s) const {
    const int64_t r = yo * s + ty[t];
    return r >= 0 && r < H;
  }
};

// Softmax weights a[t * Wo + xo] of output row (bh, yo): 0 for taps outside the image.
template <typename scalar_t, int S>
void attention_row(View<const scalar_t> q, View<const scalar_t> k, const Geometry& g, int64_t bh, int64_t yo,
                   scalar_t* a, scalar_t* m, scalar_t* sum) {
  const int64_t Wo = g.Wo;
  const scalar_t neg_inf = -std::numeric_limits<scalar_t>::infinity();
  const scalar_t scale = scalar_t(1) / std::sqrt(scalar_t(g.d));
  std::fill(a, a + g.T * Wo, neg_inf);
  for (int64_t t = 0; t < g.T; ++t) {
    if (g.row_valid(t, yo, S)) std::fill(a + t * Wo + g.lo[t], a + t * Wo + g.hi[t], scalar_t(0));
  }
  for (int64_t c = 0; c < g.d; ++c) {
    const int64_t ch = bh * g.d + c;
    const scalar_t* qrow = q.ch(ch) + yo * Wo;
    g.prefetch(q, k, ch, yo + 1, S);
    for (int64_t t = 0; t < g.T; ++t) {
      if (!g.row_valid(t, yo, S)) continue;
      const scalar_t* krow = k.ch(ch) + (yo * S + g.ty[t]) * g.W + g.tx[t];
      scalar_t* aw = a + t * Wo;
      for (int64_t xo = g.lo[t]; xo < g.hi[t]; ++xo) aw[xo] += qrow[xo] * krow[xo * S];
    }
  }
  std::fill(m, m + Wo, neg_inf);
  std::fill(sum, sum + Wo, scalar_t(0));
  for (int64_t t = 0; t < g.T; ++t) {
    scalar_t* aw = a + t * Wo;
    for (int64_t xo = 0; xo < Wo; ++xo) m[xo] = std::max(m[xo], aw[xo] * scale);
  }
  for (int64_t t = 0; t < g.T; ++t) {
    scalar_t* aw = a + t * Wo;
    for (int64_t xo = 0; xo < Wo; ++xo) {
      aw[xo] = std::exp(aw[xo] * scale - m[xo]);  // exp(-inf) = 0 for invalid taps
      sum[xo] += aw[xo];
    }
  }
  for (int64_t t = 0; t < g.T; ++t) {
    scalar_t* aw = a + t * Wo;
    for (int64_t xo = 0; xo < Wo; ++xo) aw[xo] /= sum[xo];
  }
}

template <typename scalar_t, int S>
void forward_impl(View<const scalar_t> q, View<const scalar_t> k, View<const scalar_t> v, View<const scalar_t> base,
                  View<scalar_t> y,
                  const Geometry& g) {
  const int64_t Wo = g.Wo, plane_o = g.Ho * g.Wo, plane = g.H * g.W;
  at::parallel_for(0, g.B * g.heads * g.Ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> a(g.T * Wo), m(Wo), sum(Wo);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t yo = job % g.Ho, bh = job / g.Ho;
      attention_row<scalar_t, S>(q, k, g, bh, yo, a.data(), m.data(), sum.data());
      for (int64_t c = 0; c < g.d; ++c) {
        const int64_t ch = bh * g.d + c;
        scalar_t* yrow = y.ch(ch) + yo * Wo;
        g.prefetch(base, v, ch, yo + 1, S);
        if (base.p) {
          std::copy(base.ch(ch) + yo * Wo, base.ch(ch) + (yo + 1) * Wo, yrow);
        } else {
          std::fill(yrow, yrow + Wo, scalar_t(0));
        }
        for (int64_t t = 0; t < g.T; ++t) {
          if (!g.row_valid(t, yo, S)) continue;
          const scalar_t* vrow = v.ch(ch) + (yo * S + g.ty[t]) * g.W + g.tx[t];
          const scalar_t* aw = a.data() + t * Wo;
          for (int64_t xo = g.lo[t]; xo < g.hi[t]; ++xo) yrow[xo] += aw[xo] * vrow[xo * S];
        }
      }
    }
  });
}

template <typename scalar_t, int S>
void backward_impl(View<const scalar_t> gy, View<const scalar_t> q, View<const scalar_t> k, View<const scalar_t> v,
                   View<scalar_t> dq, View<scalar_t> dk, View<scalar_t> dv, scalar_t* A, scalar_t* DS,
                   const Geometry& g) {
  const int64_t Wo = g.Wo, plane_o = g.Ho * g.Wo, plane = g.H * g.W;
  const scalar_t scale = scalar_t(1) / std::sqrt(scalar_t(g.d));
  // Pass 1: per output row, the weights a and the logit gradients ds (kept for pass 2), and dq.
  at::parallel_for(0, g.B * g.heads * g.Ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> m(Wo), sum(Wo), gdot(Wo);
    for (int64_t job = begin; job < end; ++job) {
      const int64_t yo = job % g.Ho, bh = job / g.Ho;
      scalar_t* a = A + bh * g.T * plane_o;  // (T, H', W') of this (batch, head); row yo used here
      scalar_t* ds = DS + bh * g.T * plane_o;
      std::vector<scalar_t> arow(g.T * Wo), da(g.T * Wo, scalar_t(0));
      attention_row<scalar_t, S>(q, k, g, bh, yo, arow.data(), m.data(), sum.data());
      for (int64_t c = 0; c < g.d; ++c) {
        const int64_t ch = bh * g.d + c;
        const scalar_t* grow = gy.ch(ch) + yo * Wo;
        g.prefetch(gy, v, ch, yo + 1, S);
        for (int64_t t = 0; t < g.T; ++t) {
          if (!g.row_valid(t, yo, S)) continue;
          const scalar_t* vrow = v.ch(ch) + (yo * S + g.ty[t]) * g.W + g.tx[t];
          scalar_t* dat = da.data() + t * Wo;
          for (int64_t xo = g.lo[t]; xo < g.hi[t]; ++xo) dat[xo] += grow[xo] * vrow[xo * S];
        }
      }
      std::fill(gdot.begin(), gdot.end(), scalar_t(0));
      for (int64_t t = 0; t < g.T; ++t) {
        for (int64_t xo = 0; xo < Wo; ++xo) gdot[xo] += arow[t * Wo + xo] * da[t * Wo + xo];
      }
      for (int64_t t = 0; t < g.T; ++t) {
        scalar_t* aw = a + t * plane_o + yo * Wo;
        scalar_t* dst = ds + t * plane_o + yo * Wo;
        for (int64_t xo = 0; xo < Wo; ++xo) {
          aw[xo] = arow[t * Wo + xo];
          dst[xo] = arow[t * Wo + xo] * (da[t * Wo + xo] - gdot[xo]) * scale;
        }
      }
      for (int64_t c = 0; c < g.d; ++c) {
        const int64_t ch = bh * g.d + c;
        scalar_t* dqrow = dq.ch(ch) + yo * Wo;
        std::fill(dqrow, dqrow + Wo, scalar_t(0));
        for (int64_t t = 0; t < g.T; ++t) {
          if (!g.row_valid(t, yo, S)) continue;
          const scalar_t* krow = k.ch(ch) + (yo * S + g.ty[t]) * g.W + g.tx[t];
          const scalar_t* dst = ds + t * plane_o + yo * Wo;
          for (int64_t xo = g.lo[t]; xo < g.hi[t]; ++xo) dqrow[xo] += dst[xo] * krow[xo * S];
        }
      }
    }
  });
  // Pass 2: per input row r, gather from the output rows yo with yo * S + ty = r.
  at::parallel_for(0, g.B * g.heads * g.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t r = job % g.H, bh = job / g.H;
      const scalar_t* a = A + bh * g.T * plane_o;
      const scalar_t* ds = DS + bh * g.T * plane_o;
      for (int64_t c = 0; c < g.d; ++c) {
        const int64_t ch = bh * g.d + c;
        scalar_t* dkrow = dk.ch(ch) + r * g.W;
        scalar_t* dvrow = dv.ch(ch) + r * g.W;
        std::fill(dkrow, dkrow + g.W, scalar_t(0));
        std::fill(dvrow, dvrow + g.W, scalar_t(0));
        for (int64_t t = 0; t < g.T; ++t) {
          const int64_t off = r - g.ty[t];
          if (off < 0 || off % S != 0 || off / S >= g.Ho) continue;
          const int64_t yo = off / S;
          const scalar_t* qrow = q.ch(ch) + yo * Wo;
          const scalar_t* grow = gy.ch(ch) + yo * Wo;
          const scalar_t* dst = ds + t * plane_o + yo * Wo;
          const scalar_t* aw = a + t * plane_o + yo * Wo;
          scalar_t* dkt = dkrow + g.tx[t];
          scalar_t* dvt = dvrow + g.tx[t];
          for (int64_t xo = g.lo[t]; xo < g.hi[t]; ++xo) {
            dkt[xo * S] += dst[xo] * qrow[xo];
            dvt[xo * S] += aw[xo] * grow[xo];
          }
        }
      }
    }
  });
}

// ---- Stride 1: register-blocked path over the flat plane ------------------------------------------

template <typename scalar_t>
struct Lanes {
  static constexpr int N = 64 / static_cast<int>(sizeof(scalar_t));
  typedef scalar_t V __attribute__((vector_size(64)));
  typedef std::conditional_t<sizeof(scalar_t) == 4, int32_t, int64_t> I __attribute__((vector_size(64)));
};

template <typename V, typename S>
inline V loadu(const S* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename S>
inline void storeu(S* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

template <typename V>
inline V vmax(V a, V b) { return a > b ? a : b; }

// exp on a vector: x = n ln2 + r, |r| <= ln2/2, Taylor polynomial (degree 7 float, 13 double: below
// the type's rounding), times 2^n built in the exponent bits. Inputs below the range give ~0 (callers
// zero the masked taps exactly).
template <typename scalar_t>
inline typename Lanes<scalar_t>::V vexp(typename Lanes<scalar_t>::V x) {
  using V = typename Lanes<scalar_t>::V;
  using I = typename Lanes<scalar_t>::I;
  constexpr bool f32 = sizeof(scalar_t) == 4;
  constexpr scalar_t lo = f32 ? -87.0 : -708.0, hi = f32 ? 88.0 : 709.0;
  constexpr int degree = f32 ? 7 : 13;
  x = x < lo ? V{} + lo : x;
  x = x > hi ? V{} + hi : x;
  const V n = __builtin_convertvector(__builtin_convertvector(x * scalar_t(1.4426950408889634) +
                                                              (x < 0 ? V{} - scalar_t(0.5) : V{} + scalar_t(0.5)),
                                                              I), V);  // round to nearest
  const V r = x - n * scalar_t(0.693145751953125) - n * scalar_t(1.4286068203094173e-06);
  V p = V{} + scalar_t(1);
  for (int i = degree; i >= 1; --i) p = p * r * (scalar_t(1) / scalar_t(i)) + scalar_t(1);
  const I bits = (__builtin_convertvector(n, I) + (f32 ? 127 : 1023)) << (f32 ? 23 : 52);
  V scale;
  std::memcpy(&scale, &bits, sizeof(V));
  return p * scale;
}

struct Flat {
  int64_t P, W, H;
  std::vector<int64_t> off;  // flat offset ty*W + tx of each tap
  int64_t min_off, max_off;
  int64_t cs;           // channel stride: P, or P plus zero margins in the padded layout
  bool padded = false;  // every block may read M = max |off| before and N + M after its plane

  explicit Flat(const Geometry& g) : P(g.H * g.W), W(g.W), H(g.H), cs(g.H * g.W) {
    for (int64_t t = 0; t < g.T; ++t) off.push_back(g.ty[t] * g.W + g.tx[t]);
    min_off = *std::min_element(off.begin(), off.end());
    max_off = *std::max_element(off.begin(), off.end());
  }
  int64_t margin() const { return std::max(-min_off, max_off); }
  // A block [p0, p0 + n) whose reads p + off (sign = +1) or p - off (sign = -1) all stay in the plane.
  bool safe(int64_t p0, int64_t n, int sign) const {
    if (padded) return true;
    const int64_t lo = sign > 0 ? min_off : -max_off, hi = sign > 0 ? max_off : -min_off;
    return p0 + n <= P && p0 + lo >= 0 && p0 + n - 1 + hi < P;
  }
  // Small planes (most blocks touch a border) run faster on a zero-padded copy, all blocks vectorised.
  template <int N>
  bool wants_padding() const {
    int64_t unsafe = 0, nb = (P + N - 1) / N;
    for (int64_t b = 0; b < nb; ++b) unsafe += !safe(b * N, N, +1) || !safe(b * N, N, -1);
    return 4 * unsafe > nb;
  }
  bool valid(const Geometry& g, int64_t t, int64_t p) const {
    const int64_t y = p / W + g.ty[t], x = p % W + g.tx[t];
    return y >= 0 && y < H && x >= 0 && x < W;
  }
};

// Softmax weights of one pixel block (masked taps exactly 0), from the accumulated logits.
template <typename scalar_t, int T>
inline void block_softmax(typename Lanes<scalar_t>::V (&lg)[T], const Geometry& g, const Flat& f, int64_t p0,
                          scalar_t scale) {
  using V = typename Lanes<scalar_t>::V;
  constexpr int N = Lanes<scalar_t>::N;
  V mask[T];
  for (int t = 0; t < T; ++t) {
    scalar_t m[N];
    for (int i = 0; i < N; ++i) m[i] = f.valid(g, t, p0 + i) ? scalar_t(1) : scalar_t(0);
    mask[t] = loadu<V>(m);
  }
  const scalar_t big = std::numeric_limits<scalar_t>::max() / 4;
  V mx = V{} - big;
  for (int t = 0; t < T; ++t) {
    lg[t] = lg[t] * scale * mask[t] + (mask[t] - scalar_t(1)) * big;
    mx = vmax(mx, lg[t]);
  }
  V sum = V{};
  for (int t = 0; t < T; ++t) {
    lg[t] = vexp<scalar_t>(lg[t] - mx) * mask[t];
    sum += lg[t];
  }
  const V inv = sum > V{} ? scalar_t(1) / sum : V{};  // padding pixels past the plane: no valid tap
  for (int t = 0; t < T; ++t) lg[t] *= inv;
}

// One pixel of a block the vector path cannot take: logits, softmax and (optionally) y, in scalar code.
template <typename scalar_t, int T>
inline void pixel_weights(const scalar_t* q, const scalar_t* k, const Geometry& g, const Flat& f, int64_t p,
                          scalar_t scale, scalar_t (&a)[T]) {
  scalar_t mx = -std::numeric_limits<scalar_t>::infinity(), sum = 0;
  for (int t = 0; t < T; ++t) {
    if (!f.valid(g, t, p)) {
      a[t] = -std::numeric_limits<scalar_t>::infinity();
      continue;
    }
    scalar_t acc = 0;
    for (int64_t c = 0; c < g.d; ++c) acc += q[c * f.cs + p] * k[c * f.cs + p + f.off[t]];
    a[t] = acc * scale;
    mx = std::max(mx, a[t]);
  }
  for (int t = 0; t < T; ++t) {
    a[t] = std::exp(a[t] - mx);
    sum += a[t];
  }
  for (int t = 0; t < T; ++t) a[t] /= sum;
}

template <typename scalar_t, int T>
void forward_flat(View<const scalar_t> q, View<const scalar_t> k, View<const scalar_t> v, View<const scalar_t> base,
                  View<scalar_t> y, const Geometry& g, const Flat& f) {
  using V = typename Lanes<scalar_t>::V;
  constexpr int N = Lanes<scalar_t>::N;
  const int64_t P = f.P, CS = f.cs, nb = (P + N - 1) / N;
  const scalar_t scale = scalar_t(1) / std::sqrt(scalar_t(g.d));
  at::parallel_for(0, g.B * g.heads * nb, 8, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t bh = job / nb, p0 = (job % nb) * N;
      const int64_t ch0 = bh * g.d;
      const scalar_t *qb = q.ch(ch0), *kb = k.ch(ch0), *vb = v.ch(ch0), *bb = base.p ? base.ch(ch0) : nullptr;
      scalar_t* yb = y.ch(ch0);
      if (f.safe(p0, N, +1)) {
        V lg[T] = {};
        for (int64_t c = 0; c < g.d; ++c) {
          const int64_t cp = c * CS + p0;
          __builtin_prefetch(qb + cp + 4 * N);
          __builtin_prefetch(kb + cp + 4 * N - f.W);
          __builtin_prefetch(kb + cp + 4 * N + f.W);
          const V qc = loadu<V>(qb + cp);
          for (int t = 0; t < T; ++t) lg[t] += qc * loadu<V>(kb + cp + f.off[t]);
        }
        block_softmax<scalar_t, T>(lg, g, f, p0, scale);
        for (int64_t c = 0; c < g.d; ++c) {
          const int64_t cp = c * CS + p0;
          __builtin_prefetch(vb + cp + 4 * N - f.W);
          __builtin_prefetch(vb + cp + 4 * N + f.W);
          V out = bb ? loadu<V>(bb + cp) : V{};
          for (int t = 0; t < T; ++t) out += lg[t] * loadu<V>(vb + cp + f.off[t]);
          storeu(yb + cp, out);
        }
        continue;
      }
      for (int64_t p = p0; p < std::min(P, p0 + N); ++p) {
        scalar_t a[T];
        pixel_weights<scalar_t, T>(qb, kb, g, f, p, scale, a);
        for (int64_t c = 0; c < g.d; ++c) {
          scalar_t out = bb ? bb[c * CS + p] : scalar_t(0);
          for (int t = 0; t < T; ++t) {
            if (a[t] != scalar_t(0)) out += a[t] * vb[c * CS + p + f.off[t]];
          }
          yb[c * CS + p] = out;
        }
      }
    }
  });
}

template <typename scalar_t, int T>
void backward_flat(View<const scalar_t> gy, View<const scalar_t> q, View<const scalar_t> k, View<const scalar_t> v,
                   View<scalar_t> dq, View<scalar_t> dk, View<scalar_t> dv, scalar_t* A, scalar_t* DS,
                   const Geometry& g, const Flat& f) {
  using V = typename Lanes<scalar_t>::V;
  constexpr int N = Lanes<scalar_t>::N;
  const int64_t P = f.P, CS = f.cs, nb = (P + N - 1) / N;
  const scalar_t scale = scalar_t(1) / std::sqrt(scalar_t(g.d));
  // Pass 1: a, ds = a (da - <a, da>) / sqrt(d) into A, DS (bh, T, P); dq = sum_t ds_t k(p + t).
  at::parallel_for(0, g.B * g.heads * nb, 8, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t bh = job / nb, p0 = (job % nb) * N;
      const int64_t ch0 = bh * g.d;
      const scalar_t *qb = q.ch(ch0), *kb = k.ch(ch0), *vb = v.ch(ch0), *gb = gy.ch(ch0);
      scalar_t *dqb = dq.ch(ch0), *Ab = A + bh * T * CS, *DSb = DS + bh * T * CS;
      if (f.safe(p0, N, +1)) {
        V a[T] = {}, da[T] = {};
        for (int64_t c = 0; c < g.d; ++c) {
          const int64_t cp = c * CS + p0;
          const V qc = loadu<V>(qb + cp), gc = loadu<V>(gb + cp);
          for (int t = 0; t < T; ++t) {
            a[t] += qc * loadu<V>(kb + cp + f.off[t]);
            da[t] += gc * loadu<V>(vb + cp + f.off[t]);
          }
        }
        block_softmax<scalar_t, T>(a, g, f, p0, scale);
        V gdot = V{};
        for (int t = 0; t < T; ++t) gdot += a[t] * da[t];
        for (int t = 0; t < T; ++t) {
          da[t] = a[t] * (da[t] - gdot) * scale;  // now ds
          storeu(Ab + t * CS + p0, a[t]);
          storeu(DSb + t * CS + p0, da[t]);
        }
        for (int64_t c = 0; c < g.d; ++c) {
          const int64_t cp = c * CS + p0;
          V acc = V{};
          for (int t = 0; t < T; ++t) acc += da[t] * loadu<V>(kb + cp + f.off[t]);
          storeu(dqb + cp, acc);
        }
        continue;
      }
      for (int64_t p = p0; p < std::min(P, p0 + N); ++p) {
        scalar_t a[T], da[T] = {}, gdot = 0;
        pixel_weights<scalar_t, T>(qb, kb, g, f, p, scale, a);
        for (int t = 0; t < T; ++t) {
          if (a[t] == scalar_t(0) && !f.valid(g, t, p)) continue;
          for (int64_t c = 0; c < g.d; ++c) da[t] += gb[c * CS + p] * vb[c * CS + p + f.off[t]];
          gdot += a[t] * da[t];
        }
        for (int t = 0; t < T; ++t) {
          Ab[t * CS + p] = a[t];
          DSb[t * CS + p] = f.valid(g, t, p) ? a[t] * (da[t] - gdot) * scale : scalar_t(0);
        }
        for (int64_t c = 0; c < g.d; ++c) {
          scalar_t acc = 0;
          for (int t = 0; t < T; ++t) {
            if (f.valid(g, t, p)) acc += DSb[t * CS + p] * kb[c * CS + p + f.off[t]];
          }
          dqb[c * CS + p] = acc;
        }
      }
    }
  });
  // Pass 2: dk(r) = sum_t ds_t(r - t) q(r - t), dv(r) = sum_t a_t(r - t) g(r - t) (A, DS are 0 where
  // tap t is invalid at r - t, which also covers the row wrap-around of the flat offsets).
  at::parallel_for(0, g.B * g.heads * nb, 8, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t bh = job / nb, r0 = (job % nb) * N;
      const int64_t ch0 = bh * g.d;
      const scalar_t *qb = q.ch(ch0), *gb = gy.ch(ch0), *Ab = A + bh * T * CS, *DSb = DS + bh * T * CS;
      scalar_t *dkb = dk.ch(ch0), *dvb = dv.ch(ch0);
      if (f.safe(r0, N, -1)) {
        V a[T], ds[T];
        for (int t = 0; t < T; ++t) {
          a[t] = loadu<V>(Ab + t * CS + r0 - f.off[t]);
          ds[t] = loadu<V>(DSb + t * CS + r0 - f.off[t]);
        }
        for (int64_t c = 0; c < g.d; ++c) {
          const int64_t cp = c * CS + r0;
          V acck = V{}, accv = V{};
          for (int t = 0; t < T; ++t) {
            acck += ds[t] * loadu<V>(qb + cp - f.off[t]);
            accv += a[t] * loadu<V>(gb + cp - f.off[t]);
          }
          storeu(dkb + cp, acck);
          storeu(dvb + cp, accv);
        }
        continue;
      }
      for (int64_t r = r0; r < std::min(P, r0 + N); ++r) {
        for (int64_t c = 0; c < g.d; ++c) {
          scalar_t acck = 0, accv = 0;
          for (int t = 0; t < T; ++t) {
            const int64_t p = r - f.off[t];
            if (p < 0 || p >= P) continue;
            acck += DSb[t * CS + p] * qb[c * CS + p];
            accv += Ab[t * CS + p] * gb[c * CS + p];
          }
          dkb[c * CS + r] = acck;
          dvb[c * CS + r] = accv;
        }
      }
    }
  });
}

// Scratch memory for temporaries (padded copies, A and DS), reused across calls: one grow-only buffer
// per calling thread. Fresh large allocations are returned to the OS and page-faulted in again on
// every call, which cost more than the small-plane kernels themselves (measured).
class Workspace {
 public:
  Workspace(int64_t numel, const at::TensorOptions& opts) : opts_(opts) {
    thread_local at::Tensor buffer;
    const int64_t bytes = (numel + 16 * kAlign) * static_cast<int64_t>(opts.dtype().itemsize());
    if (!buffer.defined() || buffer.numel() < bytes) buffer = at::empty({bytes}, opts.dtype(at::kByte));
    base_ = buffer;
  }
  // The next (rows, cols) block, zero-filled when asked.
  at::Tensor take(int64_t rows, int64_t cols, bool zero) {
    const int64_t n = (rows * cols + kAlign - 1) / kAlign * kAlign;
    const int64_t item = static_cast<int64_t>(opts_.dtype().itemsize());
    at::Tensor t = base_.narrow(0, used_ * item, n * item).view(opts_.dtype().toScalarType());
    used_ += n;
    t = t.narrow(0, 0, rows * cols).view({rows, cols});
    return zero ? t.zero_() : t;
  }

 private:
  static constexpr int64_t kAlign = 16;  // elements: keeps every block 64-byte aligned
  at::TensorOptions opts_;
  at::Tensor base_;
  int64_t used_ = 0;
};

// The padded layout of a small plane: (B*C, cs) rows, the plane at [M, M + P), zeros around it.
struct Padding {
  int64_t M, P, cs, rows;
  Padding(const Flat& f, int64_t lanes, int64_t rows_)
      : M(f.margin()), P(f.P), cs(f.P + lanes + 2 * f.margin()), rows(rows_) {}
  at::Tensor zeros(Workspace& ws) const { return ws.take(rows, cs, true); }
  at::Tensor empty(Workspace& ws) const { return ws.take(rows, cs, false); }  // outputs: fully written
  at::Tensor in(Workspace& ws, const at::Tensor& t) const {  // (B, C, H, W) -> padded rows
    at::Tensor out = zeros(ws);
    out.narrow(1, M, P).copy_(t.reshape({rows, P}));
    return out;
  }
  template <typename T>
  View<T> view(const at::Tensor& padded, int64_t channels) const {
    T* p;
    if constexpr (std::is_const_v<T>) {
      p = padded.const_data_ptr<std::remove_const_t<T>>();
    } else {
      p = padded.mutable_data_ptr<T>();
    }
    return {p + M, channels * cs, cs, channels};
  }
  at::Tensor plane(const at::Tensor& padded, at::IntArrayRef sizes) const {  // padded rows -> (B, C, H, W)
    return padded.narrow(1, M, P).reshape(sizes);
  }
};

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads,
                  at::IntArrayRef taps, int64_t stride) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes(), "pssa: q, k, v must be NCHW, k and v alike");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1), "pssa: q and k differ in batch or channels");
  TORCH_CHECK(stride == 1 || stride == 2, "pssa: stride must be 1 or 2");
  TORCH_CHECK(q.size(2) == (k.size(2) + stride - 1) / stride && q.size(3) == (k.size(3) + stride - 1) / stride,
              "pssa: q must be k's size on the stride grid");
  TORCH_CHECK(heads > 0 && k.size(1) % heads == 0, "pssa: heads must divide the channels");
  TORCH_CHECK(taps.size() % 2 == 0 && !taps.empty(), "pssa: taps are (ty, tx) pairs");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "pssa: mixed dtypes");
}

// The tensor itself when its (C, H, W) block per batch element is contiguous (e.g. a channel chunk
// of the q/k/v projection), else a contiguous copy.
at::Tensor planes(const at::Tensor& t, at::ScalarType dtype) {
  const at::Tensor u = t.to(dtype);
  const bool ok = u.stride(3) == 1 && u.stride(2) == u.size(3) && u.stride(1) == u.size(2) * u.size(3);
  return ok ? u : u.contiguous();
}

template <typename T>
View<T> view(const at::Tensor& t) {
  T* p;
  if constexpr (std::is_const_v<T>) {
    p = t.const_data_ptr<std::remove_const_t<T>>();
  } else {
    p = t.mutable_data_ptr<T>();
  }
  return {p, t.stride(0), t.size(2) * t.size(3), t.size(1)};
}

at::Tensor pssa_fwd(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                    const c10::optional<at::Tensor>& base_, int64_t heads, at::IntArrayRef taps, int64_t stride) {
  check_inputs(q_, k_, v_, heads, taps, stride);
  const auto dtype = q_.scalar_type();
  const at::Tensor q = planes(q_, dtype), k = planes(k_, dtype), v = planes(v_, dtype);
  at::Tensor base;
  if (base_.has_value()) {
    TORCH_CHECK(base_->sizes() == q.sizes(), "pssa: base must have q's shape");
    base = planes(*base_, dtype);
  }
  at::Tensor y = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  const Geometry g(q, k, heads, taps, stride);
  AT_DISPATCH_FLOATING_TYPES(dtype, "pssa_fwd", [&] {
    using C = const scalar_t;
    const View<C> b = base.defined() ? view<C>(base) : View<C>{};
    if (stride == 2 || (g.T != 9 && g.T != 5)) {
      auto run = stride == 2 ? forward_impl<scalar_t, 2> : forward_impl<scalar_t, 1>;
      run(view<C>(q), view<C>(k), view<C>(v), b, view<scalar_t>(y), g);
      return;
    }
    auto run = g.T == 9 ? forward_flat<scalar_t, 9> : forward_flat<scalar_t, 5>;
    Flat f(g);
    if (!f.wants_padding<Lanes<scalar_t>::N>()) {
      run(view<C>(q), view<C>(k), view<C>(v), b, view<scalar_t>(y), g, f);
      return;
    }
    const int64_t channels = q.size(1);
    const Padding pad(f, Lanes<scalar_t>::N, q.size(0) * channels);
    f.padded = true;
    f.cs = pad.cs;
    Workspace ws(pad.rows * pad.cs * (base.defined() ? 5 : 4), q.options());
    const at::Tensor qp = pad.in(ws, q), kp = pad.in(ws, k), vp = pad.in(ws, v);
    const at::Tensor bp = base.defined() ? pad.in(ws, base) : at::Tensor();
    at::Tensor yp = pad.empty(ws);
    run(pad.view<C>(qp, channels), pad.view<C>(kp, channels), pad.view<C>(vp, channels),
        bp.defined() ? pad.view<C>(bp, channels) : View<C>{}, pad.view<scalar_t>(yp, channels), g, f);
    y.copy_(pad.plane(yp, y.sizes()));
  });
  return y;
}

// Returns dq (B, C, H', W') and dkv (B, 2C, H, W): dk and dv stacked as the projection lays them out.
std::tuple<at::Tensor, at::Tensor> pssa_bwd(const at::Tensor& gy_, const at::Tensor& q_, const at::Tensor& k_,
                                            const at::Tensor& v_, int64_t heads, at::IntArrayRef taps,
                                            int64_t stride) {
  check_inputs(q_, k_, v_, heads, taps, stride);
  const auto dtype = q_.scalar_type();
  const at::Tensor q = planes(q_, dtype), k = planes(k_, dtype), v = planes(v_, dtype), gy = planes(gy_, dtype);
  const auto opts = q.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor dq = at::empty(q.sizes(), opts);
  at::Tensor dkv = at::empty({k.size(0), 2 * k.size(1), k.size(2), k.size(3)}, opts);
  const at::Tensor dk = dkv.narrow(1, 0, k.size(1)), dv = dkv.narrow(1, k.size(1), k.size(1));
  const Geometry g(q, k, heads, taps, stride);
  AT_DISPATCH_FLOATING_TYPES(dtype, "pssa_bwd", [&] {
    using C = const scalar_t;
    at::Tensor A, DS;  // weights a and logit gradients ds of every tap: (B*heads, T, H', W')
    const int64_t ab = g.B * g.heads * g.T * g.Ho * g.Wo;
    if (stride == 2 || (g.T != 9 && g.T != 5)) {
      Workspace ws(2 * ab, opts);
      A = ws.take(ab, 1, false);
      DS = ws.take(ab, 1, false);
      auto run = stride == 2 ? backward_impl<scalar_t, 2> : backward_impl<scalar_t, 1>;
      run(view<C>(gy), view<C>(q), view<C>(k), view<C>(v), view<scalar_t>(dq), view<scalar_t>(dk),
          view<scalar_t>(dv), A.mutable_data_ptr<scalar_t>(), DS.mutable_data_ptr<scalar_t>(), g);
      return;
    }
    auto run = g.T == 9 ? backward_flat<scalar_t, 9> : backward_flat<scalar_t, 5>;
    Flat f(g);
    if (!f.wants_padding<Lanes<scalar_t>::N>()) {
      Workspace ws(2 * ab, opts);
      A = ws.take(ab, 1, false);
      DS = ws.take(ab, 1, false);
      run(view<C>(gy), view<C>(q), view<C>(k), view<C>(v), view<scalar_t>(dq), view<scalar_t>(dk),
          view<scalar_t>(dv), A.mutable_data_ptr<scalar_t>(), DS.mutable_data_ptr<scalar_t>(), g, f);
      return;
    }
    const int64_t channels = q.size(1);
    const Padding pad(f, Lanes<scalar_t>::N, q.size(0) * channels);
    f.padded = true;
    f.cs = pad.cs;
    const Padding buffers(f, Lanes<scalar_t>::N, g.B * g.heads * g.T);  // A, DS: (B*heads, T) padded rows
    Workspace ws(7 * pad.rows * pad.cs + 2 * buffers.rows * buffers.cs, opts);
    const at::Tensor gp = pad.in(ws, gy), qp = pad.in(ws, q), kp = pad.in(ws, k), vp = pad.in(ws, v);
    at::Tensor dqp = pad.empty(ws), dkp = pad.empty(ws), dvp = pad.empty(ws);
    at::Tensor Ap = buffers.zeros(ws), DSp = buffers.zeros(ws);
    run(pad.view<C>(gp, channels), pad.view<C>(qp, channels), pad.view<C>(kp, channels),
        pad.view<C>(vp, channels), pad.view<scalar_t>(dqp, channels), pad.view<scalar_t>(dkp, channels),
        pad.view<scalar_t>(dvp, channels), Ap.mutable_data_ptr<scalar_t>() + buffers.M,
        DSp.mutable_data_ptr<scalar_t>() + buffers.M, g, f);
    dq.copy_(pad.plane(dqp, dq.sizes()));
    dk.copy_(pad.plane(dkp, dk.sizes()));
    dv.copy_(pad.plane(dvp, dv.sizes()));
  });
  return {dq, dkv};
}

}  // namespace

TORCH_LIBRARY_IMPL(xvol, CPU, m) {
  m.impl("pssa_fwd", &pssa_fwd);
  m.impl("pssa_bwd", &pssa_bwd);
}
