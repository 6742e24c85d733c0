// Fused Pixel Shift Self-Attention on CPU (float32, float64), registered as xvol::pssa_fwd / pssa_bwd.
//
// Forward: per block of N output pixels, the logits <q(p), k(p+t)>/sqrt(d) for every tap t, the softmax
// over the valid taps (out-of-image taps excluded), and y(p) = sum_t a(p, t) v(p+t), plus an optional
// `base` added (the deploy form's convolution output). No shifted copy is materialised.
// Backward: recomputes the logits and products from q, k, v (nothing else is saved), in two passes:
//   1. per output block: a, da_t = <g, v_t>, ds_t = a_t (da_t - sum_u a_u da_u) / sqrt(d), dq = sum_t ds_t k_t;
//   2. per input block r (race-free gather): dk(r) += ds_t(p) q(p), dv(r) += a_t(p) g(p) for p = r - t.
// Tensors are NCHW: q (B, C, H', W') on the stride grid, k and v (B, C, H, W); C = heads * d. Taps are
// passed flat: (ty0, tx0, ty1, tx1, ...), the T = 9 or 5 offsets of T(L, dirs). The centre tap is always
// valid, so no pixel is empty.
//
// A plane is flat, so tap t is a constant offset: ty*W + tx at stride 1. A block of N pixels keeps the T
// logits in vector registers over the d channels (1 + T loads per T fused multiply-adds), masks the
// out-of-image taps per pixel (row wrap-around included) and applies a vector exp. Blocks at either end
// of a plane load only their lanes inside it (masked loads), so every block is vectorised and stride 1
// needs no padded copy. At stride 2, k and v are laid out as S*S zero-padded phase planes of (H', W')
// (space to depth: phase (py, px) holds x(S y' + py, S x' + px)), so that tap t again reads one phase
// plane at a constant offset from the output pixel.

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

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

template <typename T>
struct View {  // an NCHW tensor whose (C, H, W) block is contiguous; sb: its batch stride
  T* p = nullptr;
  int64_t sb = 0, plane = 0, C = 1;
  T* ch(int64_t c) const { return p + (c / C) * sb + (c % C) * plane; }  // channel c counted over the batch
};

struct Geometry {
  int64_t B, heads, d, H, W, Ho, Wo, T, S;
  std::vector<int64_t> ty, tx;

  Geometry(const at::Tensor& q, const at::Tensor& k, int64_t heads_, at::IntArrayRef taps, int64_t s)
      : B(k.size(0)), heads(heads_), d(k.size(1) / heads_), H(k.size(2)), W(k.size(3)),
        Ho(q.size(2)), Wo(q.size(3)), T(static_cast<int64_t>(taps.size()) / 2), S(s) {
    for (int64_t t = 0; t < T; ++t) {
      ty.push_back(taps[2 * t]);
      tx.push_back(taps[2 * t + 1]);
    }
  }
};

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

// Bit i set for the lanes lo <= i < hi of an N-lane block.
template <int N>
inline uint32_t lane_range(int64_t lo, int64_t hi) {
  lo = std::max<int64_t>(lo, 0);
  hi = std::min<int64_t>(hi, N);
  return hi <= lo ? 0u : ((hi == 32 ? ~0u : (1u << hi) - 1) & ~((1u << lo) - 1));
}

// Lane i is p[i] where bit i of `m` is set, else 0; the addresses of the other lanes are never read, so
// a block may straddle the end of a plane (AVX-512 masked loads; lane by lane elsewhere).
template <typename V, typename S>
inline V load_masked(const S* p, uint32_t m) {
  V v;
#if defined(__AVX512F__)  // one instruction whatever the mask: no branch
  if constexpr (sizeof(S) == 4) {
    const __m512 r = _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p);
    std::memcpy(&v, &r, sizeof(V));
  } else {
    const __m512d r = _mm512_maskz_loadu_pd(static_cast<__mmask8>(m), p);
    std::memcpy(&v, &r, sizeof(V));
  }
#else
  constexpr int N = 64 / static_cast<int>(sizeof(S));
  if (m == (1u << N) - 1) return loadu<V>(p);
  S lanes[N] = {};
  for (int i = 0; i < N; ++i) {
    if (m >> i & 1u) lanes[i] = p[i];
  }
  std::memcpy(&v, lanes, sizeof(V));
#endif
  return v;
}

// The loads of a block: masked for blocks at a plane's ends, plain for the others (AVX-512 masked loads
// run at half the rate of plain ones on this AMD EPYC: a 56x56 backward ran 1.5x slower with them only).
template <typename V, bool Masked>
struct Loader {
  template <typename S>
  V operator()(const S* p, uint32_t m) const {
    if constexpr (Masked) {
      return load_masked<V>(p, m);
    } else {
      return loadu<V>(p);
    }
  }
};

// Runs body(loader) with plain loads when every mask is full, else with masked ones.
template <typename V, int N, typename Body>
inline void with_loader(const uint32_t* masks, int n, const Body& body) {
  bool full = true;
  for (int i = 0; i < n; ++i) full = full && masks[i] == (1u << N) - 1;
  if (full) {
    body(Loader<V, false>{});
  } else {
    body(Loader<V, true>{});
  }
}

// p[i] = lane i where bit i of `m` is set; other addresses untouched. A full mask takes a plain store
template <typename V, typename S>
inline void store_masked(S* p, const V& v, uint32_t m) {
  constexpr int N = 64 / static_cast<int>(sizeof(S));
  if (m == (1u << N) - 1) return storeu(p, v);
#if defined(__AVX512F__)
  if constexpr (sizeof(S) == 4) {
    __m512 r;
    std::memcpy(&r, &v, sizeof(V));
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>(m), r);
  } else {
    __m512d r;
    std::memcpy(&r, &v, sizeof(V));
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>(m), r);
  }
#else
  S lanes[N];
  std::memcpy(lanes, &v, sizeof(V));
  for (int i = 0; i < N; ++i) {
    if (m >> i & 1u) p[i] = lanes[i];
  }
#endif
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
  int64_t P, W, S;              // the output plane (H', W'): P = H' * W' pixels; the stride
  std::vector<int64_t> off;     // offset oy*W' + ox of each tap within an output-sized plane
  std::vector<int64_t> phase;   // the phase plane (py*S + px) each tap reads, where t = S*(oy, ox) + (py, px)
  std::vector<int64_t> koff;    // offset of each tap in the k-like layout: phase * cs + off
  int64_t min_off, max_off;
  int64_t cs;   // q-like channel stride (q, y, g, dq; A and DS rows): P, or P plus zero margins (stride 2)
  int64_t kcs;  // k-like channel stride (k, v, dk, dv): S*S planes of cs

  Flat(const Geometry& g) : P(g.Ho * g.Wo), W(g.Wo), S(g.S) {
    for (int64_t t = 0; t < g.T; ++t) {
      const int64_t oy = floor_div(g.ty[t], S), ox = floor_div(g.tx[t], S);
      off.push_back(oy * W + ox);
      phase.push_back((g.ty[t] - S * oy) * S + (g.tx[t] - S * ox));
    }
    min_off = *std::min_element(off.begin(), off.end());
    max_off = *std::max_element(off.begin(), off.end());
    layout(P);
  }
  void layout(int64_t cs_) {
    cs = cs_;
    kcs = S * S * cs;
    koff.clear();
    for (size_t t = 0; t < off.size(); ++t) koff.push_back(phase[t] * cs + off[t]);
  }
  int64_t margin() const { return std::max(-min_off, max_off); }
  // Lanes of the block at p0 whose reads p + d stay in the plane (the others are masked taps or pixels
  // past the plane, whose weights are 0): d = 0 for q-like tensors, off[t] for tap t, -off[t] to gather.
  template <int N>
  uint32_t inside(int64_t p0, int64_t d) const { return lane_range<N>(-(p0 + d), P - (p0 + d)); }
  // Tap t of output pixel p reads inside the image (pixels past the plane have no valid tap).
  bool valid(const Geometry& g, int64_t t, int64_t p) const {
    if (p >= P) return false;
    const int64_t y = p / W * S + g.ty[t], x = p % W * S + g.tx[t];
    return y >= 0 && y < g.H && x >= 0 && x < g.W;
  }
};

// Softmax weights of one pixel block (masked taps exactly 0), from the accumulated logits.
template <typename scalar_t, int T>
inline void block_softmax(typename Lanes<scalar_t>::V (&lg)[T], const Geometry& g, const Flat& f, int64_t p0,
                          scalar_t scale) {
  using V = typename Lanes<scalar_t>::V;
  constexpr int N = Lanes<scalar_t>::N;
  // The mask of valid taps: one division per block, the pixel coordinates stepped from there.
  scalar_t m[T][N];
  int64_t yo = p0 / f.W, xo = p0 - yo * f.W;
  for (int i = 0; i < N; ++i) {
    const bool inside = p0 + i < f.P;
    const int64_t y = yo * f.S, x = xo * f.S;
    for (int t = 0; t < T; ++t) {
      const int64_t ty = y + g.ty[t], tx = x + g.tx[t];
      m[t][i] = inside && ty >= 0 && ty < g.H && tx >= 0 && tx < g.W ? scalar_t(1) : scalar_t(0);
    }
    if (++xo == f.W) {
      xo = 0;
      ++yo;
    }
  }
  V mask[T];
  for (int t = 0; t < T; ++t) mask[t] = loadu<V>(m[t]);
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

template <typename scalar_t, int T, int S>
void forward_flat(View<const scalar_t> q, View<const scalar_t> k, View<const scalar_t> v, View<const scalar_t> base,
                  View<scalar_t> y, const Geometry& g, const Flat& f) {
  using V = typename Lanes<scalar_t>::V;
  constexpr int N = Lanes<scalar_t>::N;
  const int64_t P = f.P, CS = f.cs, KCS = S * S * CS, nb = (P + N - 1) / N;
  const scalar_t scale = scalar_t(1) / std::sqrt(scalar_t(g.d));
  at::parallel_for(0, g.B * g.heads * nb, 8, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t bh = job / nb, p0 = (job % nb) * N;
      const int64_t ch0 = bh * g.d;
      const scalar_t *qb = q.ch(ch0), *kb = k.ch(ch0), *vb = v.ch(ch0), *bb = base.p ? base.ch(ch0) : nullptr;
      scalar_t* yb = y.ch(ch0);
      uint32_t m[T + 1];  // lanes inside the plane: for each tap's reads, then for q-like tensors
      m[T] = f.inside<N>(p0, 0);
      for (int t = 0; t < T; ++t) m[t] = f.inside<N>(p0, f.off[t]);
      with_loader<V, N>(m, T + 1, [&](auto load) {
        V lg[T] = {};
        for (int64_t c = 0; c < g.d; ++c) {
          const int64_t cp = c * CS + p0, kp = c * KCS + p0;
          __builtin_prefetch(qb + cp + 4 * N);
          __builtin_prefetch(kb + kp + 4 * N - f.W);
          __builtin_prefetch(kb + kp + 4 * N + f.W);
          const V qc = load(qb + cp, m[T]);
          for (int t = 0; t < T; ++t) lg[t] += qc * load(kb + kp + f.koff[t], m[t]);
        }
        block_softmax<scalar_t, T>(lg, g, f, p0, scale);
        for (int64_t c = 0; c < g.d; ++c) {
          const int64_t cp = c * CS + p0, kp = c * KCS + p0;
          __builtin_prefetch(vb + kp + 4 * N - f.W);
          __builtin_prefetch(vb + kp + 4 * N + f.W);
          V out = bb ? load(bb + cp, m[T]) : V{};
          for (int t = 0; t < T; ++t) out += lg[t] * load(vb + kp + f.koff[t], m[t]);
          store_masked(yb + cp, out, m[T]);
        }
      });
    }
  });
}

// Pass 2 of the backward for one phase plane: dk, dv gathered from the n taps that read it.
template <typename scalar_t>
struct Gather {
  const scalar_t *q, *g, *A, *DS;
  scalar_t *dk, *dv;
  int64_t CS, KCS, P, d;
  int tap[9];
  int64_t off[9];
  int n;

  // A block of N pixels from r0, with the tap count a compile-time constant (the T blocks in registers).
  template <int NT>
  void block(int64_t r0) const {
    using V = typename Lanes<scalar_t>::V;
    constexpr int N = Lanes<scalar_t>::N;
    uint32_t m[NT + 1];  // lanes whose source pixels r - off lie inside the plane, per tap; r inside
    for (int i = 0; i < NT; ++i) m[i] = lane_range<N>(off[i] - r0, P + off[i] - r0);
    m[NT] = lane_range<N>(-r0, P - r0);
    with_loader<V, N>(m, NT + 1, [&](auto load) {
      V a[NT > 0 ? NT : 1], ds[NT > 0 ? NT : 1];
      for (int i = 0; i < NT; ++i) {
        a[i] = load(A + tap[i] * CS + r0 - off[i], m[i]);
        ds[i] = load(DS + tap[i] * CS + r0 - off[i], m[i]);
      }
      for (int64_t c = 0; c < d; ++c) {
        const int64_t cp = c * CS + r0;
        V acck = V{}, accv = V{};
        for (int i = 0; i < NT; ++i) {
          acck += ds[i] * load(q + cp - off[i], m[i]);
          accv += a[i] * load(g + cp - off[i], m[i]);
        }
        store_masked(dk + c * KCS + r0, acck, m[NT]);
        store_masked(dv + c * KCS + r0, accv, m[NT]);
      }
    });
  }
  template <int NT>
  void block_of(int64_t r0) const {  // block<n>, n dispatched down from NT
    if constexpr (NT > 0) {
      if (n != NT) return block_of<NT - 1>(r0);
    }
    block<NT>(r0);
  }
};

template <typename scalar_t, int T, int S>
void backward_flat(View<const scalar_t> gy, View<const scalar_t> q, View<const scalar_t> k, View<const scalar_t> v,
                   View<scalar_t> dq, View<scalar_t> dk, View<scalar_t> dv, scalar_t* A, scalar_t* DS,
                   const Geometry& g, const Flat& f) {
  using V = typename Lanes<scalar_t>::V;
  constexpr int N = Lanes<scalar_t>::N;
  const int64_t P = f.P, CS = f.cs, KCS = S * S * CS, nb = (P + N - 1) / N;
  const scalar_t scale = scalar_t(1) / std::sqrt(scalar_t(g.d));
  // Pass 1: a, ds = a (da - <a, da>) / sqrt(d) into A, DS (bh, T, P); dq = sum_t ds_t k(p + t).
  at::parallel_for(0, g.B * g.heads * nb, 8, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t bh = job / nb, p0 = (job % nb) * N;
      const int64_t ch0 = bh * g.d;
      const scalar_t *qb = q.ch(ch0), *kb = k.ch(ch0), *vb = v.ch(ch0), *gb = gy.ch(ch0);
      scalar_t *dqb = dq.ch(ch0), *Ab = A + bh * T * CS, *DSb = DS + bh * T * CS;
      uint32_t m[T + 1];  // lanes inside the plane: for each tap's reads, then for q-like tensors
      m[T] = f.inside<N>(p0, 0);
      for (int t = 0; t < T; ++t) m[t] = f.inside<N>(p0, f.off[t]);
      with_loader<V, N>(m, T + 1, [&](auto load) {
        V a[T] = {}, da[T] = {};
        for (int64_t c = 0; c < g.d; ++c) {
          const int64_t cp = c * CS + p0, kp = c * KCS + p0;
          const V qc = load(qb + cp, m[T]), gc = load(gb + cp, m[T]);
          for (int t = 0; t < T; ++t) {
            a[t] += qc * load(kb + kp + f.koff[t], m[t]);
            da[t] += gc * load(vb + kp + f.koff[t], m[t]);
          }
        }
        block_softmax<scalar_t, T>(a, g, f, p0, scale);
        V gdot = V{};
        for (int t = 0; t < T; ++t) gdot += a[t] * da[t];
        for (int t = 0; t < T; ++t) {
          da[t] = a[t] * (da[t] - gdot) * scale;  // now ds
          store_masked(Ab + t * CS + p0, a[t], m[T]);
          store_masked(DSb + t * CS + p0, da[t], m[T]);
        }
        for (int64_t c = 0; c < g.d; ++c) {
          const int64_t kp = c * KCS + p0;
          V acc = V{};
          for (int t = 0; t < T; ++t) acc += da[t] * load(kb + kp + f.koff[t], m[t]);
          store_masked(dqb + c * CS + p0, acc, m[T]);
        }
      });
    }
  });
  // Pass 2, per phase plane: dk(r) = sum_t ds_t(r - t) q(r - t), dv(r) = sum_t a_t(r - t) g(r - t) over
  // the taps t that read this phase (A, DS are 0 where tap t is invalid at r - t, which also covers the
  // row wrap-around of the flat offsets; sources outside the plane are masked). A phase no tap reads
  // gets zeros.
  constexpr int64_t phases = S * S;
  at::parallel_for(0, g.B * g.heads * phases * nb, 8, [&](int64_t begin, int64_t end) {
    for (int64_t job = begin; job < end; ++job) {
      const int64_t bh = job / (phases * nb), ph = job / nb % phases, r0 = (job % nb) * N;
      const int64_t ch0 = bh * g.d;
      Gather<scalar_t> gather{q.ch(ch0), gy.ch(ch0), A + bh * T * CS, DS + bh * T * CS, dk.ch(ch0) + ph * CS,
                              dv.ch(ch0) + ph * CS, CS, KCS, P, g.d, {}, {}, 0};
      for (int t = 0; t < T; ++t) {
        if (f.phase[t] == ph) {
          gather.tap[gather.n] = t;
          gather.off[gather.n++] = f.off[t];
        }
      }
      gather.template block_of<T>(r0);
    }
  });
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

// The padded layout of stride 2: (B*C, s*s*cs) rows of s*s planes (s = 1 for q-like tensors, the stride for k-like
// ones), each plane (H', W') at [M, M + P) of its cs elements, zeros around it.
struct Padding {
  int64_t M, P, cs, rows, Ho, Wo;
  Padding(const Flat& f, int64_t lanes, int64_t rows_)
      : M(f.margin()), P(f.P), cs(f.P + lanes + 2 * f.margin()), rows(rows_), Ho(f.P / f.W), Wo(f.W) {}
  at::Tensor take(Workspace& ws, int64_t s, bool zero) const { return ws.take(rows, s * s * cs, zero); }
  // (B, C, h, w) -> padded planes, zeros around them: pixel (y, x) to plane (y % s, x % s) at (y / s, x / s).
  template <typename scalar_t>
  at::Tensor in(Workspace& ws, const at::Tensor& t, int64_t s) const {
    if (s == 1) {  // one run per row: ATen's copy is the fastest
      at::Tensor out = take(ws, 1, true);
      out.narrow(1, M, P).copy_(t.reshape({rows, P}));
      return out;
    }
    at::Tensor out = take(ws, s, false);
    const View<const scalar_t> image = view<const scalar_t>(t);
    scalar_t* buf = out.mutable_data_ptr<scalar_t>();
    const int64_t h = t.size(2), w = t.size(3);
    const bool exact = h == Ho * s && w == Wo * s;  // every plane pixel is an image pixel
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* src = image.ch(r);
        scalar_t* planes = buf + r * s * s * cs;
        for (int64_t ph = 0; ph < s * s; ++ph) {  // zero only what the copy leaves
          scalar_t* plane = planes + ph * cs;
          std::fill(plane, plane + (exact ? M : cs), scalar_t(0));
          if (exact) std::fill(plane + M + P, plane + cs, scalar_t(0));
        }
        for (int64_t y = 0; y < h; ++y) {
          for (int64_t px = 0; px < s && px < w; ++px) {
            scalar_t* dst = planes + ((y % s) * s + px) * cs + M + (y / s) * Wo;
            const scalar_t* row = src + y * w + px;
            for (int64_t xo = 0, n = (w - px + s - 1) / s; xo < n; ++xo) dst[xo] = row[xo * s];
          }
        }
      }
    });
    return out;
  }
  // Padded planes -> dst (B, C, h, w): the inverse of `in`.
  template <typename scalar_t>
  void out(const at::Tensor& buf, int64_t s, const at::Tensor& dst) const {
    if (s == 1) {
      dst.copy_(buf.narrow(1, M, P).view(dst.sizes()));
      return;
    }
    const View<scalar_t> image = view<scalar_t>(dst);
    const scalar_t* all = buf.const_data_ptr<scalar_t>();
    const int64_t h = dst.size(2), w = dst.size(3);
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* img = image.ch(r);
        const scalar_t* planes = all + r * s * s * cs;
        for (int64_t y = 0; y < h; ++y) {
          for (int64_t px = 0; px < s && px < w; ++px) {
            const scalar_t* src = planes + ((y % s) * s + px) * cs + M + (y / s) * Wo;
            scalar_t* row = img + y * w + px;
            for (int64_t xo = 0, n = (w - px + s - 1) / s; xo < n; ++xo) row[xo * s] = src[xo];
          }
        }
      }
    });
  }
  template <typename T>
  View<T> layout(const at::Tensor& padded, int64_t channels, int64_t s) const {
    T* p;
    if constexpr (std::is_const_v<T>) {
      p = padded.const_data_ptr<std::remove_const_t<T>>();
    } else {
      p = padded.mutable_data_ptr<T>();
    }
    return {p + M, channels * s * s * cs, s * s * cs, channels};
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
  TORCH_CHECK(taps.size() == 18 || taps.size() == 10, "pssa: taps are the 9 or 5 (ty, tx) pairs of T(L, dirs)");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "pssa: mixed dtypes");
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
    auto run = g.T == 9 ? (g.S == 1 ? forward_flat<scalar_t, 9, 1> : forward_flat<scalar_t, 9, 2>)
                        : (g.S == 1 ? forward_flat<scalar_t, 5, 1> : forward_flat<scalar_t, 5, 2>);
    Flat f(g);
    if (g.S == 1) {
      run(view<C>(q), view<C>(k), view<C>(v), base.defined() ? view<C>(base) : View<C>{}, view<scalar_t>(y), g, f);
      return;
    }
    const int64_t channels = q.size(1), S = g.S;
    const Padding pad(f, Lanes<scalar_t>::N, q.size(0) * channels);
    f.layout(pad.cs);
    Workspace ws(pad.rows * pad.cs * (2 * S * S + (base.defined() ? 3 : 2)), q.options());
    const at::Tensor qp = pad.in<scalar_t>(ws, q, 1), kp = pad.in<scalar_t>(ws, k, S), vp = pad.in<scalar_t>(ws, v, S);
    const at::Tensor bp = base.defined() ? pad.in<scalar_t>(ws, base, 1) : at::Tensor();
    const at::Tensor yp = pad.take(ws, 1, false);
    run(pad.layout<C>(qp, channels, 1), pad.layout<C>(kp, channels, S), pad.layout<C>(vp, channels, S),
        bp.defined() ? pad.layout<C>(bp, channels, 1) : View<C>{}, pad.layout<scalar_t>(yp, channels, 1), g, f);
    pad.out<scalar_t>(yp, 1, y);
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
    auto run = g.T == 9 ? (g.S == 1 ? backward_flat<scalar_t, 9, 1> : backward_flat<scalar_t, 9, 2>)
                        : (g.S == 1 ? backward_flat<scalar_t, 5, 1> : backward_flat<scalar_t, 5, 2>);
    Flat f(g);
    if (g.S == 1) {
      const int64_t ab = g.B * g.heads * g.T * g.Ho * g.Wo;  // A, DS: (B*heads, T, H', W')
      Workspace ws(2 * ab, opts);
      at::Tensor A = ws.take(ab, 1, false), DS = ws.take(ab, 1, false);
      run(view<C>(gy), view<C>(q), view<C>(k), view<C>(v), view<scalar_t>(dq), view<scalar_t>(dk),
          view<scalar_t>(dv), A.mutable_data_ptr<scalar_t>(), DS.mutable_data_ptr<scalar_t>(), g, f);
      return;
    }
    const int64_t channels = q.size(1), S = g.S;
    const Padding pad(f, Lanes<scalar_t>::N, q.size(0) * channels);
    f.layout(pad.cs);
    const Padding buffers(f, Lanes<scalar_t>::N, g.B * g.heads * g.T);  // A, DS: (B*heads, T) padded rows
    Workspace ws((3 + 4 * S * S) * pad.rows * pad.cs + 2 * buffers.rows * buffers.cs, opts);
    const at::Tensor gp = pad.in<scalar_t>(ws, gy, 1), qp = pad.in<scalar_t>(ws, q, 1), kp = pad.in<scalar_t>(ws, k, S), vp = pad.in<scalar_t>(ws, v, S);
    const at::Tensor dqp = pad.take(ws, 1, false), dkp = pad.take(ws, S, false), dvp = pad.take(ws, S, false);
    const at::Tensor Ap = buffers.take(ws, 1, true), DSp = buffers.take(ws, 1, true);
    run(pad.layout<C>(gp, channels, 1), pad.layout<C>(qp, channels, 1), pad.layout<C>(kp, channels, S),
        pad.layout<C>(vp, channels, S), pad.layout<scalar_t>(dqp, channels, 1), pad.layout<scalar_t>(dkp, channels, S),
        pad.layout<scalar_t>(dvp, channels, S), Ap.mutable_data_ptr<scalar_t>() + buffers.M,
        DSp.mutable_data_ptr<scalar_t>() + buffers.M, g, f);
    pad.out<scalar_t>(dqp, 1, dq);
    pad.out<scalar_t>(dkp, S, dk);
    pad.out<scalar_t>(dvp, S, dv);
  });
  return {dq, dkv};
}

}  // namespace

TORCH_LIBRARY_IMPL(xvol, CPU, m) {
  m.impl("pssa_fwd", &pssa_fwd);
  m.impl("pssa_bwd", &pssa_bwd);
}
