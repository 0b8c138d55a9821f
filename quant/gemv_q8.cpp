// 4-bit GEMV with 8-bit activations on the CPU: gemv_q8_ref, the specification (codec_q8.h), and its AVX2 and
// AVX-512 (VNNI + VBMI) twins, which compute the same integer dot products and the same float sums in the same order
// and so give the same bits (tests/quant/test_gemv_q8.cpp compares them byte for byte). The two differ only in how
// they compute a group's 8 integer dots (DotsAvx2, DotsAvx512); the row loop around them is one (gemv_q8_rows.h).
//
// How the AVX2 kernel computes a chunk's integer dot. 32 packed bytes hold two chunks (16 bytes each); their high
// nibbles are the chunks' even elements, their low nibbles the odd ones. vpshufb looks the nibbles up in the codebook
// stored as unsigned bytes cq + 64 (16 entries: one register lane), and vpmaddubsw multiplies those (unsigned) by q
// (signed) pairwise and adds neighbours to 16 bits (a pair stays below 2^15: codec_q8.h); vpmaddwd by 1 then adds
// neighbouring 16-bit sums to 32 bits: 4 partial sums per chunk, one 128-bit lane per chunk. The offset comes off
// once per chunk: sum (cq + 64) q - 64 sum q = isum exactly. x is laid out once per call to match (layout_x_avx2): per
// pair of chunks, their even elements then their odd ones. Two vphaddd levels turn the 4 pairs of a group of 8 chunks
// into the 8 chunks' sums, register lane p holding chunk lane_chunk(p, 8) (gemv_rows.h): the integer sums are exact
// whatever the order, and from there every lane computes the specification's float operations on its own chunks, so
// the scale of each lane (its chunk's absmax and e) is gathered in that order and the butterfly pairs the lanes the
// specification pairs.
#include "quant/gemv_q8.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "quant/codec_q8.h"
#include "quant/gemv_rows.h"

namespace qlora::quant {
namespace gemv_detail {
namespace {

constexpr int64_t kChunk = codec::kQ8Chunk;
constexpr int64_t kChunkBytes = kChunk / codec::kCodesPerByte;  // 16
constexpr int kGroup = codec::kQ8Lanes;                         // chunks per register of lane sums (8)
constexpr int64_t kGrainWeights = int64_t{1} << 16;             // at least this many weights per thread

void check_args(const GemvQ8Args& a) {
  check_shape("gemv_q8", a.in_features, a.w.blocksize);
}

float x_at(const GemvQ8Args& a, int64_t i) {
  return a.x_bf16 ? codec::bf16_bits_to_float(static_cast<const uint16_t*>(a.x)[i]) : static_cast<const float*>(a.x)[i];
}

bool all_finite(const GemvQ8Args& a) {
  for (int64_t i = 0; i < a.in_features; ++i) {
    if (!std::isfinite(x_at(a, i))) return false;
  }
  return true;
}

std::array<int8_t, 16> code_table(const GemvQ8Args& a) {
  std::array<int8_t, 16> cq{};
  for (size_t n = 0; n < cq.size(); ++n) cq[n] = codec::q8_code(a.w.code[n]);
  return cq;
}

// The SIMD kernels' codebook: cq + 64, unsigned bytes in [1, 127].
std::array<uint8_t, 16> unsigned_code_table(const std::array<int8_t, 16>& cq) {
  std::array<uint8_t, 16> u{};
  for (size_t n = 0; n < u.size(); ++n) u[n] = static_cast<uint8_t>(cq[n] + codec::kQ8CodeOffset);
  return u;
}

// x quantized per chunk, in its natural order: qx.q[in] and qx.e[chunks].
void quantize_x_ref(const GemvQ8Args& a, GemvQ8X& qx) {
  const int64_t chunks = a.in_features / kChunk;
  qx.q.resize(static_cast<size_t>(a.in_features));
  qx.e.resize(static_cast<size_t>(chunks));
  float buf[kChunk];
  for (int64_t c = 0; c < chunks; ++c) {
    for (int64_t i = 0; i < kChunk; ++i) buf[i] = x_at(a, c * kChunk + i);
    qx.e[static_cast<size_t>(c)] = codec::q8_quantize_chunk(buf, qx.q.data() + c * kChunk);
  }
}

// gemv_q8_ref on rows [o0, o1).
void rows_ref(const GemvQ8Args& a, const GemvQ8X& qx, const int8_t* cq, int64_t o0, int64_t o1) {
  const int64_t chunks = a.in_features / kChunk;
  for (int64_t o = o0; o < o1; ++o) {
    std::array<float, codec::kQ8Lanes> lane{};
    for (int l = 0; l < codec::kQ8Lanes; ++l) {
      float acc = 0.0f;
      for (int64_t c = l; c < chunks; c += codec::kQ8Lanes) {
        const int64_t e0 = o * a.in_features + c * kChunk;  // first element of the chunk
        const int32_t isum = codec::q8_chunk_dot(a.w.packed + e0 / 2, cq, qx.q.data() + c * kChunk);
        acc = codec::q8_lane_step(isum, a.w.block_absmax(e0 / a.w.blocksize, a.w.nested_code),
                                  qx.e[static_cast<size_t>(c)], acc);
      }
      lane[static_cast<size_t>(l)] = acc;
    }
    for (size_t off = codec::kQ8Lanes / 2; off >= 1; off /= 2) {
      for (size_t l = 0; l < off; ++l) lane[l] = lane[l] + lane[l + off];
    }
    store_out(a, o, lane[0]);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// AVX2.

// How the SIMD kernels want a group's 256 activation bytes: kPairs (AVX2), 4 pairs of 64 bytes (pair p: chunks 8 g + 2
// p and 8 g + 2 p + 1), [0, 16) the first chunk's even elements, [16, 32) the second's, [32, 48) and [48, 64) their
// odd ones; kQuads (AVX-512), 2 quads of 128 bytes (chunks 8 g + 4 h to 8 g + 4 h + 3), the 4 chunks' even elements
// (16 bytes each) then their odd ones.
enum class XOrder { kPairs, kQuads };

// x for the SIMD kernels, per group of 8 chunks: the bytes in `order`; el[8 g + p] = e of chunk 8 g + lane_chunk(p, 8)
// (the register order of the lane sums), off[8 g + p] = 64 * its sum of q (the unsigned codebook's offset,
// codec_q8.h). Chunks past the row: q = 0, e = 0, off = 0.
// Each chunk is quantized as codec::q8_quantize_chunk does (the same fp32 operations, in vector form); qx gets the
// tail group's q in their natural order (its scalar dots). Returns false, with nothing laid out, if an activation is
// not finite.
QLORA_AVX2 bool layout_x_avx2(const GemvQ8Args& a, XOrder order, GemvQ8X& qx) {
  std::vector<int8_t>& xl = qx.xl;
  std::vector<float>& el = qx.el;
  std::vector<int32_t>& off = qx.off;
  const int64_t chunks = a.in_features / kChunk, groups = (chunks + kGroup - 1) / kGroup;
  const int64_t tail = chunks / kGroup * kGroup;         // first chunk of a group of fewer than 8
  const int64_t span = order == XOrder::kQuads ? 4 : 2;  // chunks whose even, then odd, elements lie together
  qx.q.assign(static_cast<size_t>(a.in_features), 0);
  xl.assign(static_cast<size_t>(groups * kGroup * kChunk), 0);
  el.assign(static_cast<size_t>(groups * kGroup), 0.0f);
  off.assign(static_cast<size_t>(groups * kGroup), 0);
  const __m256 sign = _mm256_set1_ps(-0.0f), qmax = _mm256_set1_ps(codec::kQ8Max);
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  for (int64_t c = 0; c < chunks; ++c) {
    alignas(32) float x[kChunk];
    for (int i = 0; i < kChunk; i += 8) {
      const int64_t e = c * kChunk + i;
      _mm256_store_ps(x + i, a.x_bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(
                                            _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(
                                                static_cast<const uint16_t*>(a.x) + e))),
                                            16))
                                      : _mm256_loadu_ps(static_cast<const float*>(a.x) + e));
    }
    __m256 m = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    for (int i = 0; i < kChunk; i += 8) {
      const __m256 ax = _mm256_andnot_ps(sign, _mm256_load_ps(x + i));
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(ax, inf, _CMP_NLT_UQ));  // inf or NaN
      m = _mm256_max_ps(m, ax);
    }
    if (_mm256_movemask_ps(bad) != 0) return false;
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1)));
    const int64_t g = c / kGroup, p = c % kGroup;
    int8_t* even = xl.data() + g * kGroup * kChunk + p / span * span * kChunk + p % span * kChunkBytes;
    int8_t* odd = even + span * kChunkBytes;
    alignas(32) int32_t q[kChunk];
    int32_t qsum = 0;
    if (amax > 0.0f) {
      const __m256 inv = _mm256_set1_ps(codec::kQ8Max / amax);
      for (int i = 0; i < kChunk; i += 8) {
        const __m256 v =
            _mm256_round_ps(_mm256_mul_ps(_mm256_load_ps(x + i), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_store_si256(reinterpret_cast<__m256i*>(q + i),
                           _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(v, qmax), _mm256_sub_ps(sign, qmax))));
      }
      if (c >= tail) {
        for (int64_t i = 0; i < kChunk; ++i) qx.q[static_cast<size_t>(c * kChunk + i)] = static_cast<int8_t>(q[i]);
      }
      for (int64_t j = 0; j < kChunkBytes; ++j) {
        even[j] = static_cast<int8_t>(q[2 * j]);
        odd[j] = static_cast<int8_t>(q[2 * j + 1]);
      }
      for (int i = 0; i < kChunk; ++i) qsum += q[i];
    }
    for (int lp = 0; lp < kGroup; ++lp) {
      if (lane_chunk(lp, kGroup) != p) continue;
      el[static_cast<size_t>(g * kGroup + lp)] = amax / codec::kQ8ScaleDiv;
      off[static_cast<size_t>(g * kGroup + lp)] = codec::kQ8CodeOffset * qsum;
    }
  }
  return true;
}

// The specification's butterfly on one register of lane sums (register lane p: spec lane lane_chunk(p, 8)): spec
// lane l + off sits at register lane p ^ 2 (off 4), p ^ 1 (2), p ^ 4 (1), so each step pairs the lanes the
// specification pairs and spec lane 0 is register lane 0.
QLORA_AVX2_INLINE float butterfly_q8_avx2(__m256 t) {
  t = _mm256_add_ps(t, _mm256_permute_ps(t, 0x4E));                                          // p ^ 2 within 128 bits
  t = _mm256_add_ps(t, _mm256_permute_ps(t, 0xB1));                                          // p ^ 1
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));  // p ^ 4
}
static_assert(lane_chunk(2, 8) == 4 && lane_chunk(1, 8) == 2 && lane_chunk(4, 8) == 1, "the butterfly's partner lanes");

// The integer dots of one pair of chunks with the unsigned codebook (32 packed bytes at w; qe / qo their laid-out
// even / odd activations): 4 partial sums of the first chunk in the low 128 bits, of the second in the high ones,
// each 64 * (its share of sum q) above the exact one.
QLORA_AVX2_INLINE __m256i pair_dot_avx2(const uint8_t* w, __m256i table, __m256i qe, __m256i qo) {
  const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  const __m256i we = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
  const __m256i wo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, m4));
  const __m256i pe = _mm256_maddubs_epi16(we, qe);
  const __m256i po = _mm256_maddubs_epi16(wo, qo);
  return _mm256_add_epi32(_mm256_madd_epi16(pe, ones), _mm256_madd_epi16(po, ones));
}

struct LaidOutX {
  const int8_t* xl;  // layout_x_avx2
  const float* el;
  const int32_t* off;
  const int8_t* q;    // natural order (the tail group's scalar dots)
  const int8_t* cq;   // the codebook (the tail group's scalar dots)
  const uint8_t* cu;  // the unsigned codebook (the vector dots)
};

// The AVX2 integer dots: the 8 exact chunk sums (register lane p: chunk c0 + lane_chunk(p, 8)) of R rows from o over
// a full group of 8 chunks from c0: 4 pairs of chunks, 2 vphaddd levels, the unsigned codebook's offset taken off.
struct DotsAvx2 {
  __m256i table;  // the unsigned codebook in both 128-bit lanes

  QLORA_AVX2_INLINE explicit DotsAvx2(const uint8_t* cu)
      : table(_mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(cu)))) {}

  template <int R>
  QLORA_AVX2_INLINE void group(const GemvQ8Args& a, const LaidOutX& x, int64_t o, int64_t c0, __m256i isum[R]) const {
    const int64_t in = a.in_features;
    __m256i h[R][2];
    for (int p = 0; p < kGroup / 2; p += 2) {
      const int8_t* xp = x.xl + (c0 + 2 * p) * kChunk;
      __m256i u[R][2];
      for (int k = 0; k < 2; ++k) {
        const __m256i qe = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 64 * k));
        const __m256i qo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + 64 * k + 32));
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          u[r][k] = pair_dot_avx2(a.w.packed + (((o + r) * in + (c0 + 2 * (p + k)) * kChunk) >> 1), table, qe, qo);
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) h[r][p / 2] = _mm256_hadd_epi32(u[r][0], u[r][1]);
    }
    const __m256i off = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.off + c0));
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) isum[r] = _mm256_sub_epi32(_mm256_hadd_epi32(h[r][0], h[r][1]), off);
  }
};

// ---------------------------------------------------------------------------------------------------------------
// AVX-512 with VNNI and VBMI (Ice Lake, Sapphire Rapids, Zen 4 on): 64 packed bytes (4 chunks) per register. vpermb
// looks up the nibbles in the unsigned codebook copied to all four 16-byte quarters, so that the index's bits 4-5
// (the shifted-in neighbouring nibble) pick equal copies and no mask is needed; vpdpbusd multiplies the unsigned
// codes by q and adds each 4 neighbouring products to a 32-bit lane (no 16-bit intermediate). x is laid out per 4
// chunks (XOrder::kQuads): their even elements, then their odd ones. GCC 12 reports false "may be used
// uninitialized" warnings inside its own AVX-512 intrinsic headers (gemv_4bit.cpp): off for this section.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#define QLORA_Q8_AVX512_TARGET "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c"
#define QLORA_Q8_AVX512_INLINE __attribute__((target(QLORA_Q8_AVX512_TARGET), always_inline)) inline

bool cpu_supports_q8_avx512() {
  static const bool yes =
      cpu_supports(Isa::kAvx512) && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi");
  return yes;
}

// The integer dots of 4 chunks (64 packed bytes at w; qe / qo their laid-out even / odd activations): 4 partial sums
// per chunk, chunk k in 128-bit lane k, each 64 * (its share of sum q) above the exact one.
QLORA_Q8_AVX512_INLINE __m512i quad_dot_avx512(const uint8_t* w, __m512i table, __m512i qe, __m512i qo) {
  const __m512i v = _mm512_loadu_si512(w);
  const __m512i we = _mm512_permutexvar_epi8(_mm512_srli_epi16(v, 4), table);
  const __m512i wo = _mm512_permutexvar_epi8(v, table);
  return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), we, qe), wo, qo);
}

// The AVX-512 integer dots, in DotsAvx2's register order: per row two quads of chunks (u0: chunks 0-3, u1: 4-7, chunk
// k of each in 128-bit lane k), their 4 partial sums added by two unpack levels (lane k: chunk k in dword 0, chunk
// 4 + k in dword 1) and the 8 sums permuted to lane_chunk order.
struct DotsAvx512 {
  __m512i table;

  QLORA_Q8_AVX512_INLINE explicit DotsAvx512(const uint8_t* cu)
      : table(_mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(cu)))) {}

  template <int R>
  QLORA_Q8_AVX512_INLINE void group(const GemvQ8Args& a, const LaidOutX& x, int64_t o, int64_t c0,
                                    __m256i isum[R]) const {
    const int8_t* xg = x.xl + c0 * kChunk;
    const __m512i qe0 = _mm512_loadu_si512(xg), qo0 = _mm512_loadu_si512(xg + 64);
    const __m512i qe1 = _mm512_loadu_si512(xg + 128), qo1 = _mm512_loadu_si512(xg + 192);
    // Dword 4 k: chunk k, 4 k + 1: chunk 4 + k; lane_chunk(p, 8) = 0, 2, 4, 6, 1, 3, 5, 7.
    const __m512i order = _mm512_setr_epi32(0, 8, 1, 9, 4, 12, 5, 13, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m256i off = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.off + c0));
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const uint8_t* w = a.w.packed + (((o + r) * a.in_features + c0 * kChunk) >> 1);
      const __m512i u0 = quad_dot_avx512(w, table, qe0, qo0), u1 = quad_dot_avx512(w + 64, table, qe1, qo1);
      __m512i t = _mm512_add_epi32(_mm512_unpacklo_epi32(u0, u1), _mm512_unpackhi_epi32(u0, u1));
      t = _mm512_add_epi32(t, _mm512_shuffle_epi32(t, _MM_PERM_BADC));
      isum[r] = _mm256_sub_epi32(_mm512_castsi512_si256(_mm512_permutexvar_epi32(order, t)), off);
    }
  }
};

// The row loop (gemv_q8_rows.h) once per instruction set, as ops/simd_each_isa.h does for the fused kernels: its
// functions carry QLORA_Q8_ROWS, that set's target attribute (attributes, not `#pragma GCC target`: clang, which
// builds the fuzz targets, has no such pragma).
namespace avx2 {
using Dots = DotsAvx2;
#define QLORA_Q8_ROWS QLORA_AVX2
#include "quant/gemv_q8_rows.h"
#undef QLORA_Q8_ROWS
}  // namespace avx2

namespace avx512 {
using Dots = DotsAvx512;
#define QLORA_Q8_ROWS __attribute__((target(QLORA_Q8_AVX512_TARGET)))
#include "quant/gemv_q8_rows.h"
#undef QLORA_Q8_ROWS
}  // namespace avx512
#pragma GCC diagnostic pop

}  // namespace
}  // namespace gemv_detail

using namespace gemv_detail;

void gemv_q8_ref(const GemvQ8Args& a) {
  check_args(a);
  GemvQ8X qx;
  if (!all_finite(a)) {
    for (int64_t o = 0; o < a.out_features; ++o) store_out(a, o, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  quantize_x_ref(a, qx);
  const auto cq = code_table(a);
  rows_ref(a, qx, cq.data(), 0, a.out_features);
}

void gemv_q8_prepare(const void* x, bool x_bf16, int64_t in_features, Isa isa, GemvQ8X& px) {
  GemvQ8Args a;
  a.x = x;
  a.x_bf16 = x_bf16;
  a.in_features = in_features;
  check_shape("gemv_q8", in_features, codec::kGemvChunk);
  px.in_features = in_features;
  if (isa == Isa::kScalar || !cpu_supports(Isa::kAvx2)) {
    px.isa = Isa::kScalar;
    px.finite = all_finite(a);
    if (px.finite) quantize_x_ref(a, px);
    return;
  }
  const bool vnni = isa == Isa::kAvx512 && cpu_supports_q8_avx512();  // else AVX2 (AVX-512 without VNNI / VBMI too)
  px.isa = vnni ? Isa::kAvx512 : Isa::kAvx2;
  px.finite = layout_x_avx2(a, vnni ? XOrder::kQuads : XOrder::kPairs, px);
}

void gemv_q8_rows(const GemvQ8Args& a, const GemvQ8X& px, int64_t o0, int64_t o1) {
  check_args(a);
  if (a.in_features != px.in_features) {
    throw std::invalid_argument("gemv_q8: x was prepared for in_features " + std::to_string(px.in_features) +
                                ", the weight has " + std::to_string(a.in_features));
  }
  if (!px.finite) {  // a non-finite activation makes every output NaN (codec_q8.h)
    for (int64_t o = o0; o < o1; ++o) store_out(a, o, std::numeric_limits<float>::quiet_NaN());
    return;
  }
  const auto cq = code_table(a);
  if (px.isa == Isa::kScalar) {
    rows_ref(a, px, cq.data(), o0, o1);
    return;
  }
  const auto cu = unsigned_code_table(cq);
  const LaidOutX x{px.xl.data(), px.el.data(), px.off.data(), px.q.data(), cq.data(), cu.data()};
  (px.isa == Isa::kAvx512 ? avx512::gemv_rows : avx2::gemv_rows)(a, x, o0, o1);
}

void gemv_q8_cpu(const GemvQ8Args& a, Isa isa) {
  gemv_q8_cpu(&a, 1, isa);
}

void gemv_q8_cpu(const GemvQ8Args* as, size_t count, Isa isa) {
  if (count == 0) return;
  const GemvQ8Args& a = as[0];
  for (size_t i = 0; i < count; ++i) {
    check_args(as[i]);
    if (as[i].x != a.x || as[i].x_bf16 != a.x_bf16 || as[i].in_features != a.in_features) {
      throw std::invalid_argument("gemv_q8: weights given together must share x and in_features");
    }
  }
  const int64_t grain = std::max<int64_t>(1, kGrainWeights / std::max<int64_t>(1, a.in_features));
  thread_local GemvQ8X qx;
  gemv_q8_prepare(a.x, a.x_bf16, a.in_features, isa, qx);
  // One parallel region over the rows of all the weights (one fork and join, the split balanced over all of them).
  std::vector<int64_t> first(count + 1, 0);  // first[i]: weight i's first row in the joint range
  for (size_t i = 0; i < count; ++i) first[i + 1] = first[i] + as[i].out_features;
  const GemvQ8X* px = &qx;  // the caller's thread_local: named inside the lambda it would be each worker's own
  at::parallel_for(0, first[count], grain, [&](int64_t o0, int64_t o1) {
    for (size_t i = 0; i < count; ++i) {
      const int64_t lo = std::max(o0, first[i]), hi = std::min(o1, first[i + 1]);
      if (lo < hi) gemv_q8_rows(as[i], *px, lo - first[i], hi - first[i]);
    }
  });
}

}  // namespace qlora::quant
