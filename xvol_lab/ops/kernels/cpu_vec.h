// Vector helpers shared by the CPU kernels (pssa_cpu.cpp, conv1x1_cpu.cpp): 64-byte vectors of float
// (16 lanes) or double (8 lanes) as GCC vector types, unaligned and masked loads and stores. Masked
// accesses never touch the addresses of the lanes outside the mask (AVX-512 masked instructions; lane by
// lane on builds without AVX-512).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace xvol_vec {

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
#if defined(__AVX512F__)
  if constexpr (sizeof(S) == 4) {
    const __m512 r = _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p);
    std::memcpy(&v, &r, sizeof(V));
  } else {
    const __m512d r = _mm512_maskz_loadu_pd(static_cast<__mmask8>(m), p);
    std::memcpy(&v, &r, sizeof(V));
  }
#else
  constexpr int N = 64 / static_cast<int>(sizeof(S));
  S lanes[N] = {};
  for (int i = 0; i < N; ++i) {
    if (m >> i & 1u) lanes[i] = p[i];
  }
  std::memcpy(&v, lanes, sizeof(V));
#endif
  return v;
}

// p[i] = lane i where bit i of `m` is set; other addresses untouched. A full mask takes a plain store.
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

}  // namespace xvol_vec
