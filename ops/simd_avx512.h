// The AVX-512 vector layer of the fused CPU kernels (internal to ops/): 16 fp32 lanes, loads and stores of fp32 /
// bf16 / fp16 with one round-to-nearest-even per store, tails through masks. ops/simd_avx2.h offers the same names on
// 8 lanes; the kernels are written once against these names (ops/simd_kernels.h explains how).
//
// GCC 12 reports false "(maybe-)uninitialized" warnings inside its own AVX-512 intrinsic headers: many intrinsics
// pass _mm512_undefined_ps() (`__m512 __Y = __Y;`) as the unused merge source, and the warning fires where they
// are inlined. They are off here; the kernel files turn them off around their own AVX-512 sections.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cstdint>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#define QLORA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define QLORA_AVX512_INLINE QLORA_AVX512 __attribute__((always_inline)) inline

namespace qlora::ops::detail::avx512 {

constexpr int64_t kLanes = 16;
using Vec = __m512;
using IVec = __m512i;
using Tail = __mmask16;  // the lanes a load or store touches: the first min(left, 16)

QLORA_AVX512_INLINE Tail lanes(int64_t left) {
  return left >= 16 ? static_cast<Tail>(0xFFFF) : static_cast<Tail>((1U << left) - 1U);
}

// Loads fill the lanes past the tail with zeros.
QLORA_AVX512_INLINE Vec load(const float* p, Tail m) {
  return _mm512_maskz_loadu_ps(m, p);
}
QLORA_AVX512_INLINE Vec load(const c10::BFloat16* p, Tail m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
QLORA_AVX512_INLINE Vec load(const c10::Half* p, Tail m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

// bf16 bits (in the low half of each 32-bit lane) of v rounded to nearest even; NaN becomes the quiet NaN 0x7FC0 as
// c10::BFloat16 does.
QLORA_AVX512_INLINE IVec bf16_bits(Vec v) {
  const IVec bits = _mm512_castps_si512(v);
  const IVec lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const IVec r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
}

QLORA_AVX512_INLINE void store(float* p, Tail m, Vec v) {
  _mm512_mask_storeu_ps(p, m, v);
}
QLORA_AVX512_INLINE void store(c10::BFloat16* p, Tail m, Vec v) {
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(bf16_bits(v)));
}
QLORA_AVX512_INLINE void store(c10::Half* p, Tail m, Vec v) {
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// The fp32 value of a dtype-T rounding of v (LlamaRMSNorm's intermediate cast; attention's p in the input dtype).
QLORA_AVX512_INLINE Vec round_to(float*, Vec v) {
  return v;
}
QLORA_AVX512_INLINE Vec round_to(c10::BFloat16*, Vec v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(bf16_bits(v), 16));
}
QLORA_AVX512_INLINE Vec round_to(c10::Half*, Vec v) {
  return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

QLORA_AVX512_INLINE Vec set1(float x) {
  return _mm512_set1_ps(x);
}
QLORA_AVX512_INLINE Vec zero() {
  return _mm512_setzero_ps();
}
QLORA_AVX512_INLINE Vec add(Vec a, Vec b) {
  return _mm512_add_ps(a, b);
}
QLORA_AVX512_INLINE Vec sub(Vec a, Vec b) {
  return _mm512_sub_ps(a, b);
}
QLORA_AVX512_INLINE Vec mul(Vec a, Vec b) {
  return _mm512_mul_ps(a, b);
}
QLORA_AVX512_INLINE Vec div(Vec a, Vec b) {
  return _mm512_div_ps(a, b);
}
QLORA_AVX512_INLINE Vec vmax(Vec a, Vec b) {
  return _mm512_max_ps(a, b);
}
QLORA_AVX512_INLINE Vec vmin(Vec a, Vec b) {
  return _mm512_min_ps(a, b);
}
QLORA_AVX512_INLINE Vec fmadd(Vec a, Vec b, Vec c) {  // a * b + c
  return _mm512_fmadd_ps(a, b, c);
}
QLORA_AVX512_INLINE Vec fnmadd(Vec a, Vec b, Vec c) {  // c - a * b
  return _mm512_fnmadd_ps(a, b, c);
}
QLORA_AVX512_INLINE float reduce_add(Vec v) {
  return _mm512_reduce_add_ps(v);
}
QLORA_AVX512_INLINE float reduce_max(Vec v) {
  return _mm512_reduce_max_ps(v);
}

// a in the tail's lanes, b in the others.
QLORA_AVX512_INLINE Vec keep(Tail m, Vec a, Vec b) {
  return _mm512_mask_mov_ps(b, m, a);
}
QLORA_AVX512_INLINE bool has_nan(Vec v) {
  return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0;
}
// x where x is NaN, y elsewhere.
QLORA_AVX512_INLINE Vec nan_or(Vec x, Vec y) {
  return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}
// v where x >= lo, 0 elsewhere (and where x is NaN).
QLORA_AVX512_INLINE Vec zero_below(Vec x, Vec lo, Vec v) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ), v);
}
QLORA_AVX512_INLINE Vec round_nearest(Vec v) {
  return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// 2^n for integral n in [-126, 127], through the exponent bits.
QLORA_AVX512_INLINE Vec pow2(Vec n) {
  const IVec e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
  return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
}

// 32-bit unsigned integer lanes (dropout's counter hash).
QLORA_AVX512_INLINE IVec iset1(uint32_t x) {
  return _mm512_set1_epi32(static_cast<int>(x));
}
QLORA_AVX512_INLINE IVec iota(uint32_t base) {  // base, base + 1, ...
  return _mm512_add_epi32(iset1(base), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}
QLORA_AVX512_INLINE IVec iadd(IVec a, IVec b) {
  return _mm512_add_epi32(a, b);
}
QLORA_AVX512_INLINE IVec ixor(IVec a, IVec b) {
  return _mm512_xor_si512(a, b);
}
QLORA_AVX512_INLINE IVec imul(IVec a, IVec b) {  // low 32 bits of the product
  return _mm512_mullo_epi32(a, b);
}
template <int N>
QLORA_AVX512_INLINE IVec ishr(IVec a) {  // logical shift right
  return _mm512_srli_epi32(a, N);
}
// v where h >= thr (unsigned), 0 elsewhere.
QLORA_AVX512_INLINE Vec keep_if_ge(IVec h, IVec thr, Vec v) {
  return _mm512_maskz_mov_ps(_mm512_cmpge_epu32_mask(h, thr), v);
}

// 32-bit signed integer lanes from memory, zeros past the tail.
QLORA_AVX512_INLINE IVec iload(const int32_t* p, Tail m) {
  return _mm512_maskz_loadu_epi32(m, p);
}
// v where lo <= x < hi or x == eq (signed), other elsewhere (the flash attention's mask intervals).
QLORA_AVX512_INLINE Vec keep_if_in(IVec x, IVec lo, IVec hi, IVec eq, Vec v, Vec other) {
  const __mmask16 in = _mm512_cmpge_epi32_mask(x, lo) & _mm512_cmplt_epi32_mask(x, hi);
  return _mm512_mask_mov_ps(other, in | _mm512_cmpeq_epi32_mask(x, eq), v);
}

}  // namespace qlora::ops::detail::avx512

#pragma GCC diagnostic pop
