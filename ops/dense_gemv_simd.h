// The vector kernel of ops/dense_gemv.cpp, written once against the vector layer (ops/simd_avx512.h,
// ops/simd_avx2.h). Deliberately without `#pragma once`: dense_gemv.cpp includes it inside each ISA's namespace with
// QLORA_SIMD / QLORA_SIMD_INLINE defined as that ISA's target attributes (the scheme of ops/fused_kernels.cpp).
//
// A row in four accumulators of kLanes fp32 lanes (elements i with i / kLanes % 4 == a go to accumulator a), the tail
// masked into the first, then the four added and reduced: RefKernels::row's sum in another order.

struct DenseGemvKernels {
  template <class T>
  QLORA_SIMD static float row(const c10::BFloat16* w, const T* x, int64_t in) {
    constexpr int64_t kStep = 4 * kLanes;
    const Tail full = lanes(kLanes);
    Vec a0 = zero(), a1 = zero(), a2 = zero(), a3 = zero();
    int64_t i = 0;
    for (; i + kStep <= in; i += kStep) {
      a0 = fmadd(load(w + i, full), load(x + i, full), a0);
      a1 = fmadd(load(w + i + kLanes, full), load(x + i + kLanes, full), a1);
      a2 = fmadd(load(w + i + 2 * kLanes, full), load(x + i + 2 * kLanes, full), a2);
      a3 = fmadd(load(w + i + 3 * kLanes, full), load(x + i + 3 * kLanes, full), a3);
    }
    for (; i < in; i += kLanes) {
      const Tail m = lanes(in - i);
      a0 = fmadd(load(w + i, m), load(x + i, m), a0);
    }
    return reduce_add(add(add(a0, a1), add(a2, a3)));
  }
};
