// 4-bit GEMV with 8-bit activations on the CPU: gemv_q8_ref, the specification (codec_q8.h), and its AVX2 twin
// gemv_q8_avx2, which computes the same integer dot products and the same float sums in the same order and so gives
// the same bits (tests/quant/test_gemv_q8.cpp compares them byte for byte).
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

void nan_out(const GemvQ8Args& a) {
  for (int64_t o = 0; o < a.out_features; ++o) store_out(a, o, std::numeric_limits<float>::quiet_NaN());
}

// A non-finite activation makes every output NaN (codec_q8.h); returns whether it did.
bool nan_out_if_not_finite(const GemvQ8Args& a) {
  for (int64_t i = 0; i < a.in_features; ++i) {
    if (!std::isfinite(x_at(a, i))) {
      nan_out(a);
      return true;
    }
  }
  return false;
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

// x quantized per chunk, in its natural order: q[in] and e[chunks].
struct QuantizedX {
  std::vector<int8_t> q;
  std::vector<float> e;
};

void quantize_x_ref(const GemvQ8Args& a, QuantizedX& qx) {
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
void rows_ref(const GemvQ8Args& a, const QuantizedX& qx, const int8_t* cq, int64_t o0, int64_t o1) {
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

// x for the AVX2 kernel, per group of 8 chunks: 4 pairs of 64 bytes (pair p: chunks 8 g + 2 p and 8 g + 2 p + 1),
// [0, 16) the first chunk's even elements, [16, 32) the second's, [32, 48) and [48, 64) their odd ones; el[8 g + p]
// = e of chunk 8 g + lane_chunk(p, 8) (the register order of the lane sums), off[8 g + p] = 64 * its sum of q (the
// unsigned codebook's offset, codec_q8.h). Chunks past the row: q = 0, e = 0, off = 0.
// Each chunk is quantized as codec::q8_quantize_chunk does (the same fp32 operations, in vector form); qx gets the
// tail group's q in their natural order (its scalar dots). Returns false, with nothing laid out, if an activation is
// not finite.
QLORA_AVX2 bool layout_x_avx2(const GemvQ8Args& a, std::vector<int8_t>& xl, std::vector<float>& el,
                              std::vector<int32_t>& off, QuantizedX& qx) {
  const int64_t chunks = a.in_features / kChunk, groups = (chunks + kGroup - 1) / kGroup;
  const int64_t tail = chunks / kGroup * kGroup;  // first chunk of a group of fewer than 8
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
    int8_t* pair = xl.data() + (g * kGroup + p / 2 * 2) * kChunk;  // the 64 bytes of c's pair
    const int64_t half = (p % 2) * kChunkBytes;                    // c's 16 bytes within each half
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
        pair[half + j] = static_cast<int8_t>(q[2 * j]);
        pair[2 * kChunkBytes + half + j] = static_cast<int8_t>(q[2 * j + 1]);
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

// The 8 exact chunk sums (register lane p: chunk c0 + lane_chunk(p, 8)) of R rows from o over a full group of 8
// chunks from c0: 4 pairs of chunks, 2 vphaddd levels, the unsigned codebook's offset taken off.
template <int R>
QLORA_AVX2_INLINE void group_dots_avx2(const GemvQ8Args& a, const LaidOutX& x, __m256i table, int64_t o, int64_t c0,
                                       __m256i isum[R]) {
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

// Rows [o, o + R): per group of 8 chunks the 8 exact chunk sums of each row, then one fma per lane. kAligned: rows of
// a multiple of 256 elements, blocksize 2^kAligned (8: >= 256), whose groups read their absmax from the weight
// (gemv_rows.h); 0: any row length, the batch's absmax decoded into am_buf first, partial groups summed by the
// reference's scalar dots.
template <int R, int kAligned>
QLORA_AVX2 void rows_avx2(const GemvQ8Args& a, const LaidOutX& x, int64_t o, std::vector<float>& am_buf) {
  const int64_t in = a.in_features, chunks = in / kChunk, groups = (chunks + kGroup - 1) / kGroup;
  const RowBlocks rb = kAligned == 0 ? row_blocks(a.w, in, o, R, am_buf, decode_absmax_avx2) : RowBlocks{};
  const __m256i table = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x.cu)));
  const __m256i lane_c = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);  // lane_chunk(p, 8)
  __m256 acc[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  // The bytes of the batch after next, group by group two batches ahead (the rows of a thread are contiguous), where
  // the weight has them; non-temporal: a decode step reads each weight once, and keeping its lines out of the outer
  // caches leaves them to what is read again (x, the KV cache, activations): bench decode 265-288 -> 316-325 tok/s.
  const bool prefetch = o + 3 * R <= a.out_features;
  const uint8_t* ahead = prefetch ? a.w.packed + (((o + 2 * R) * in) >> 1) : a.w.packed;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t c0 = g * kGroup;
    const int valid = kAligned != 0 ? kGroup : static_cast<int>(std::min<int64_t>(kGroup, chunks - c0));
    if (prefetch) {
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const uint8_t* p = ahead + ((r * in + c0 * kChunk) >> 1);
        _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_NTA);
        _mm_prefetch(reinterpret_cast<const char*>(p + 64), _MM_HINT_NTA);
      }
    }
    // Each row's scales first (absmax * e): their dependent loads overlap the integer work below.
    const __m256 e = _mm256_loadu_ps(x.el + c0);
    __m256 scale[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      if constexpr (kAligned != 0) {
        scale[r] = _mm256_mul_ps(group_absmax_aligned_avx2<kAligned>(a.w, (o + r) * in + c0 * kChunk), e);
      } else {
        scale[r] = _mm256_mul_ps(group_absmax_avx2(rb, rb.row_offset(o + r) + c0 * kChunk), e);
      }
    }
    __m256i isum[R];
    if (kAligned != 0 || valid == kGroup) {
      group_dots_avx2<R>(a, x, table, o, c0, isum);
    } else {
      for (int r = 0; r < R; ++r) {
        alignas(32) int32_t t[kGroup] = {};
        for (int p = 0; p < kGroup; ++p) {
          const int64_t c = c0 + lane_chunk(p, kGroup);
          if (c < chunks) {
            t[p] = codec::q8_chunk_dot(a.w.packed + ((o + r) * in + c * kChunk) / 2, x.cq, x.q + c * kChunk);
          }
        }
        isum[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(t));
      }
    }
    if (kAligned != 0 || valid == kGroup) {
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), scale[r], acc[r]);
    } else {
      const __m256 lanes = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(valid), lane_c));
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm256_blendv_ps(acc[r], _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), scale[r], acc[r]), lanes);
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) store_out(a, o + r, butterfly_q8_avx2(acc[r]));
}

constexpr int kRows = 2;

void gemv_rows_avx2(const GemvQ8Args& a, const LaidOutX& x, int64_t o0, int64_t o1) {
  // The first two batches' bytes (rows_avx2 prefetches each later one as it goes).
  const uint8_t* first = a.w.packed + ((o0 * a.in_features) >> 1);
  const int64_t first_bytes = (std::min<int64_t>(2 * kRows, o1 - o0) * a.in_features) >> 1;
  for (int64_t line = 0; line < first_bytes; line += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(first + line), _MM_HINT_NTA);
  }
  std::vector<float> am_buf;
  const auto run = [&](auto aligned) {
    constexpr int kAligned = decltype(aligned)::value;
    row_batches<kRows>(
        o0, o1, [&](int64_t o) { rows_avx2<kRows, kAligned>(a, x, o, am_buf); },
        [&](int64_t o) { rows_avx2<1, kAligned>(a, x, o, am_buf); });
  };
  const int log2_blocksize = __builtin_ctzll(static_cast<unsigned long long>(a.w.blocksize));
  if (!groups_aligned(a.in_features)) {
    run(std::integral_constant<int, 0>{});
  } else if (log2_blocksize == 5) {
    run(std::integral_constant<int, 5>{});
  } else if (log2_blocksize == 6) {
    run(std::integral_constant<int, 6>{});
  } else if (log2_blocksize == 7) {
    run(std::integral_constant<int, 7>{});
  } else {
    run(std::integral_constant<int, 8>{});
  }
}

}  // namespace
}  // namespace gemv_detail

using namespace gemv_detail;

void gemv_q8_ref(const GemvQ8Args& a) {
  check_args(a);
  if (nan_out_if_not_finite(a)) return;
  QuantizedX qx;
  quantize_x_ref(a, qx);
  const auto cq = code_table(a);
  rows_ref(a, qx, cq.data(), 0, a.out_features);
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
  thread_local QuantizedX qx;  // the caller's thread; the workers only read it until parallel_for returns
  if (isa == Isa::kScalar || !cpu_supports(Isa::kAvx2)) {
    if (nan_out_if_not_finite(a)) {
      for (size_t i = 1; i < count; ++i) nan_out(as[i]);
      return;
    }
    quantize_x_ref(a, qx);
    const QuantizedX* px = &qx;  // a thread_local named inside the lambda would be each worker's own (empty) one
    for (size_t i = 0; i < count; ++i) {
      const auto cq = code_table(as[i]);
      at::parallel_for(0, as[i].out_features, grain,
                       [&](int64_t o0, int64_t o1) { rows_ref(as[i], *px, cq.data(), o0, o1); });
    }
    return;
  }
  thread_local std::vector<int8_t> xl;
  thread_local std::vector<float> el;
  thread_local std::vector<int32_t> off;
  if (!layout_x_avx2(a, xl, el, off, qx)) {
    for (size_t i = 0; i < count; ++i) nan_out(as[i]);
    return;
  }
  // One parallel region over the rows of all the weights (one fork and join, the split balanced over all of them).
  std::vector<std::array<int8_t, 16>> cq(count);
  std::vector<std::array<uint8_t, 16>> cu(count);
  std::vector<int64_t> first(count + 1, 0);  // first[i]: weight i's first row in the joint range
  for (size_t i = 0; i < count; ++i) {
    cq[i] = code_table(as[i]);
    cu[i] = unsigned_code_table(cq[i]);
    first[i + 1] = first[i] + as[i].out_features;
  }
  // The thread_locals' data as pointers: named inside the lambda they would be each worker's own (empty) ones.
  const int8_t *xlp = xl.data(), *qp = qx.q.data();
  const float* elp = el.data();
  const int32_t* offp = off.data();
  at::parallel_for(0, first[count], grain, [&](int64_t o0, int64_t o1) {
    for (size_t i = 0; i < count; ++i) {
      const int64_t lo = std::max(o0, first[i]), hi = std::min(o1, first[i + 1]);
      if (lo >= hi) continue;
      const LaidOutX x{xlp, elp, offp, qp, cq[i].data(), cu[i].data()};
      gemv_rows_avx2(as[i], x, lo - first[i], hi - first[i]);
    }
  });
}

}  // namespace qlora::quant
