// 1x1 convolution on CPU (float32, float64), registered as xvol::conv1x1:
//   y(b, o, p) = sum_c w(o, c) x(b, c, p) [+ bias(o)]
// the q/k/v projections of the fused PSSA layers, and (with w transposed) their input gradients.
//
// oneDNN's 1x1 convolution reaches 55-90% of a 3x3 convolution's FLOP rate on this project's CPU (the
// fewer the input channels, the lower) and MKL's GEMM less; this kernel runs at the 3x3's where each
// image fills its vectors (`xvol_lab.ops.kernels.conv1x1` dispatches on that). A register block is 6 output
// channels x 4 vectors of pixels: 24 accumulators, and per input channel 4 loads, 6 broadcasts and 24
// fused multiply-adds. The pixels of every image are cut into vectors (16 float / 8 double lanes; an
// image's last vector part-filled) and a block takes 4 consecutive vectors, which may belong to different
// images: 4x4 images fill the registers as well as 56x56 ones. x needs each image's (H, W) contiguous
// (any batch and channel strides: a channel chunk of a projection, a phase plane); y is contiguous, or
// (xvol::conv1x1_split) several tensors that split the output channels.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_vec.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

using namespace xvol_vec;

constexpr int kRows = 6;     // output channels per register block
constexpr int kVectors = 4;  // pixel vectors per register block

template <typename scalar_t>
struct Operands {
  const scalar_t* x;   // x(b, c, p) = x[b * xb + c * xc + p]
  int64_t xb, xc;
  int64_t readable;    // elements of x's storage from x on: lanes past an image may be read, not used
  const scalar_t* wp;  // w packed: (ceil(O / kRows), C, kRows), zeros past O
  const scalar_t* bias;  // (O) or nullptr
  scalar_t* const* y;  // output row o of image b: y[o] + b * yb + p (rows of one or several tensors)
  int64_t yb;
  int64_t C, O, P;
};

// Output channels o0 .. o0 + R - 1 of the pixel vectors at x offsets xs[j] / row offsets ys[j] (lanes m[j]
// stored). Loads are masked only where a plain one would leave x's storage (Masked): a vector's lanes past
// its image read the next channel's or image's values, which end in lanes that are never stored. (AVX-512
// masked loads run at half the rate of plain ones on this AMD EPYC, and at 7x7 every block has a tail.)
template <typename scalar_t, int R, bool Masked>
inline void block(const Operands<scalar_t>& a, int64_t o0, const int64_t* xs, const int64_t* ys,
                  const uint32_t* m) {
  using V = typename Lanes<scalar_t>::V;
  const Loader<V, Masked> load;
  // 24 named accumulators (an array of them is spilled to the stack on every iteration by GCC)
  V a00{}, a01{}, a02{}, a03{}, a10{}, a11{}, a12{}, a13{}, a20{}, a21{}, a22{}, a23{},
      a30{}, a31{}, a32{}, a33{}, a40{}, a41{}, a42{}, a43{}, a50{}, a51{}, a52{}, a53{};
#define XVOL_ROWS(DO) DO(0) DO(1) DO(2) DO(3) DO(4) DO(5)
#define XVOL_INIT(r)                                                                            \
  if constexpr (R > r) {                                                                        \
    if (a.bias) a##r##0 = a##r##1 = a##r##2 = a##r##3 = V{} + a.bias[o0 + r];                    \
  }
  XVOL_ROWS(XVOL_INIT)
  const scalar_t* x0 = a.x + xs[0];
  const scalar_t* x1 = a.x + xs[1];
  const scalar_t* x2 = a.x + xs[2];
  const scalar_t* x3 = a.x + xs[3];
  for (int64_t c = 0; c < a.C; ++c) {
    const int64_t off = c * a.xc;
    const V v0 = load(x0 + off, m[0]), v1 = load(x1 + off, m[1]), v2 = load(x2 + off, m[2]),
            v3 = load(x3 + off, m[3]);
    const scalar_t* w = a.wp + (o0 / kRows * a.C + c) * kRows;
#define XVOL_FMA(r)                                                                             \
  if constexpr (R > r) {                                                                        \
    const V wr = V{} + w[r];                                                                     \
    a##r##0 += wr * v0, a##r##1 += wr * v1, a##r##2 += wr * v2, a##r##3 += wr * v3;               \
  }
    XVOL_ROWS(XVOL_FMA)
  }
#define XVOL_STORE(r)                                                                           \
  if constexpr (R > r) {                                                                        \
    scalar_t* yr = a.y[o0 + r];                                                                  \
    store_masked(yr + ys[0], a##r##0, m[0]);                                                     \
    if (m[1]) store_masked(yr + ys[1], a##r##1, m[1]);                                           \
    if (m[2]) store_masked(yr + ys[2], a##r##2, m[2]);                                           \
    if (m[3]) store_masked(yr + ys[3], a##r##3, m[3]);                                           \
  }
  XVOL_ROWS(XVOL_STORE)
#undef XVOL_STORE
#undef XVOL_FMA
#undef XVOL_INIT
#undef XVOL_ROWS
}

// Output channels o0 .. o1 - 1 of one block of pixel vectors, kRows at a time.
template <typename scalar_t, bool Masked>
inline void rows(const Operands<scalar_t>& a, int64_t o0, int64_t o1, const int64_t* xs, const int64_t* ys,
                 const uint32_t* m) {
  int64_t o = o0;
  for (; o + kRows <= o1; o += kRows) block<scalar_t, kRows, Masked>(a, o, xs, ys, m);
  switch (o1 - o) {
    case 1: return block<scalar_t, 1, Masked>(a, o, xs, ys, m);
    case 2: return block<scalar_t, 2, Masked>(a, o, xs, ys, m);
    case 3: return block<scalar_t, 3, Masked>(a, o, xs, ys, m);
    case 4: return block<scalar_t, 4, Masked>(a, o, xs, ys, m);
    case 5: return block<scalar_t, 5, Masked>(a, o, xs, ys, m);
    default: return;
  }
}

// Threads share the work by (pixel block, group of kGroupRows output channels): small images have few
// pixel blocks (4x4 x 16 images: 4), which alone would leave all but a few threads idle.
constexpr int64_t kGroupRows = 8 * kRows;
constexpr int64_t kTaskFlops = int64_t{1} << 22;  // at least this much work per task (about 20 us)

template <typename scalar_t>
void conv1x1_kernel(const Operands<scalar_t>& a, int64_t B) {
  constexpr int N = Lanes<scalar_t>::N;
  const int64_t per_image = (a.P + N - 1) / N, vectors = B * per_image;
  const int64_t blocks = (vectors + kVectors - 1) / kVectors;
  const int64_t groups = (a.O + kGroupRows - 1) / kGroupRows;
  const int64_t grain = std::max<int64_t>(1, kTaskFlops / (2 * kGroupRows * kVectors * N * a.C));
  at::parallel_for(0, blocks * groups, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t blk = item / groups, o0 = item % groups * kGroupRows, o1 = std::min(a.O, o0 + kGroupRows);
      int64_t xs[kVectors], ys[kVectors];
      uint32_t m[kVectors];
      bool inside = true;  // every lane of every load inside x's storage
      for (int j = 0; j < kVectors; ++j) {
        const int64_t v = std::min(blk * kVectors + j, vectors - 1);
        const int64_t b = v / per_image, p = (v % per_image) * N;
        xs[j] = b * a.xb + p;
        ys[j] = b * a.yb + p;
        m[j] = blk * kVectors + j < vectors ? lane_range<N>(0, a.P - p) : 0u;
        inside = inside && xs[j] + (a.C - 1) * a.xc + N <= a.readable;
      }
      if (inside) {
        rows<scalar_t, false>(a, o0, o1, xs, ys, m);
      } else {
        rows<scalar_t, true>(a, o0, o1, xs, ys, m);
      }
    }
  });
}

// w (O, C) -> (ceil(O / kRows), C, kRows): the kRows weights a block broadcasts per input channel side by
// side, zeros past O.
at::Tensor pack(const at::Tensor& w) {
  const int64_t O = w.size(0), C = w.size(1);
  at::Tensor wp = at::zeros({(O + kRows - 1) / kRows, C, kRows}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "conv1x1_pack", [&] {
    const scalar_t* src = w.const_data_ptr<scalar_t>();
    scalar_t* dst = wp.mutable_data_ptr<scalar_t>();
    for (int64_t o = 0; o < O; ++o) {
      for (int64_t c = 0; c < C; ++c) dst[(o / kRows * C + c) * kRows + o % kRows] = src[o * C + c];
    }
  });
  return wp;
}

// y = [y_0, ..., y_{parts-1}] with y_i (B, O / parts, H, W) contiguous: output channels i*O/parts on. Separate
// tensors, not chunks of one: an allocation past glibc's 32 MiB mmap threshold is page-faulted in anew on
// every call (q, k, v of 64 ch x 112 x 112 x 4: 38 MiB stacked, 13 MiB each).
std::vector<at::Tensor> conv1x1_split(const at::Tensor& x_, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias, int64_t parts) {
  TORCH_CHECK(x_.dim() == 4 && weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1,
              "conv1x1: x must be NCHW and weight (O, C, 1, 1)");
  TORCH_CHECK(weight.size(1) == x_.size(1), "conv1x1: weight has ", weight.size(1), " input channels, x ",
              x_.size(1));
  TORCH_CHECK(x_.scalar_type() == weight.scalar_type(), "conv1x1: x and weight differ in dtype");
  TORCH_CHECK(parts > 0 && weight.size(0) % parts == 0, "conv1x1: parts must divide the output channels");
  const int64_t B = x_.size(0), C = x_.size(1), H = x_.size(2), W = x_.size(3), O = weight.size(0);
  const int64_t Op = O / parts, P = H * W;
  const bool images_contiguous = x_.stride(3) == 1 && (H == 1 || x_.stride(2) == W);
  const at::Tensor x = images_contiguous ? x_ : x_.contiguous();
  const at::Tensor wp = pack(weight.reshape({O, C}).contiguous());
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == O, "conv1x1: bias must have one value per output channel");
    b = bias->to(x.scalar_type()).contiguous();
  }
  std::vector<at::Tensor> ys;
  for (int64_t i = 0; i < parts; ++i) {
    ys.push_back(at::empty({B, Op, H, W}, x.options().memory_format(at::MemoryFormat::Contiguous)));
  }
  if (B * O * P == 0 || C == 0) {
    for (auto& y : ys) y.zero_();
    return ys;
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv1x1", [&] {
    std::vector<scalar_t*> rows(O);
    for (int64_t o = 0; o < O; ++o) rows[o] = ys[o / Op].mutable_data_ptr<scalar_t>() + (o % Op) * P;
    const int64_t readable = static_cast<int64_t>(x.storage().nbytes() / sizeof(scalar_t)) - x.storage_offset();
    const Operands<scalar_t> a{x.const_data_ptr<scalar_t>(), x.stride(0), x.stride(1), readable,
                               wp.const_data_ptr<scalar_t>(), b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                               rows.data(), Op * P, C, O, P};
    conv1x1_kernel(a, B);
  });
  return ys;
}

at::Tensor conv1x1(const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias) {
  return conv1x1_split(x, weight, bias, 1)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(xvol, CPU, m) {
  m.impl("conv1x1", &conv1x1);
  m.impl("conv1x1_split", &conv1x1_split);
}
