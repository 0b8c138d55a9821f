// The vector kernels of ops/fused_kernels.cpp, written once against the vector layer (ops/simd_avx512.h,
// ops/simd_avx2.h) and ops/simd_math.h. Deliberately without `#pragma once`: fused_kernels.cpp includes it inside
// each ISA's namespace with QLORA_SIMD / QLORA_SIMD_INLINE defined as that ISA's target attributes. Each kernel
// computes the fp32 operations of its `RefKernels` twin (fused_kernels.cpp) on kLanes lanes, vexp for std::exp; loads
// of a tail fill the missing lanes with zeros, so sums and maxima `keep` only the tail's lanes.

#include "ops/simd_math.h"  // vexp, sigmoid for this ISA

struct FusedKernels {
  template <class T>
  QLORA_SIMD static float ce_row_lse(const T* x, int64_t v) {
    constexpr float inf = std::numeric_limits<float>::infinity();
    Vec mx = set1(-inf);
    bool nan = false;
    for (int64_t j = 0; j < v; j += kLanes) {
      const Tail m = lanes(v - j);
      const Vec a = load(x + j, m);
      nan |= has_nan(a);
      mx = vmax(mx, keep(m, a, mx));
    }
    if (nan) return std::numeric_limits<float>::quiet_NaN();
    const float top = reduce_max(mx);
    if (top == -inf) return -inf;
    const Vec vm = set1(top);
    Vec sum = zero();
    for (int64_t j = 0; j < v; j += kLanes) {
      const Tail m = lanes(v - j);
      sum = add(sum, keep(m, vexp(sub(load(x + j, m), vm)), zero()));
    }
    return top + std::log(reduce_add(sum));
  }

  template <class T>
  QLORA_SIMD static void ce_row_grad(const T* x, int64_t v, float lse, float g, T* out) {
    const Vec vl = set1(lse), vg = set1(g);
    for (int64_t j = 0; j < v; j += kLanes) {
      const Tail m = lanes(v - j);
      store(out + j, m, mul(vexp(sub(load(x + j, m), vl)), vg));
    }
  }

  template <class T>
  QLORA_SIMD static float rms_norm_row(const T* x, const float* w, int64_t h, float eps, T* out) {
    Vec ss = zero();
    for (int64_t j = 0; j < h; j += kLanes) {
      const Vec a = load(x + j, lanes(h - j));
      ss = fmadd(a, a, ss);
    }
    const float r = 1.0f / std::sqrt(reduce_add(ss) / static_cast<float>(h) + eps);
    const Vec vr = set1(r);
    for (int64_t j = 0; j < h; j += kLanes) {
      const Tail m = lanes(h - j);
      const Vec n = round_to(static_cast<T*>(nullptr), mul(load(x + j, m), vr));
      store(out + j, m, mul(n, load(w + j, m)));
    }
    return r;
  }

  template <class T>
  QLORA_SIMD static void rms_norm_grad_row(const T* x, const float* w, const T* g, int64_t h, float r, T* out) {
    Vec dot = zero();
    for (int64_t j = 0; j < h; j += kLanes) {
      const Tail m = lanes(h - j);
      dot = fmadd(mul(load(g + j, m), load(w + j, m)), load(x + j, m), dot);
    }
    const Vec c = set1(r * r * r * reduce_add(dot) / static_cast<float>(h));
    const Vec vr = set1(r);
    for (int64_t j = 0; j < h; j += kLanes) {
      const Tail m = lanes(h - j);
      const Vec gn = mul(load(g + j, m), load(w + j, m));
      store(out + j, m, fnmadd(load(x + j, m), c, mul(vr, gn)));
    }
  }

  template <class T>
  QLORA_SIMD static void rope_row(const T* x, const T* c, const T* s, int64_t half, bool backward, T* out) {
    const Vec neg = set1(-1.0f);
    for (int64_t j = 0; j < half; j += kLanes) {
      const Tail m = lanes(half - j);
      const Vec a = load(x + j, m), b = load(x + half + j, m);
      const Vec s0 = load(s + j, m), s1 = load(s + half + j, m);
      const Vec p = backward ? s1 : mul(s0, neg);
      const Vec q = backward ? mul(s0, neg) : s1;
      store(out + j, m, add(mul(a, load(c + j, m)), mul(b, p)));
      store(out + half + j, m, add(mul(b, load(c + half + j, m)), mul(a, q)));
    }
  }

  template <class T>
  QLORA_SIMD static void swiglu(const T* g, const T* u, int64_t e0, int64_t e1, T* out) {
    for (int64_t e = e0; e < e1; e += kLanes) {
      const Tail m = lanes(e1 - e);
      const Vec a = load(g + e, m);
      store(out + e, m, mul(mul(a, sigmoid(a)), load(u + e, m)));
    }
  }

  template <class T>
  QLORA_SIMD static void swiglu_grad(const T* g, const T* u, const T* go, int64_t e0, int64_t e1, T* gg, T* gu) {
    const Vec one = set1(1.0f);
    for (int64_t e = e0; e < e1; e += kLanes) {
      const Tail m = lanes(e1 - e);
      const Vec a = load(g + e, m), sg = sigmoid(a), d = load(go + e, m);
      const Vec ds = mul(sg, add(one, mul(a, sub(one, sg))));
      store(gg + e, m, mul(mul(d, load(u + e, m)), ds));
      store(gu + e, m, mul(d, mul(a, sg)));
    }
  }

  QLORA_SIMD_INLINE static IVec lowbias32(IVec x) {
    x = ixor(x, ishr<16>(x));
    x = imul(x, iset1(0x7feb352dU));
    x = ixor(x, ishr<15>(x));
    x = imul(x, iset1(0x846ca68bU));
    return ixor(x, ishr<16>(x));
  }

  template <class T>
  QLORA_SIMD static void dropout(const T* x, int64_t e0, int64_t e1, uint64_t seed, uint32_t thr, float scale, T* out) {
    const IVec k0 = iset1(static_cast<uint32_t>(seed)), k1 = iset1(static_cast<uint32_t>(seed >> 32));
    const IVec vthr = iset1(thr);
    const Vec vs = set1(scale);
    for (int64_t e = e0; e < e1; e += kLanes) {
      const Tail m = lanes(e1 - e);
      const IVec h = lowbias32(iadd(lowbias32(ixor(iota(static_cast<uint32_t>(e)), k0)), k1));
      store(out + e, m, keep_if_ge(h, vthr, mul(load(x + e, m), vs)));
    }
  }
};
