// The vector rows of ops/flash_attention.cpp, written once against the vector layer (ops/simd_avx512.h,
// ops/simd_avx2.h) and ops/simd_math.h. Deliberately without `#pragma once`: flash_attention.cpp includes it inside
// each ISA's namespace with QLORA_SIMD / QLORA_SIMD_INLINE defined as that ISA's target attributes (the scheme of
// ops/fused_kernels.cpp).
//
// RefRows (flash_attention.cpp) on kLanes columns at a time, vexp for std::exp.

#include "ops/simd_math.h"  // vexp for this ISA

struct FlashRows {
  QLORA_SIMD static void softmax_row(float* s, int64_t c0, int64_t c1, int32_t lo, int32_t hi, int32_t self,
                                     float scale, c10::BFloat16* p, float* m_out, float* l_out) {
    const Vec vscale = set1(scale), ninf = set1(-std::numeric_limits<float>::infinity());
    const IVec vlo = iset1(static_cast<uint32_t>(lo)), vhi = iset1(static_cast<uint32_t>(hi));
    const IVec vself = iset1(static_cast<uint32_t>(self));
    const int64_t n = c1 - c0;
    const bool all = lo <= c0 && hi >= c1;  // every column allowed: no mask to apply
    Vec mx = ninf;
    for (int64_t x = 0; x < n; x += kLanes) {
      const Tail t = lanes(n - x);
      Vec v = mul(load(s + x, t), vscale);
      if (!all) v = keep_if_in(iota(static_cast<uint32_t>(c0 + x)), vlo, vhi, vself, v, ninf);
      store(s + x, t, v);
      mx = vmax(mx, keep(t, v, ninf));
    }
    const float m = reduce_max(mx);
    const Vec vm = set1(m);
    Vec l = zero();
    for (int64_t x = 0; x < n; x += kLanes) {
      const Tail t = lanes(n - x);
      const Vec e = keep(t, vexp(sub(load(s + x, t), vm)), zero());
      l = add(l, e);
      store(p + x, t, e);
    }
    *m_out = m;
    *l_out = reduce_add(l);
  }

  QLORA_SIMD static void grad_row(const float* s, const float* dp, int64_t c0, int64_t c1, int32_t key,
                                  const int32_t* lo, const int32_t* hi, const int32_t* self, const float* lse,
                                  const float* dsum, float scale, c10::BFloat16* p, c10::BFloat16* ds) {
    const Vec vscale = set1(scale);
    const IVec vkey = iset1(static_cast<uint32_t>(key));
    const int64_t n = c1 - c0;
    for (int64_t x = 0; x < n; x += kLanes) {
      const Tail t = lanes(n - x);
      const int64_t c = c0 + x;
      const Vec e = vexp(fmadd(load(s + x, t), vscale, sub(zero(), load(lse + c, t))));
      const Vec pv =
          lo == nullptr ? e : keep_if_in(vkey, iload(lo + c, t), iload(hi + c, t), iload(self + c, t), e, zero());
      store(p + x, t, pv);
      store(ds + x, t, mul(pv, sub(load(dp + x, t), load(dsum + c, t))));
    }
  }
};
