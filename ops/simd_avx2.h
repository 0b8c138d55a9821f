// The AVX2 vector layer of the fused CPU kernels (internal to ops/): the names of ops/simd_avx512.h on 8 fp32 lanes
// (AVX2 + FMA + F16C: Haswell and later, every AMD Zen). AVX2 has no mask registers: a Tail is the count of lanes a
// load or store touches, full vectors load and store directly, partial ones go through an 8-lane buffer.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#define QLORA_AVX2 __attribute__((target("avx2,fma,f16c")))
#define QLORA_AVX2_INLINE QLORA_AVX2 __attribute__((always_inline)) inline

namespace qlora::ops::detail::avx2 {

constexpr int64_t kLanes = 8;
using Vec = __m256;
using IVec = __m256i;
struct Tail {
  int n;  // the first n lanes, 0 < n <= 8
};

QLORA_AVX2_INLINE Tail lanes(int64_t left) {
  return Tail{left >= 8 ? 8 : static_cast<int>(left)};
}
// All-ones 32-bit lanes for the first n.
QLORA_AVX2_INLINE IVec lane_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// 8 16-bit values (bf16 or fp16 bits), zeros past the tail.
QLORA_AVX2_INLINE __m128i load_u16(const void* p, Tail m) {
  if (m.n == 8) return _mm_loadu_si128(static_cast<const __m128i*>(p));
  uint16_t buf[8] = {};
  std::memcpy(buf, p, sizeof(uint16_t) * static_cast<size_t>(m.n));
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(buf));
}
QLORA_AVX2_INLINE void store_u16(void* p, Tail m, __m128i h) {
  if (m.n == 8) {
    _mm_storeu_si128(static_cast<__m128i*>(p), h);
    return;
  }
  uint16_t buf[8];
  _mm_storeu_si128(reinterpret_cast<__m128i*>(buf), h);
  std::memcpy(p, buf, sizeof(uint16_t) * static_cast<size_t>(m.n));
}

// Loads fill the lanes past the tail with zeros.
QLORA_AVX2_INLINE Vec load(const float* p, Tail m) {
  return m.n == 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lane_mask(m.n));
}
QLORA_AVX2_INLINE Vec load(const c10::BFloat16* p, Tail m) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load_u16(p, m)), 16));
}
QLORA_AVX2_INLINE Vec load(const c10::Half* p, Tail m) {
  return _mm256_cvtph_ps(load_u16(p, m));
}

// bf16 bits (in the low half of each 32-bit lane) of v rounded to nearest even; NaN becomes the quiet NaN 0x7FC0 as
// c10::BFloat16 does.
QLORA_AVX2_INLINE IVec bf16_bits(Vec v) {
  const IVec bits = _mm256_castps_si256(v);
  const IVec lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const IVec r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  const IVec nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), nan);
}

QLORA_AVX2_INLINE void store(float* p, Tail m, Vec v) {
  if (m.n == 8) {
    _mm256_storeu_ps(p, v);
  } else {
    _mm256_maskstore_ps(p, lane_mask(m.n), v);
  }
}
QLORA_AVX2_INLINE void store(c10::BFloat16* p, Tail m, Vec v) {
  const IVec r = bf16_bits(v);  // values <= 0xFFFF: the unsigned-saturating pack keeps them
  store_u16(p, m, _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1)));
}
QLORA_AVX2_INLINE void store(c10::Half* p, Tail m, Vec v) {
  store_u16(p, m, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// The fp32 value of a dtype-T rounding of v (LlamaRMSNorm's intermediate cast; attention's p in the input dtype).
QLORA_AVX2_INLINE Vec round_to(float*, Vec v) {
  return v;
}
QLORA_AVX2_INLINE Vec round_to(c10::BFloat16*, Vec v) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(bf16_bits(v), 16));
}
QLORA_AVX2_INLINE Vec round_to(c10::Half*, Vec v) {
  return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

QLORA_AVX2_INLINE Vec set1(float x) {
  return _mm256_set1_ps(x);
}
QLORA_AVX2_INLINE Vec zero() {
  return _mm256_setzero_ps();
}
QLORA_AVX2_INLINE Vec add(Vec a, Vec b) {
  return _mm256_add_ps(a, b);
}
QLORA_AVX2_INLINE Vec sub(Vec a, Vec b) {
  return _mm256_sub_ps(a, b);
}
QLORA_AVX2_INLINE Vec mul(Vec a, Vec b) {
  return _mm256_mul_ps(a, b);
}
QLORA_AVX2_INLINE Vec div(Vec a, Vec b) {
  return _mm256_div_ps(a, b);
}
QLORA_AVX2_INLINE Vec vmax(Vec a, Vec b) {
  return _mm256_max_ps(a, b);
}
QLORA_AVX2_INLINE Vec vmin(Vec a, Vec b) {
  return _mm256_min_ps(a, b);
}
QLORA_AVX2_INLINE Vec fmadd(Vec a, Vec b, Vec c) {  // a * b + c
  return _mm256_fmadd_ps(a, b, c);
}
QLORA_AVX2_INLINE Vec fnmadd(Vec a, Vec b, Vec c) {  // c - a * b
  return _mm256_fnmadd_ps(a, b, c);
}
QLORA_AVX2_INLINE float reduce_add(Vec v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
QLORA_AVX2_INLINE float reduce_max(Vec v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

// a in the tail's lanes, b in the others.
QLORA_AVX2_INLINE Vec keep(Tail m, Vec a, Vec b) {
  return m.n == 8 ? a : _mm256_blendv_ps(b, a, _mm256_castsi256_ps(lane_mask(m.n)));
}
QLORA_AVX2_INLINE bool has_nan(Vec v) {
  return _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0;
}
// x where x is NaN, y elsewhere.
QLORA_AVX2_INLINE Vec nan_or(Vec x, Vec y) {
  return _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}
// v where x >= lo, 0 elsewhere (and where x is NaN).
QLORA_AVX2_INLINE Vec zero_below(Vec x, Vec lo, Vec v) {
  return _mm256_and_ps(_mm256_cmp_ps(x, lo, _CMP_GE_OQ), v);
}
QLORA_AVX2_INLINE Vec round_nearest(Vec v) {
  return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// 2^n for integral n in [-126, 127], through the exponent bits.
QLORA_AVX2_INLINE Vec pow2(Vec n) {
  const IVec e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
}

// 32-bit unsigned integer lanes (dropout's counter hash).
QLORA_AVX2_INLINE IVec iset1(uint32_t x) {
  return _mm256_set1_epi32(static_cast<int>(x));
}
QLORA_AVX2_INLINE IVec iota(uint32_t base) {  // base, base + 1, ...
  return _mm256_add_epi32(iset1(base), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
QLORA_AVX2_INLINE IVec iadd(IVec a, IVec b) {
  return _mm256_add_epi32(a, b);
}
QLORA_AVX2_INLINE IVec ixor(IVec a, IVec b) {
  return _mm256_xor_si256(a, b);
}
QLORA_AVX2_INLINE IVec imul(IVec a, IVec b) {  // low 32 bits of the product
  return _mm256_mullo_epi32(a, b);
}
template <int N>
QLORA_AVX2_INLINE IVec ishr(IVec a) {  // logical shift right
  return _mm256_srli_epi32(a, N);
}
// v where h >= thr (unsigned), 0 elsewhere.
QLORA_AVX2_INLINE Vec keep_if_ge(IVec h, IVec thr, Vec v) {
  const IVec ge = _mm256_cmpeq_epi32(_mm256_max_epu32(h, thr), h);
  return _mm256_and_ps(_mm256_castsi256_ps(ge), v);
}

// 32-bit signed integer lanes from memory, zeros past the tail.
QLORA_AVX2_INLINE IVec iload(const int32_t* p, Tail m) {
  return m.n == 8 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskload_epi32(p, lane_mask(m.n));
}
// v where lo <= x < hi or x == eq (signed), other elsewhere (the flash attention's mask intervals).
QLORA_AVX2_INLINE Vec keep_if_in(IVec x, IVec lo, IVec hi, IVec eq, Vec v, Vec other) {
  const IVec below_lo = _mm256_cmpgt_epi32(lo, x), below_hi = _mm256_cmpgt_epi32(hi, x);
  const IVec in = _mm256_or_si256(_mm256_andnot_si256(below_lo, below_hi), _mm256_cmpeq_epi32(x, eq));
  return _mm256_blendv_ps(other, v, _mm256_castsi256_ps(in));
}

}  // namespace qlora::ops::detail::avx2
