// CPU dequant kernels (dequantize_blocks_ref, _avx2, _avx512; chosen at run time), the LibTorch-ops fallback
// for other devices, and the torch-compatible fp32 mean used by double quantization.
//
// Naming (ggml's rule): `<thing>_ref` is the scalar kernel and the specification; `<thing>_avx2` / `_avx512` are
// the SIMD versions, which must give the same bits (tests/quant/test_dequant_paths.cpp compares every path with
// the Isa::kScalar one, i.e. `_ref`, byte for byte; test_golden.cpp compares every path with bitsandbytes' bytes).
//
// Every path computes out[e] = cast(code[nibble(e)] * absmax[e / blocksize]) with one fp32 multiply and
// a round-to-nearest-even cast, so all paths give the same bits. SIMD paths pre-multiply the 16-entry
// codebook by the block's absmax (same product, same rounding) and turn each nibble into a table lookup.
#include "quant/dequant_kernels.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "quant/codec_4bit.h"

namespace qlora::quant::detail {
namespace {

enum class OutKind { kF32, kBF16, kF16 };

// ---------------------------------------------------------------------------------------------------
// dequantize_blocks_ref: the specification the SIMD paths are tested against.
// The per-element arithmetic is quant/codec_4bit.h, which the CUDA kernel runs too.
template <class T>
void dequantize_blocks_ref(const uint8_t* packed, int64_t n, int64_t bs, int64_t b0, int64_t b1, const float* am,
                           const float* code, T* out) {
  for (int64_t b = b0; b < b1; ++b) {
    const float a = am[b - b0];
    const int64_t e1 = std::min(n, (b + 1) * bs);
    for (int64_t e = b * bs; e < e1; ++e) {
      const float v = codec::dequant_value(packed, e, code, a);
      if constexpr (std::is_same_v<T, c10::BFloat16>) {
        out[e] = c10::BFloat16(codec::bf16_bits_rne(v), c10::BFloat16::from_bits());
      } else {
        out[e] = static_cast<T>(v);
      }
    }
  }
}

// Remainder of a block (fewer than one SIMD step) from a 16-entry table of finished output values.
template <class T>
inline void tail_from_table(const uint8_t* src, int64_t from, int64_t count, const T* table, T* dst) {
  for (int64_t e = from; e < count; ++e) {
    const uint8_t byte = src[e >> 1];
    dst[e] = table[(e & 1) ? (byte & 0x0F) : (byte >> 4)];
  }
}

// ---------------------------------------------------------------------------------------------------
// AVX2: 8-lane table lookups (two permutes + blend on bit 3), interleave hi/lo nibble results.
#define QLORA_AVX2 __attribute__((target("avx2,f16c")))

QLORA_AVX2 inline __m256 lut16_avx2(__m256 lo8, __m256 hi8, __m256i idx) {
  const __m256 a = _mm256_permutevar8x32_ps(lo8, idx);
  const __m256 b = _mm256_permutevar8x32_ps(hi8, idx);
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// fp32 -> bf16 bits (round to nearest even) in the low half of each 32-bit lane.
QLORA_AVX2 inline __m256i bf16_rne_avx2(__m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  return _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
}

template <OutKind K>
QLORA_AVX2 void dequantize_blocks_avx2(const uint8_t* packed, int64_t n, int64_t bs, int64_t b0, int64_t b1,
                                       const float* am, const float* code, void* out_v) {
  const __m256 c_lo = _mm256_loadu_ps(code);
  const __m256 c_hi = _mm256_loadu_ps(code + 8);
  const __m256i m0f = _mm256_set1_epi32(0x0F);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t e0 = b * bs;
    const int64_t count = std::min(n, e0 + bs) - e0;
    const __m256 s = _mm256_set1_ps(am[b - b0]);
    const __m256 lut_lo = _mm256_mul_ps(c_lo, s);
    const __m256 lut_hi = _mm256_mul_ps(c_hi, s);
    const uint8_t* src = packed + e0 / 2;
    int64_t i = 0;
    for (; i + 16 <= count; i += 16) {
      const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + i / 2)));
      const __m256 vh = lut16_avx2(lut_lo, lut_hi, _mm256_srli_epi32(bytes, 4));
      const __m256 vl = lut16_avx2(lut_lo, lut_hi, _mm256_and_si256(bytes, m0f));
      const __m256 u0 = _mm256_unpacklo_ps(vh, vl);
      const __m256 u1 = _mm256_unpackhi_ps(vh, vl);
      const __m256 o0 = _mm256_permute2f128_ps(u0, u1, 0x20);
      const __m256 o1 = _mm256_permute2f128_ps(u0, u1, 0x31);
      if constexpr (K == OutKind::kF32) {
        float* dst = static_cast<float*>(out_v) + e0 + i;
        _mm256_storeu_ps(dst, o0);
        _mm256_storeu_ps(dst + 8, o1);
      } else if constexpr (K == OutKind::kBF16) {
        const __m256i packed16 = _mm256_packus_epi32(bf16_rne_avx2(o0), bf16_rne_avx2(o1));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out_v) + e0 + i),
                            _mm256_permute4x64_epi64(packed16, 0xD8));
      } else {
        uint16_t* dst = static_cast<uint16_t*>(out_v) + e0 + i;
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_cvtps_ph(o0, _MM_FROUND_TO_NEAREST_INT));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 8), _mm256_cvtps_ph(o1, _MM_FROUND_TO_NEAREST_INT));
      }
    }
    if (i < count) {
      alignas(32) float f[16];
      _mm256_store_ps(f, lut_lo);
      _mm256_store_ps(f + 8, lut_hi);
      if constexpr (K == OutKind::kF32) {
        tail_from_table(src, i, count, f, static_cast<float*>(out_v) + e0);
      } else if constexpr (K == OutKind::kBF16) {
        c10::BFloat16 t[16];
        for (int k = 0; k < 16; ++k) t[k] = c10::BFloat16(f[k]);
        tail_from_table(src, i, count, t, static_cast<c10::BFloat16*>(out_v) + e0);
      } else {
        c10::Half t[16];
        for (int k = 0; k < 16; ++k) t[k] = c10::Half(f[k]);
        tail_from_table(src, i, count, t, static_cast<c10::Half*>(out_v) + e0);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// AVX-512. GCC 12 reports false "may be used uninitialized" warnings inside its own AVX-512 intrinsic headers
// (intrinsics pass _mm512_undefined_*(), `__m512 __Y = __Y;`, as the unused merge source): off for this section only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// The block's 16 output values form a table; 16-bit outputs use one vpermw per 32 elements
// (each 32-bit lane of the index holds the hi nibble in its low half and the lo nibble in its high half,
// which is exactly the interleaved element order); fp32 uses two vpermps + two vpermt2ps.
#define QLORA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,f16c")))

QLORA_AVX512 inline __m256i bf16_rne_avx512(__m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  return _mm512_cvtepi32_epi16(r);
}

template <OutKind K>
QLORA_AVX512 void dequantize_blocks_avx512(const uint8_t* packed, int64_t n, int64_t bs, int64_t b0, int64_t b1,
                                           const float* am, const float* code, void* out_v) {
  const __m512 vcode = _mm512_loadu_ps(code);
  const __m512i m0f = _mm512_set1_epi32(0x0F);
  const __m512i ilv_a = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i ilv_b = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t e0 = b * bs;
    const int64_t count = std::min(n, e0 + bs) - e0;
    const __m512 lut = _mm512_mul_ps(vcode, _mm512_set1_ps(am[b - b0]));
    const uint8_t* src = packed + e0 / 2;
    int64_t i = 0;
    if constexpr (K == OutKind::kF32) {
      float* dst = static_cast<float*>(out_v) + e0;
      for (; i + 32 <= count; i += 32) {
        const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i / 2)));
        const __m512 vh = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), lut);
        const __m512 vl = _mm512_permutexvar_ps(_mm512_and_si512(bytes, m0f), lut);
        _mm512_storeu_ps(dst + i, _mm512_permutex2var_ps(vh, ilv_a, vl));
        _mm512_storeu_ps(dst + i + 16, _mm512_permutex2var_ps(vh, ilv_b, vl));
      }
      if (i < count) {
        alignas(64) float f[16];
        _mm512_store_ps(f, lut);
        tail_from_table(src, i, count, f, dst);
      }
    } else {
      const __m256i t16 = K == OutKind::kBF16 ? bf16_rne_avx512(lut)
                                              : _mm512_cvtps_ph(lut, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512i lut16 = _mm512_castsi256_si512(t16);
      uint16_t* dst = static_cast<uint16_t*>(out_v) + e0;
      for (; i + 32 <= count; i += 32) {
        const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i / 2)));
        const __m512i idx =
            _mm512_or_si512(_mm512_srli_epi32(bytes, 4), _mm512_slli_epi32(_mm512_and_si512(bytes, m0f), 16));
        _mm512_storeu_si512(dst + i, _mm512_permutexvar_epi16(idx, lut16));
      }
      if (i < count) {
        alignas(32) uint16_t t[16];
        _mm256_store_si256(reinterpret_cast<__m256i*>(t), t16);
        tail_from_table(src, i, count, t, dst);
      }
    }
  }
}

#pragma GCC diagnostic pop

// ---------------------------------------------------------------------------------------------------
using BlockFn = void (*)(const uint8_t*, int64_t, int64_t, int64_t, int64_t, const float*, const float*, void*);

// dequantize_blocks_ref with BlockFn's type-erased output.
template <class T>
void dequantize_blocks_ref_v(const uint8_t* p, int64_t n, int64_t bs, int64_t b0, int64_t b1, const float* am,
                             const float* code, void* out) {
  dequantize_blocks_ref(p, n, bs, b0, b1, am, code, static_cast<T*>(out));
}

BlockFn pick_kernel(Isa isa, OutKind k) {
  switch (isa) {
    case Isa::kAvx512:
      return k == OutKind::kF32    ? dequantize_blocks_avx512<OutKind::kF32>
             : k == OutKind::kBF16 ? dequantize_blocks_avx512<OutKind::kBF16>
                                   : dequantize_blocks_avx512<OutKind::kF16>;
    case Isa::kAvx2:
      return k == OutKind::kF32    ? dequantize_blocks_avx2<OutKind::kF32>
             : k == OutKind::kBF16 ? dequantize_blocks_avx2<OutKind::kBF16>
                                   : dequantize_blocks_avx2<OutKind::kF16>;
    default:
      return k == OutKind::kF32    ? dequantize_blocks_ref_v<float>
             : k == OutKind::kBF16 ? dequantize_blocks_ref_v<c10::BFloat16>
                                   : dequantize_blocks_ref_v<c10::Half>;
  }
}

// torch's cascade sum (aten/src/ATen/native/cpu/SumKernel.cpp, multi_row_sum / row_sum) on L lanes.
int64_t ceil_log2(int64_t x) {
  if (x <= 2) return 1;
  int64_t last = 63 - __builtin_clzll(static_cast<unsigned long long>(x - 1));
  return last + 1;
}

template <int L>
using Lanes = std::array<float, L>;

// rows: nrows=4 interleaved rows; load(i, k) returns row k's i-th entry (L lanes).
template <int L, class Load>
std::array<Lanes<L>, 4> multi_row_sum(int64_t size, Load load) {
  constexpr int kLevels = 4;
  const int64_t level_power = std::max<int64_t>(4, ceil_log2(size) / kLevels);
  const int64_t level_step = int64_t{1} << level_power;
  const int64_t level_mask = level_step - 1;
  std::array<std::array<Lanes<L>, 4>, kLevels> acc{};
  auto add = [](Lanes<L>& a, const Lanes<L>& b) {
    for (int l = 0; l < L; ++l) a[l] += b[l];
  };
  int64_t i = 0;
  for (; i + level_step <= size;) {
    for (int64_t j = 0; j < level_step; ++j, ++i) {
      for (int k = 0; k < 4; ++k) add(acc[0][k], load(i, k));
    }
    for (int j = 1; j < kLevels; ++j) {
      for (int k = 0; k < 4; ++k) {
        add(acc[j][k], acc[j - 1][k]);
        acc[j - 1][k] = Lanes<L>{};
      }
      const int64_t mask = level_mask << (j * level_power);
      if ((i & mask) != 0) break;
    }
  }
  for (; i < size; ++i) {
    for (int k = 0; k < 4; ++k) add(acc[0][k], load(i, k));
  }
  for (int j = 1; j < kLevels; ++j) {
    for (int k = 0; k < 4; ++k) add(acc[0][k], acc[j][k]);
  }
  return acc[0];
}

// row_sum with ilp factor 4 over `size` entries of L lanes each (entry v = x[v*L .. v*L+L)).
template <int L>
Lanes<L> row_sum(const float* x, int64_t size) {
  const int64_t size_ilp = size / 4;
  auto load = [&](int64_t i, int k) {
    Lanes<L> v;
    std::memcpy(v.data(), x + (4 * i + k) * L, sizeof(float) * L);
    return v;
  };
  auto p = multi_row_sum<L>(size_ilp, load);
  for (int64_t i = size_ilp * 4; i < size; ++i) {
    for (int l = 0; l < L; ++l) p[0][static_cast<size_t>(l)] += x[i * L + l];
  }
  for (int k = 1; k < 4; ++k) {
    for (int l = 0; l < L; ++l) p[0][static_cast<size_t>(l)] += p[static_cast<size_t>(k)][static_cast<size_t>(l)];
  }
  return p[0];
}

template <int W>
float cascade_sum(const float* x, int64_t n) {
  if (n < W) return row_sum<1>(x, n)[0];  // scalar path (too short for one vector)
  const int64_t vec_size = n / W;
  const Lanes<W> v = row_sum<W>(x, vec_size);
  float acc = 0.0f;
  for (int64_t k = vec_size * W; k < n; ++k) acc += x[k];
  for (int l = 0; l < W; ++l) acc += v[static_cast<size_t>(l)];
  return acc;
}

}  // namespace

codec::Packed4bit packed_view(const QuantizedTensor& q) {
  TORCH_CHECK(q.packed.is_contiguous() && q.absmax.is_contiguous() && q.code.is_contiguous() &&
                  q.code.scalar_type() == torch::kFloat32,
              "packed_view: parts must be contiguous, the codebook fp32");
  codec::Packed4bit w;
  w.packed = q.packed.data_ptr<uint8_t>();
  w.code = q.code.data_ptr<float>();
  if (q.double_quant) {
    TORCH_CHECK(q.absmax2.is_contiguous() && q.nested_code.is_contiguous(), "packed_view: non-contiguous nested parts");
    w.qabsmax = q.absmax.data_ptr<uint8_t>();
    w.absmax2 = q.absmax2.data_ptr<float>();
    w.nested_code = q.nested_code.data_ptr<float>();
    w.offset = q.offset;
  } else {
    w.absmax = q.absmax.data_ptr<float>();
  }
  w.blocksize = q.blocksize;
  return w;
}

Gemv4bitArgs gemv_args(const QuantizedTensor& w, const void* x, void* y, bool out_bf16) {
  TORCH_CHECK(w.shape.size() == 2, "gemv_args: W must be 2-D, got ", w.shape);
  Gemv4bitArgs a;
  a.w = packed_view(w);
  a.out_features = w.shape[0];
  a.in_features = w.shape[1];
  a.x = static_cast<const uint16_t*>(x);
  a.out_bf16 = out_bf16;
  a.y = y;
  return a;
}

GemvQ8Args gemv_q8_args(const QuantizedTensor& w, const void* x, bool x_bf16, void* y, bool out_bf16) {
  TORCH_CHECK(w.shape.size() == 2, "gemv_q8_args: W must be 2-D, got ", w.shape);
  return {packed_view(w), w.shape[0], w.shape[1], x, x_bf16, out_bf16, y};
}

float torch_mean_f32(const float* x, int64_t n) {
  TORCH_CHECK(n > 0, "mean of an empty array");
  return cascade_sum<8>(x, n) / static_cast<float>(n);
}

void decode_absmax(const QuantizedTensor& q, int64_t b0, int64_t b1, float* dst) {
  if (!q.double_quant) {
    std::memcpy(dst, q.absmax.data_ptr<float>() + b0, sizeof(float) * static_cast<size_t>(b1 - b0));
    return;
  }
  const uint8_t* qa = q.absmax.data_ptr<uint8_t>();
  const float* a2 = q.absmax2.data_ptr<float>();
  const float* dyn = q.nested_code.data_ptr<float>();
  for (int64_t i = b0; i < b1; ++i) {
    dst[i - b0] = codec::absmax_from_dq(qa[i], a2[i / kNestedBlocksize], q.offset, dyn);
  }
}

void dequantize_cpu_into(const QuantizedTensor& q, torch::Tensor& out, Isa isa) {
  TORCH_CHECK(q.device().is_cpu() && out.device().is_cpu(), "dequantize_cpu_into: CPU tensors only");
  TORCH_CHECK(out.is_contiguous() && out.numel() == q.numel(), "dequantize_cpu_into: bad output");
  TORCH_CHECK(q.packed.is_contiguous() && q.absmax.is_contiguous() && q.code.is_contiguous(),
              "dequantize_cpu_into: non-contiguous quantized parts");
  TORCH_CHECK(!q.double_quant || (q.absmax2.is_contiguous() && q.nested_code.is_contiguous()),
              "dequantize_cpu_into: non-contiguous nested parts");
  OutKind kind;
  switch (out.scalar_type()) {
    case torch::kFloat32:
      kind = OutKind::kF32;
      break;
    case torch::kBFloat16:
      kind = OutKind::kBF16;
      break;
    case torch::kHalf:
      kind = OutKind::kF16;
      break;
    default:
      TORCH_CHECK(false, "dequantize_4bit: unsupported output dtype ", out.scalar_type());
  }
  if (!cpu_supports(isa)) isa = Isa::kScalar;
  const BlockFn fn = pick_kernel(isa, kind);
  const uint8_t* packed = q.packed.data_ptr<uint8_t>();
  const float* code = q.code.data_ptr<float>();
  void* dst = out.data_ptr();
  const int64_t n = q.numel();
  const int64_t bs = q.blocksize;
  const int64_t nblocks = q.num_blocks();
  constexpr int64_t kChunk = 256;  // blocks whose absmax is decoded at a time
  const int64_t grain = std::max<int64_t>(1, 32768 / bs);
  at::parallel_for(0, nblocks, grain, [&](int64_t b0, int64_t b1) {
    float am[kChunk];
    for (int64_t s = b0; s < b1; s += kChunk) {
      const int64_t e = std::min(b1, s + kChunk);
      decode_absmax(q, s, e, am);
      fn(packed, n, bs, s, e, am, code, dst);
    }
  });
}

torch::Tensor dequantize_ops(const QuantizedTensor& q, torch::ScalarType out_dtype) {
  TORCH_CHECK(out_dtype == torch::kFloat32 || out_dtype == torch::kBFloat16 || out_dtype == torch::kHalf ||
                  out_dtype == torch::kFloat64,
              "dequantize_4bit: unsupported output dtype ", out_dtype);
  const int64_t n = q.numel();
  const int64_t nblocks = q.num_blocks();
  const torch::Tensor bytes = q.packed.reshape({-1});
  const torch::Tensor idx = torch::stack({bytes.__rshift__(4), bytes.__and__(0x0F)}, 1).reshape({-1}).to(torch::kLong);
  torch::Tensor vals = q.code.to(torch::kFloat32).index_select(0, idx.narrow(0, 0, n));  // fp32 [n]
  vals = torch::constant_pad_nd(vals, {0, nblocks * q.blocksize - n}, 0);
  const torch::Tensor absmax = q.absmax_fp32();  // fp32 [nblocks]
  const torch::Tensor out = (vals.view({nblocks, q.blocksize}) * absmax.view({nblocks, 1})).view({-1}).narrow(0, 0, n);
  return out.to(out_dtype).view(q.shape);
}

}  // namespace qlora::quant::detail
