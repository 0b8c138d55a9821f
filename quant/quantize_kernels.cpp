// CPU quantize kernels behind quantize_4bit: absmax per block and packed 4-bit codes, written straight into
// the output (no per-element code array).
//
// Naming (ggml's rule): `<thing>_ref` is the scalar kernel and the specification (quantize_blocks_ref: a binary
// search over the codebook's decision bounds, bitsandbytes' rule); `<thing>_avx2` / `_avx512` count the bounds
// below each value with vector compares, which is the same integer, and use the same fp32 operations (|x| max, one
// reciprocal, one multiply, clamp to [-1, 1]), so every path gives the same bytes
// (tests/quant/test_quantize_paths.cpp compares every path with the Isa::kScalar one, i.e. `_ref`).

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>

#include "common/error.h"
#include "quant/dequant_kernels.h"

namespace qlora::quant::detail {
namespace {

constexpr float kMinAbsmax = 1e-38f;  // bitsandbytes clamps the absmax to this before the reciprocal
constexpr int64_t kMaxBlocksize = codec::kMaxBlocksize;

template <class T>
const T* typed(const void* x) {
  return static_cast<const T*>(x);
}

// Number of bounds strictly below s (sorted bounds, bounds[15] = +inf): branchless binary search.
inline int bucket(const CodeBounds& cb, float s) {
  int i = 0;
  for (int step = 8; step >= 1; step /= 2) {
    if (s > cb.bounds[static_cast<size_t>(i + step - 1)]) i += step;
  }
  return i;
}

inline uint8_t code_of(const CodeBounds& cb, float s) {
  const int k = bucket(cb, s);
  return cb.remap ? cb.order[static_cast<size_t>(k)] : static_cast<uint8_t>(k);
}

// Packs codes[0..len) (len even, or odd with the pad code appended by the caller) into dst.
inline void pack_codes(const uint8_t* codes, int64_t len, uint8_t* dst) {
  for (int64_t i = 0; i < len / 2; ++i) dst[i] = static_cast<uint8_t>((codes[2 * i] << 4) | codes[2 * i + 1]);
}

// ---------------------------------------------------------------------------------------------------
// _ref: one block (also every partial last block of the SIMD paths), then blocks [b0, b1).
template <class T>
void quantize_block_ref(const T* x, int64_t e0, int64_t e1, const CodeBounds& cb, float* absmax, uint8_t* packed) {
  float m = 0.0f;
  for (int64_t e = e0; e < e1; ++e) m = std::max(m, std::fabs(static_cast<float>(x[e])));
  *absmax = m;
  const float inv = 1.0f / std::max(m, kMinAbsmax);
  std::array<uint8_t, kMaxBlocksize + 1> codes;
  int64_t len = 0;
  for (int64_t e = e0; e < e1; ++e) {
    const float s = std::min(1.0f, std::max(-1.0f, static_cast<float>(x[e]) * inv));
    codes[static_cast<size_t>(len++)] = code_of(cb, s);
  }
  if (len % 2) codes[static_cast<size_t>(len++)] = code_of(cb, 0.0f);  // bitsandbytes pads with 0.0
  pack_codes(codes.data(), len, packed + e0 / 2);
}

template <class T>
void quantize_blocks_ref(const void* x, int64_t n, int64_t bs, int64_t b0, int64_t b1, const CodeBounds& cb,
                         float* absmax, uint8_t* packed) {
  for (int64_t b = b0; b < b1; ++b) {
    quantize_block_ref(typed<T>(x), b * bs, std::min(n, (b + 1) * bs), cb, absmax + b, packed);
  }
}

// ---------------------------------------------------------------------------------------------------
// AVX2: 8 lanes; codes counted with compares, packed through a small buffer.
#define QLORA_AVX2 __attribute__((target("avx2,f16c")))

template <class T>
QLORA_AVX2 inline __m256 load8(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm256_loadu_ps(p);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  } else {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
}

template <class T>
QLORA_AVX2 void quantize_blocks_avx2(const void* xv, int64_t n, int64_t bs, int64_t b0, int64_t b1,
                                     const CodeBounds& cb, float* absmax, uint8_t* packed) {
  const T* x = typed<T>(xv);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 one = _mm256_set1_ps(1.0f), neg_one = _mm256_set1_ps(-1.0f);
  __m256 bound[15];
  for (size_t i = 0; i < 15; ++i) bound[i] = _mm256_set1_ps(cb.bounds[i]);
  alignas(32) std::array<int32_t, 8> k;
  std::array<uint8_t, kMaxBlocksize> codes;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t e0 = b * bs;
    if (e0 + bs > n) {
      quantize_block_ref(x, e0, n, cb, absmax + b, packed);
      continue;
    }
    __m256 m = _mm256_setzero_ps();
    for (int64_t i = 0; i < bs; i += 8) m = _mm256_max_ps(_mm256_and_ps(load8(x + e0 + i), abs_mask), m);
    alignas(32) std::array<float, 8> lanes;
    _mm256_store_ps(lanes.data(), m);
    const float am = *std::max_element(lanes.begin(), lanes.end());
    absmax[b] = am;
    const __m256 inv = _mm256_set1_ps(1.0f / std::max(am, kMinAbsmax));
    for (int64_t i = 0; i < bs; i += 8) {
      const __m256 s = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(load8(x + e0 + i), inv), neg_one), one);
      __m256i cnt = _mm256_setzero_si256();
      for (size_t j = 0; j < 15; ++j) {
        cnt = _mm256_sub_epi32(cnt, _mm256_castps_si256(_mm256_cmp_ps(s, bound[j], _CMP_GT_OQ)));
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(k.data()), cnt);
      for (size_t j = 0; j < 8; ++j) {
        codes[static_cast<size_t>(i) + j] = cb.remap ? cb.order[static_cast<size_t>(k[j])] : static_cast<uint8_t>(k[j]);
      }
    }
    pack_codes(codes.data(), bs, packed + e0 / 2);
  }
}

// ---------------------------------------------------------------------------------------------------
// AVX-512: 16 lanes; counts narrowed to bytes and packed two per byte in registers.
// GCC 12 reports false "may be used uninitialized" warnings inside its own AVX-512 intrinsic headers (intrinsics
// pass _mm512_undefined_*(), `__m512 __Y = __Y;`, as the unused merge source): off for this section only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define QLORA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,f16c")))

template <class T>
QLORA_AVX512 inline __m512 load16(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_loadu_ps(p);
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  } else {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
}

template <class T>
QLORA_AVX512 void quantize_blocks_avx512(const void* xv, int64_t n, int64_t bs, int64_t b0, int64_t b1,
                                         const CodeBounds& cb, float* absmax, uint8_t* packed) {
  const T* x = typed<T>(xv);
  const __m512 one = _mm512_set1_ps(1.0f), neg_one = _mm512_set1_ps(-1.0f);
  const __m512i ones = _mm512_set1_epi32(1);
  std::array<int32_t, 16> order32;
  for (size_t i = 0; i < 16; ++i) order32[i] = cb.order[i];
  const __m512i order = _mm512_loadu_si512(order32.data());
  __m512 bound[15];
  for (size_t i = 0; i < 15; ++i) bound[i] = _mm512_set1_ps(cb.bounds[i]);
  const __m128i low_byte = _mm_set1_epi16(0x00FF);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t e0 = b * bs;
    if (e0 + bs > n) {
      quantize_block_ref(x, e0, n, cb, absmax + b, packed);
      continue;
    }
    // max(|x|, m) with |x| first: a NaN lane keeps m, as std::max(m, fabs(x)) does.
    __m512 m = _mm512_setzero_ps();
    for (int64_t i = 0; i < bs; i += 16) m = _mm512_max_ps(_mm512_abs_ps(load16(x + e0 + i)), m);
    const float am = _mm512_reduce_max_ps(m);
    absmax[b] = am;
    const __m512 inv = _mm512_set1_ps(1.0f / std::max(am, kMinAbsmax));
    uint8_t* dst = packed + e0 / 2;
    for (int64_t i = 0; i < bs; i += 16) {
      // max(s, -1) with s first: NaN -> -1, as std::max(-1.0f, s) does.
      const __m512 s = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(load16(x + e0 + i), inv), neg_one), one);
      __m512i cnt = _mm512_setzero_si512();
      for (size_t j = 0; j < 15; ++j) {
        cnt = _mm512_mask_add_epi32(cnt, _mm512_cmp_ps_mask(s, bound[j], _CMP_GT_OQ), cnt, ones);
      }
      if (cb.remap) cnt = _mm512_permutexvar_epi32(cnt, order);
      // 16 codes as bytes; as 8 little-endian 16-bit pairs (even code low): byte = (even << 4) | odd.
      const __m128i c8 = _mm512_cvtepi32_epi8(cnt);
      const __m128i pair = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(c8, low_byte), 4), _mm_srli_epi16(c8, 8));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + i / 2), _mm_packus_epi16(pair, pair));
    }
  }
}

#pragma GCC diagnostic pop

using QuantFn = void (*)(const void*, int64_t, int64_t, int64_t, int64_t, const CodeBounds&, float*, uint8_t*);

template <class T>
QuantFn pick(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return quantize_blocks_avx512<T>;
    case Isa::kAvx2:
      return quantize_blocks_avx2<T>;
    default:
      return quantize_blocks_ref<T>;
  }
}

}  // namespace

CodeBounds code_bounds(const std::vector<float>& code) {
  TORCH_CHECK(code.size() == 16, "code_bounds: the codebook has ", code.size(), " entries, expected 16");
  CodeBounds cb;
  std::array<int, 16> idx;
  std::iota(idx.begin(), idx.end(), 0);
  // Stable: equal values (+0 / -0 in FP4) keep table order, as torch.argsort does for this table.
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return code[a] < code[b]; });
  cb.remap = false;
  for (size_t i = 0; i < 16; ++i) {
    cb.order[i] = static_cast<uint8_t>(idx[i]);
    cb.remap = cb.remap || idx[i] != static_cast<int>(i);
  }
  for (size_t i = 0; i + 1 < 16; ++i) cb.bounds[i] = (code[idx[i]] + code[idx[i + 1]]) / 2.0f;
  cb.bounds[15] = std::numeric_limits<float>::infinity();
  return cb;
}

void quantize_blocks_cpu(const void* x, torch::ScalarType dt, int64_t n, int64_t bs, int64_t b0, int64_t b1,
                         const CodeBounds& cb, float* absmax, uint8_t* packed, Isa isa) {
  TORCH_CHECK(bs % 16 == 0 && bs <= kMaxBlocksize, "quantize_blocks_cpu: blocksize ", bs);
  if (!cpu_supports(isa)) isa = Isa::kScalar;
  QuantFn fn = dt == torch::kFloat32    ? pick<float>(isa)
               : dt == torch::kBFloat16 ? pick<c10::BFloat16>(isa)
                                        : pick<c10::Half>(isa);
  fn(x, n, bs, b0, b1, cb, absmax, packed);
}

}  // namespace qlora::quant::detail
