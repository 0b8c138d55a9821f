// Vector math of the fused CPU kernels, written once against the vector layer (ops/simd_avx512.h, ops/simd_avx2.h).
// Deliberately without `#pragma once`: a kernel file includes it inside each ISA's namespace with QLORA_SIMD_INLINE
// defined as that ISA's inline target attribute, so every function here is compiled once per ISA (the scheme of
// ops/fused_kernels.cpp's head comment).

// exp(x) for x <= 88: n = round(x log2 e), r = x - n ln2 (ln2 in two parts), exp(r) by Cephes' expf polynomial (about
// 2 ulp), times 2^n through the exponent bits. x < -87.3 (where 2^n would leave the normal range), -inf included,
// gives 0; NaN gives 0 too (callers that must keep NaN use nan_or).
QLORA_SIMD_INLINE Vec vexp(Vec x) {
  const Vec lo = set1(-87.3f);
  const Vec xc = vmin(vmax(x, lo), set1(88.0f));
  const Vec n = round_nearest(mul(xc, set1(1.44269504088896341f)));
  Vec r = fnmadd(n, set1(0.693359375f), xc);
  r = fnmadd(n, set1(-2.12194440e-4f), r);
  Vec p = set1(1.9875691500e-4f);
  p = fmadd(p, r, set1(1.3981999507e-3f));
  p = fmadd(p, r, set1(8.3334519073e-3f));
  p = fmadd(p, r, set1(4.1665795894e-2f));
  p = fmadd(p, r, set1(1.6666665459e-1f));
  p = fmadd(p, r, set1(5.0000001201e-1f));
  p = fmadd(p, mul(r, r), add(r, set1(1.0f)));
  return zero_below(x, lo, mul(p, pow2(n)));
}

QLORA_SIMD_INLINE Vec sigmoid(Vec v) {
  const Vec one = set1(1.0f);
  return div(one, add(one, vexp(sub(zero(), v))));
}
