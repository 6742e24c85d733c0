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
// needs no padded copy. At stride 2, k and v are laid out as S*S phase planes of (H', W') (space to
// depth: phase (py, px) holds x(S y' + py, S x' + px), zeros past the image), so that tap t again reads
// one phase plane at a constant offset from the output pixel. The layers project x's phase planes
// (xvol::pssa_fwd_phased); the image form of the ops rearranges k and v here (`phases`).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_vec.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using namespace xvol_vec;

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

  // q (B, C, H', W') on the stride-s grid of an (H, W) image.
  Geometry(const at::Tensor& q, int64_t heads_, at::IntArrayRef taps, int64_t s, int64_t H_, int64_t W_)
      : B(q.size(0)), heads(heads_), d(q.size(1) / heads_), H(H_), W(W_),
        Ho(q.size(2)), Wo(q.size(3)), T(static_cast<int64_t>(taps.size()) / 2), S(s) {
    for (int64_t t = 0; t < T; ++t) {
      ty.push_back(taps[2 * t]);
      tx.push_back(taps[2 * t + 1]);
    }
  }
};

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
  std::vector<int64_t> koff;    // offset of each tap in the k-like layout (S*S planes of P): phase * P + off

  Flat(const Geometry& g) : P(g.Ho * g.Wo), W(g.Wo), S(g.S) {
    for (int64_t t = 0; t < g.T; ++t) {
      const int64_t oy = floor_div(g.ty[t], S), ox = floor_div(g.tx[t], S);
      off.push_back(oy * W + ox);
      phase.push_back((g.ty[t] - S * oy) * S + (g.tx[t] - S * ox));
      koff.push_back(phase.back() * P + off.back());
    }
  }
  // Lanes of the block at p0 whose reads p + d stay in the plane (the others are masked taps or pixels
  // past the plane, whose weights are 0): d = 0 for q-like tensors, off[t] for tap t.
  template <int N>
  uint32_t inside(int64_t p0, int64_t d) const { return lane_range<N>(-(p0 + d), P - (p0 + d)); }
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
  const int64_t P = f.P, CS = f.P, KCS = S * S * CS, nb = (P + N - 1) / N;
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
  const int64_t P = f.P, CS = f.P, KCS = S * S * CS, nb = (P + N - 1) / N;
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

// Scratch memory for the weights A and logit gradients DS of the backward, reused across calls: one
// grow-only buffer per calling thread. Fresh large allocations are returned to the OS and page-faulted in
// again on every call, which cost more than the small-plane kernels themselves (measured).
class Workspace {
 public:
  Workspace(int64_t numel, const at::TensorOptions& opts) : opts_(opts) {
    thread_local at::Tensor buffer;
    const int64_t bytes = (numel + 16 * kAlign) * static_cast<int64_t>(opts.dtype().itemsize());
    if (!buffer.defined() || buffer.numel() < bytes) buffer = at::empty({bytes}, opts.dtype(at::kByte));
    base_ = buffer;
  }
  // The next block of n elements.
  void* take(int64_t n) {
    const int64_t item = static_cast<int64_t>(opts_.dtype().itemsize());
    uint8_t* p = base_.mutable_data_ptr<uint8_t>() + used_ * item;
    used_ += (n + kAlign - 1) / kAlign * kAlign;
    return p;
  }

 private:
  static constexpr int64_t kAlign = 16;  // elements: keeps every block 64-byte aligned
  at::TensorOptions opts_;
  at::Tensor base_;
  int64_t used_ = 0;
};

// Phase planes (stride S): image (B, C, H, W) <-> (B, C, S*S*H', W') where plane (py, px) of a channel
// holds pixel (S y' + py, S x' + px) at (y', x'); plane pixels past the image are zeros.
template <typename scalar_t>
void to_phases(View<const scalar_t> image, const Geometry& g, int64_t rows, scalar_t* out) {
  const int64_t S = g.S, P = g.Ho * g.Wo, h = g.H, w = g.W;
  const bool exact = h == g.Ho * S && w == g.Wo * S;  // every plane pixel is an image pixel
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* src = image.ch(r);
      scalar_t* planes = out + r * S * S * P;
      if (!exact) std::fill(planes, planes + S * S * P, scalar_t(0));
      for (int64_t y = 0; y < h; ++y) {
        for (int64_t px = 0; px < S && px < w; ++px) {
          scalar_t* dst = planes + ((y % S) * S + px) * P + (y / S) * g.Wo;
          const scalar_t* row = src + y * w + px;
          for (int64_t xo = 0, n = (w - px + S - 1) / S; xo < n; ++xo) dst[xo] = row[xo * S];
        }
      }
    }
  });
}

template <typename scalar_t>
void from_phases(const scalar_t* planes_all, const Geometry& g, int64_t rows, View<scalar_t> image) {
  const int64_t S = g.S, P = g.Ho * g.Wo, h = g.H, w = g.W;
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* img = image.ch(r);
      const scalar_t* planes = planes_all + r * S * S * P;
      for (int64_t y = 0; y < h; ++y) {
        for (int64_t px = 0; px < S && px < w; ++px) {
          const scalar_t* src = planes + ((y % S) * S + px) * P + (y / S) * g.Wo;
          scalar_t* row = img + y * w + px;
          for (int64_t xo = 0, n = (w - px + S - 1) / S; xo < n; ++xo) row[xo * S] = src[xo];
        }
      }
    }
  });
}

// (B, C, H, W) -> phase planes (B, C, S*S*H', W').
at::Tensor phases(const at::Tensor& t, const Geometry& g) {
  at::Tensor out = at::empty({t.size(0), t.size(1), g.S * g.S * g.Ho, g.Wo}, t.options());
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "pssa_phases", [&] {
    to_phases<scalar_t>(view<const scalar_t>(t), g, t.size(0) * t.size(1), out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t heads,
                  at::IntArrayRef taps, int64_t stride) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes(), "pssa: q, k, v must be NCHW, k and v alike");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1), "pssa: q and k differ in batch or channels");
  TORCH_CHECK(stride == 1 || stride == 2, "pssa: stride must be 1 or 2");
  TORCH_CHECK(heads > 0 && k.size(1) % heads == 0, "pssa: heads must divide the channels");
  TORCH_CHECK(taps.size() == 18 || taps.size() == 10, "pssa: taps are the 9 or 5 (ty, tx) pairs of T(L, dirs)");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), "pssa: mixed dtypes");
}

void check_image(const at::Tensor& q, const at::Tensor& k, int64_t stride) {
  TORCH_CHECK(q.size(2) == (k.size(2) + stride - 1) / stride && q.size(3) == (k.size(3) + stride - 1) / stride,
              "pssa: q must be k's size on the stride grid");
}

// Phase-plane inputs: k, v (B, C, S*S*H', W') for q (B, C, H', W') on the grid of an image = (H, W).
void check_phases(const at::Tensor& q, const at::Tensor& k, int64_t stride, at::IntArrayRef image) {
  TORCH_CHECK(image.size() == 2, "pssa: image is (H, W)");
  TORCH_CHECK(q.size(2) == (image[0] + stride - 1) / stride && q.size(3) == (image[1] + stride - 1) / stride,
              "pssa: q must be the image's size on the stride grid");
  TORCH_CHECK(k.size(2) == stride * stride * q.size(2) && k.size(3) == q.size(3),
              "pssa: k and v must be (B, C, S*S*H', W') phase planes");
}

// y = base + PSSA, with k, v as phase planes (at stride 1: the images themselves).
at::Tensor forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& base,
                   const Geometry& g) {
  at::Tensor y = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "pssa_fwd", [&] {
    using C = const scalar_t;
    auto run = g.T == 9 ? (g.S == 1 ? forward_flat<scalar_t, 9, 1> : forward_flat<scalar_t, 9, 2>)
                        : (g.S == 1 ? forward_flat<scalar_t, 5, 1> : forward_flat<scalar_t, 5, 2>);
    run(view<C>(q), view<C>(k), view<C>(v), base.defined() ? view<C>(base) : View<C>{}, view<scalar_t>(y), g,
        Flat(g));
  });
  return y;
}

// dq (B, C, H', W') and dkv (B, 2C, S*S*H', W'): dk and dv as phase planes, stacked as the projection
// lays k and v out.
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& gy, const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& v, const Geometry& g) {
  const auto opts = q.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor dq = at::empty(q.sizes(), opts);
  at::Tensor dkv = at::empty({k.size(0), 2 * k.size(1), k.size(2), k.size(3)}, opts);
  const at::Tensor dk = dkv.narrow(1, 0, k.size(1)), dv = dkv.narrow(1, k.size(1), k.size(1));
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "pssa_bwd", [&] {
    using C = const scalar_t;
    auto run = g.T == 9 ? (g.S == 1 ? backward_flat<scalar_t, 9, 1> : backward_flat<scalar_t, 9, 2>)
                        : (g.S == 1 ? backward_flat<scalar_t, 5, 1> : backward_flat<scalar_t, 5, 2>);
    const int64_t ab = g.B * g.heads * g.T * g.Ho * g.Wo;  // A, DS: (B*heads, T, H', W')
    Workspace ws(2 * ab, opts);
    auto* A = static_cast<scalar_t*>(ws.take(ab));
    auto* DS = static_cast<scalar_t*>(ws.take(ab));
    run(view<C>(gy), view<C>(q), view<C>(k), view<C>(v), view<scalar_t>(dq), view<scalar_t>(dk),
        view<scalar_t>(dv), A, DS, g, Flat(g));
  });
  return {dq, dkv};
}

at::Tensor optional_planes(const c10::optional<at::Tensor>& base, const at::Tensor& q) {
  if (!base.has_value()) return at::Tensor();
  TORCH_CHECK(base->sizes() == q.sizes(), "pssa: base must have q's shape");
  return planes(*base, q.scalar_type());
}

at::Tensor pssa_fwd(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                    const c10::optional<at::Tensor>& base_, int64_t heads, at::IntArrayRef taps, int64_t stride) {
  check_inputs(q_, k_, v_, heads, taps, stride);
  check_image(q_, k_, stride);
  const auto dtype = q_.scalar_type();
  const at::Tensor q = planes(q_, dtype), k = planes(k_, dtype), v = planes(v_, dtype);
  const Geometry g(q, heads, taps, stride, k.size(2), k.size(3));
  const at::Tensor base = optional_planes(base_, q);
  return stride == 1 ? forward(q, k, v, base, g) : forward(q, phases(k, g), phases(v, g), base, g);
}

at::Tensor pssa_fwd_phased(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                           const c10::optional<at::Tensor>& base_, int64_t heads, at::IntArrayRef taps,
                           int64_t stride, at::IntArrayRef image) {
  check_inputs(q_, k_, v_, heads, taps, stride);
  check_phases(q_, k_, stride, image);
  const auto dtype = q_.scalar_type();
  const at::Tensor q = planes(q_, dtype);
  const Geometry g(q, heads, taps, stride, image[0], image[1]);
  return forward(q, planes(k_, dtype), planes(v_, dtype), optional_planes(base_, q), g);
}

// Returns dq (B, C, H', W') and dkv (B, 2C, H, W): dk and dv stacked as the projection lays them out.
std::tuple<at::Tensor, at::Tensor> pssa_bwd(const at::Tensor& gy_, const at::Tensor& q_, const at::Tensor& k_,
                                            const at::Tensor& v_, int64_t heads, at::IntArrayRef taps,
                                            int64_t stride) {
  check_inputs(q_, k_, v_, heads, taps, stride);
  check_image(q_, k_, stride);
  const auto dtype = q_.scalar_type();
  const at::Tensor q = planes(q_, dtype), k = planes(k_, dtype), v = planes(v_, dtype), gy = planes(gy_, dtype);
  const Geometry g(q, heads, taps, stride, k.size(2), k.size(3));
  if (stride == 1) return backward(gy, q, k, v, g);
  auto [dq, dkv_planes] = backward(gy, q, phases(k, g), phases(v, g), g);
  at::Tensor dkv = at::empty({k.size(0), 2 * k.size(1), k.size(2), k.size(3)}, dkv_planes.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "pssa_bwd_planes", [&] {
    from_phases<scalar_t>(dkv_planes.const_data_ptr<scalar_t>(), g, dkv.size(0) * dkv.size(1), view<scalar_t>(dkv));
  });
  return {dq, dkv};
}

std::tuple<at::Tensor, at::Tensor> pssa_bwd_phased(const at::Tensor& gy_, const at::Tensor& q_,
                                                   const at::Tensor& k_, const at::Tensor& v_, int64_t heads,
                                                   at::IntArrayRef taps, int64_t stride, at::IntArrayRef image) {
  check_inputs(q_, k_, v_, heads, taps, stride);
  check_phases(q_, k_, stride, image);
  const auto dtype = q_.scalar_type();
  const at::Tensor q = planes(q_, dtype);
  const Geometry g(q, heads, taps, stride, image[0], image[1]);
  return backward(planes(gy_, dtype), q, planes(k_, dtype), planes(v_, dtype), g);
}

}  // namespace

TORCH_LIBRARY_IMPL(xvol, CPU, m) {
  m.impl("pssa_fwd", &pssa_fwd);
  m.impl("pssa_bwd", &pssa_bwd);
  m.impl("pssa_fwd_phased", &pssa_fwd_phased);
  m.impl("pssa_bwd_phased", &pssa_bwd_phased);
}
