// The vector kernel of ops/decode_attention.cpp, written once against the vector layer (ops/simd_avx512.h,
// ops/simd_avx2.h) and ops/simd_math.h. Deliberately without `#pragma once`: decode_attention.cpp includes it inside
// each ISA's namespace with QLORA_SIMD / QLORA_SIMD_INLINE defined as that ISA's target attributes (the scheme of
// ops/fused_kernels.cpp).
//
// RefKernels::row (decode_attention.cpp) on kLanes lanes: the scores' dot products over d, the exponentials over kLanes
// keys at a time, the P.V sum over d (vexp for std::exp; a NaN score stays NaN). The accumulators of the P.V sum stay
// in registers for up to 8 vectors of d (kSlab columns) at a time, so V is read once per kSlab columns.

#include "ops/simd_math.h"  // vexp, sigmoid for this ISA

struct DecodeKernels {
  static constexpr int64_t kSlab = 8 * kLanes;
  static constexpr int kKeys = 4;  // keys whose scores are computed together

  // Columns [0, cols) of the output, cols in (kLanes * (NC - 1), kLanes * NC].
  template <int NC, class T>
  QLORA_SIMD static void pv_slab(const T* v, int64_t vs, const bool* allowed, int64_t s_len, int64_t cols,
                                 const float* p, float l, T* out) {
    Vec acc[NC];
    for (int c = 0; c < NC; ++c) acc[c] = zero();
    const Tail full = lanes(kLanes), last = lanes(cols - kLanes * (NC - 1));
    for (int64_t j = 0; j < s_len; ++j) {
      if (allowed != nullptr && !allowed[j]) continue;
      const Vec pj = set1(p[j]);
      const T* vj = v + j * vs;
      for (int c = 0; c < NC; ++c) acc[c] = fmadd(pj, load(vj + kLanes * c, c == NC - 1 ? last : full), acc[c]);
    }
    const Vec vl = set1(l);
    for (int c = 0; c < NC; ++c) store(out + kLanes * c, c == NC - 1 ? last : full, div(acc[c], vl));
  }

  // pv_slab<NC> for NC = 1..8, by NC - 1.
  template <class T, int... I>
  static constexpr auto pv_slab_table(std::integer_sequence<int, I...>) {
    return std::array{&pv_slab<I + 1, T>...};
  }
  template <class T>
  static constexpr auto kPvSlabs = pv_slab_table<T>(std::make_integer_sequence<int, 8>{});

  template <class T>
  QLORA_SIMD static void row(const T* q, const T* k, const T* v, int64_t ks, int64_t vs, const bool* allowed,
                             int64_t s_len, int64_t d, float scale, float* scratch, float* /*acc*/, T* out) {
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    float m = kNegInf;
    int64_t j = 0;
    // kKeys keys at a time: their dot products are independent chains, so one key's reduction no longer waits for
    // the previous key's (each score is computed exactly as one key alone would be; a masked key's is discarded).
    for (; j + kKeys <= s_len; j += kKeys) {
      Vec dot[kKeys];
      for (int u = 0; u < kKeys; ++u) dot[u] = zero();
      for (int64_t i = 0; i < d; i += kLanes) {
        const Tail mi = lanes(d - i);
        const Vec qi = load(q + i, mi);
        for (int u = 0; u < kKeys; ++u) dot[u] = fmadd(qi, load(k + (j + u) * ks + i, mi), dot[u]);
      }
      for (int u = 0; u < kKeys; ++u) {
        scratch[j + u] = allowed != nullptr && !allowed[j + u] ? kNegInf : reduce_add(dot[u]) * scale;
        m = std::max(m, scratch[j + u]);
      }
    }
    for (; j < s_len; ++j) {
      if (allowed != nullptr && !allowed[j]) {
        scratch[j] = kNegInf;
        continue;
      }
      const T* kj = k + j * ks;
      Vec dot = zero();
      for (int64_t i = 0; i < d; i += kLanes) {
        const Tail mi = lanes(d - i);
        dot = fmadd(load(q + i, mi), load(kj + i, mi), dot);
      }
      scratch[j] = reduce_add(dot) * scale;
      m = std::max(m, scratch[j]);
    }
    const Vec vm = set1(m);
    Vec vl = zero();
    for (int64_t j = 0; j < s_len; j += kLanes) {
      const Tail mj = lanes(s_len - j);
      const Vec x = sub(load(scratch + j, mj), vm);
      const Vec p = nan_or(x, vexp(x));
      vl = add(vl, keep(mj, p, zero()));
      store(scratch + j, mj, round_to(static_cast<T*>(nullptr), p));
    }
    const float l = reduce_add(vl);
    for (int64_t c0 = 0; c0 < d; c0 += kSlab) {
      const int64_t cols = std::min(kSlab, d - c0);
      kPvSlabs<T>[(cols + kLanes - 1) / kLanes - 1](v + c0, vs, allowed, s_len, cols, scratch, l, out + c0);
    }
  }
};
