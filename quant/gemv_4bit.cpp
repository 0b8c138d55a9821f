// 4-bit GEMV on the CPU: gemv_4bit_ref, the specification (codec_4bit.h's order), and its SIMD twins
// gemv_4bit_avx512 / gemv_4bit_avx2, which compute the same sums in the same order and so give the same bits
// (tests/quant/test_gemv_4bit_cpu.cpp compares them byte for byte; tests/cuda compares the CUDA kernel with the ref).
//
// How the SIMD kernels keep the specification's order. Its 32 lanes are 32 independent running sums, lane l over
// chunks l, l + 32, l + 64, ... (32 weights each). Call 32 consecutive chunks (1024 weights, 512 packed bytes) a
// superchunk: each lane owns one chunk of every superchunk. A W-wide register (W = 16 for AVX-512, 8 for AVX2) holds
// W of the lanes, and one step computes, for element j of each of those W chunks,
//   s = fma(code[nibble], x, s)
// (s = +0 at each chunk's start), then acc = fma(s, absmax, acc) once the chunks' 32 elements are in, so every lane
// sees its products exactly in the specification's order (j = 0..31 within a chunk, chunks in increasing order). The
// nibbles of element j of W chunks are the same bits of one 4-byte word per chunk: the W chunks' bytes (chunk-major in
// memory) are transposed into four registers of words with unpack instructions, which work within 128-bit lanes, so
// register lane p = 4 h + i holds chunk h + (W / 4) i of its group (lane_chunk below). x is laid out once per call in
// that lane order (fp32, exact from bf16; layout_x), and each lane's absmax is gathered from the row's decoded absmax.
// The 32 lane sums are then combined by the specification's butterfly: in registers (butterfly_avx512, butterfly_avx2
// pair the same lanes).
#include "quant/gemv_4bit.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "quant/codec_4bit.h"
#include "quant/gemv_rows.h"

namespace qlora::quant {
namespace gemv_detail {
namespace {

using Lanes = std::array<float, codec::kGemvLanes>;
constexpr int64_t kChunkBytes = codec::kGemvChunk / codec::kCodesPerByte;  // 16 packed bytes per chunk
constexpr int64_t kSuperElems = codec::kGemvLanes * codec::kGemvChunk;     // weights per superchunk (1024)
constexpr int64_t kGrainWeights = int64_t{1} << 16;  // at least this many weights per thread (else one thread)
constexpr int kW512 = 16;                            // lanes of an AVX-512 register (fp32)
constexpr int kW256 = 8;                             // and of an AVX2 one

void check_args(const Gemv4bitArgs& a) {
  check_shape("gemv_4bit", a.in_features, a.w.blocksize);
}

// Row o's output from its 32 lane sums (lane[l] = the sum over chunks l, l + 32, ...): the specification's butterfly
// (for off = 16, 8, 4, 2, 1: s[l] = s[l] + s[l ^ off]) on the lanes that lane 0's result depends on (l < off, where
// l ^ off = l + off), then the cast.
void finish_row(const Gemv4bitArgs& a, int64_t o, Lanes lane) {
  for (size_t off = codec::kGemvLanes / 2; off >= 1; off /= 2) {
    for (size_t l = 0; l < off; ++l) lane[l] = lane[l] + lane[l + off];
  }
  store_out(a, o, lane[0]);
}

// ---------------------------------------------------------------------------------------------------------------
// gemv_4bit_ref on rows [o0, o1).
void gemv_rows_ref(const Gemv4bitArgs& a, int64_t o0, int64_t o1) {
  const int64_t chunks = a.in_features / codec::kGemvChunk;
  for (int64_t o = o0; o < o1; ++o) {
    Lanes lane{};
    for (int l = 0; l < codec::kGemvLanes; ++l) {
      float acc = 0.0f;
      for (int64_t c = l; c < chunks; c += codec::kGemvLanes) {
        const int64_t e0 = o * a.in_features + c * codec::kGemvChunk;  // first element of the chunk
        const float absmax = a.w.block_absmax(e0 / a.w.blocksize, a.w.nested_code);
        acc = codec::gemv_chunk(a.w.packed + e0 / 2, a.x + c * codec::kGemvChunk, a.w.code, absmax, acc);
      }
      lane[static_cast<size_t>(l)] = acc;
    }
    finish_row(a, o, lane);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Shared by the SIMD kernels.

// Shift that brings element j's nibble (j = 8 m + s: word m, byte s / 2, high nibble for even s) to the low bits.
constexpr int nibble_shift(int j) {
  return 8 * ((j % 8) / 2) + ((j % 2 == 0) ? 4 : 0);
}

// x (bf16 bits, in) -> xt (fp32), superchunk-major, lanes in the order of a w-lane kernel:
//   xt[(k * 32 + j) * 32 + q] = x[(32 k + c(q)) * 32 + j],  c(q) = (q / w) * w + lane_chunk(q % w, w),
// and for chunks past the row: with w = 16, in slots 8-15 of a group, the x of the chunk 8 slots before (a paired
// step's second row: rows_avx512), else 0. Lanes past the row are masked out of every sum, so these values only
// matter to the pairing.
void layout_x(const Gemv4bitArgs& a, int w, std::vector<float>& xt) {
  const int64_t chunks = a.in_features / codec::kGemvChunk;
  const int64_t supers = (chunks + codec::kGemvLanes - 1) / codec::kGemvLanes;
  xt.resize(static_cast<size_t>(supers * kSuperElems));
  for (int64_t k = 0; k < supers; ++k) {
    for (int q = 0; q < codec::kGemvLanes; ++q) {
      const int slot = lane_chunk(q % w, w);
      int64_t c = k * codec::kGemvLanes + (q / w) * w + slot;
      if (c >= chunks && w == kW512 && slot >= kW512 / 2) c -= kW512 / 2;
      for (int j = 0; j < codec::kGemvChunk; ++j) {
        xt[static_cast<size_t>((k * codec::kGemvChunk + j) * codec::kGemvLanes + q)] =
            c < chunks ? codec::bf16_bits_to_float(a.x[c * codec::kGemvChunk + j]) : 0.0f;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// AVX-512: W = 16, two groups per superchunk. GCC 12 reports false "may be used uninitialized" warnings inside its
// own AVX-512 intrinsic headers (see dequant_kernels.cpp): off for this section only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define QLORA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define QLORA_AVX512_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"), always_inline)) inline

// absmax_from_dq for 16 blocks at a time; mul and add rounded separately (explicit-rounding forms never fuse).
QLORA_AVX512 void decode_absmax_avx512(const codec::Packed4bit& w, int64_t b0, int64_t b1, float* dst) {
  const __m512 offset = _mm512_set1_ps(w.offset);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t b = b0;
  for (; b + kW512 <= b1; b += kW512) {
    const __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.qabsmax + b)));
    const __m512 dm = _mm512_i32gather_ps(q, w.nested_code, 4);
    // absmax2 of each block: that of block b, or the next one for the lanes past a multiple of 256.
    const int64_t nb = b / codec::kNestedBlocksize, past = (nb + 1) * codec::kNestedBlocksize - b;
    __m512 a2 = _mm512_set1_ps(w.absmax2[nb]);
    if (past < kW512) {
      a2 = _mm512_mask_mov_ps(a2, _mm512_cmpge_epi32_mask(iota, _mm512_set1_epi32(static_cast<int32_t>(past))),
                              _mm512_set1_ps(w.absmax2[nb + 1]));
    }
    const __m512 p = _mm512_mul_round_ps(dm, a2, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm512_storeu_ps(dst + (b - b0), _mm512_add_round_ps(p, offset, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  decode_absmax_scalar(w, b, b1, dst + (b - b0));
}

// The words of 16 chunks in two halves of 8: slots 0-7 are the first lo_valid chunks at lo, slots 8-15 the first
// hi_valid chunks at hi (16 bytes each; the rest read as 0). d[m] lane p = word m of the chunk in slot
// lane_chunk(p, 16). 16 consecutive chunks of which `valid` are read: lo = src, hi = src + 128 bytes.
QLORA_AVX512_INLINE void load_words_avx512(const uint8_t* lo, int lo_valid, const uint8_t* hi, int hi_valid,
                                           __m512i d[4]) {
  __m512i r[4];
  for (int i = 0; i < 4; ++i) {
    const int bytes = std::clamp((i < 2 ? lo_valid : hi_valid) - 4 * (i % 2), 0, 4) * static_cast<int>(kChunkBytes);
    const __mmask64 m = bytes == 64 ? ~__mmask64{0} : ((__mmask64{1} << bytes) - 1);
    r[i] = _mm512_maskz_loadu_epi8(m, (i < 2 ? lo : hi) + 64 * (i % 2));  // slots 4 i .. 4 i + 3, one per 128 bits
  }
  const __m512i t0 = _mm512_unpacklo_epi32(r[0], r[1]), t1 = _mm512_unpackhi_epi32(r[0], r[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(r[2], r[3]), t3 = _mm512_unpackhi_epi32(r[2], r[3]);
  d[0] = _mm512_unpacklo_epi64(t0, t2);
  d[1] = _mm512_unpackhi_epi64(t0, t2);
  d[2] = _mm512_unpacklo_epi64(t1, t3);
  d[3] = _mm512_unpackhi_epi64(t1, t3);
}

// finish_row's butterfly on the two groups' lane sums (register lane p of either holds spec lane lane_chunk(p, 16),
// plus 16 in group 1): off = 16 adds the groups lane by lane; then spec lane c + off sits at register lane p ^ 2
// (off 8), p ^ 1 (4), p ^ 8 (2), p ^ 4 (1), so each step pairs the lanes the specification pairs (the other lanes
// compute values nothing reads) and the result, spec lane 0, is register lane 0: the specification's bits.
QLORA_AVX512_INLINE float butterfly_avx512(__m512 g0, __m512 g1) {
  __m512 t = _mm512_add_ps(g0, g1);
  t = _mm512_add_ps(t, _mm512_permute_ps(t, 0x4E));        // p ^ 2 within 128 bits
  t = _mm512_add_ps(t, _mm512_permute_ps(t, 0xB1));        // p ^ 1
  t = _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, 0x4E));  // p ^ 8: the other 256-bit half
  t = _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, 0xB1));  // p ^ 4: the neighbouring 128-bit lane
  return _mm512_cvtss_f32(t);
}
static_assert(lane_chunk(2, 16) == 8 && lane_chunk(1, 16) == 4 && lane_chunk(8, 16) == 2 && lane_chunk(4, 16) == 1,
              "the butterfly's partner lanes");

// Element J of the group's chunks for R rows: s[r] = fma(code[nibble], x, s[r]) (lanes past the row's last chunk
// compute values nothing keeps: the chunk's end is masked).
template <int R, int J>
QLORA_AVX512_INLINE void step_avx512(const __m512i (&d)[R][4], __m512 code, const float* xk, __m512 (&s)[R]) {
  const __m512 xv = _mm512_loadu_ps(xk + J * codec::kGemvLanes);
  for (int r = 0; r < R; ++r) {
    const __m512i idx = _mm512_srli_epi32(d[r][J / 8], nibble_shift(J));  // vpermps reads the low 4 bits
    s[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx, code), xv, s[r]);
  }
}

template <int R, int... J>
QLORA_AVX512_INLINE void steps_avx512(const __m512i (&d)[R][4], __m512 code, const float* xk, __m512 (&s)[R],
                                      std::integer_sequence<int, J...>) {
  (step_avx512<R, J>(d, code, xk, s), ...);
}

// Rows [o, o + R): both 16-lane groups, each over every superchunk, then the butterfly. A group step over at most 8
// chunks (the tail of a row whose chunk count is not a multiple of 32, as in = 768's 24 chunks) leaves slots 8-15
// empty; with R even, rows 2i and 2i + 1 share one register there (row 2i + 1's chunks in slots 8-15, whose x
// layout_x puts there), and row 2i + 1's sums move back to slots 0-7 before they join its accumulator: the step
// costs half, and every lane still computes exactly the specification's operations.
template <int R>
QLORA_AVX512 void rows_avx512(const Gemv4bitArgs& a, const float* xt, int64_t o, std::vector<float>& am_buf) {
  const int64_t in = a.in_features, chunks = in / codec::kGemvChunk;
  const RowBlocks rb = row_blocks(a.w, a.in_features, o, R, am_buf, decode_absmax_avx512);
  const __m128i bs_shift = _mm_cvtsi32_si128(__builtin_ctzll(static_cast<unsigned long long>(a.w.blocksize)));
  const __m512 code = _mm512_loadu_ps(a.w.code);
  // Element offset of each lane's chunk within its group: lane_chunk(p, 16) * 32.
  const __m512i lane_elem =
      _mm512_setr_epi32(0, 128, 256, 384, 32, 160, 288, 416, 64, 192, 320, 448, 96, 224, 352, 480);
  alignas(64) float group0[R][kW512];  // group 0's lane sums, until group 1's are there
  for (int g = 0; g < codec::kGemvLanes / kW512; ++g) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t c0 = g * kW512; c0 < chunks; c0 += codec::kGemvLanes) {
      const int valid = static_cast<int>(std::min<int64_t>(kW512, chunks - c0));
      const __mmask16 lanes =
          _mm512_cmplt_epi32_mask(lane_elem, _mm512_set1_epi32(valid * static_cast<int>(codec::kGemvChunk)));
      __m512 am[R];
      for (int r = 0; r < R; ++r) {
        // The group's 512 elements span at most 16 blocks (blocksize >= 32, starts a multiple of 32): a 16-float
        // window of am from the first one, permuted to the lanes.
        const int64_t e_rel = rb.row_offset(o + r) + c0 * codec::kGemvChunk, fb = e_rel / a.w.blocksize;
        const __m512i blk = _mm512_sub_epi32(
            _mm512_srl_epi32(_mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(e_rel)), lane_elem), bs_shift),
            _mm512_set1_epi32(static_cast<int32_t>(fb)));
        const int64_t n = std::min<int64_t>(kW512, rb.count - fb);
        am[r] = _mm512_permutexvar_ps(blk, _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), rb.am + fb));
      }
      const float* xk = xt + (c0 / codec::kGemvLanes) * kSuperElems + g * kW512;
      // Group start of row o + r in the packed bytes.
      auto row_bytes = [&](int r) { return a.w.packed + ((o + r) * in + c0 * codec::kGemvChunk) / 2; };
      if constexpr (R % 2 == 0) {
        if (valid <= kW512 / 2) {
          constexpr int kPairs = R / 2;
          __m512i d[kPairs][4];
          for (int i = 0; i < kPairs; ++i)
            load_words_avx512(row_bytes(2 * i), valid, row_bytes(2 * i + 1), valid, d[i]);
          __m512 sum[kPairs];
          for (int i = 0; i < kPairs; ++i) sum[i] = _mm512_setzero_ps();
          steps_avx512<kPairs>(d, code, xk, sum, std::make_integer_sequence<int, codec::kGemvChunk>{});
          for (int i = 0; i < kPairs; ++i) {
            acc[2 * i] = _mm512_mask3_fmadd_ps(sum[i], am[2 * i], acc[2 * i], lanes);
            // Slots 8 + s (lanes 4 h + 2, 4 h + 3) back to slots s (lanes 4 h, 4 h + 1).
            acc[2 * i + 1] =
                _mm512_mask3_fmadd_ps(_mm512_permute_ps(sum[i], 0x4E), am[2 * i + 1], acc[2 * i + 1], lanes);
          }
          continue;
        }
      }
      __m512i d[R][4];
      for (int r = 0; r < R; ++r) {
        const int lo = std::min(valid, kW512 / 2);
        load_words_avx512(row_bytes(r), lo, row_bytes(r) + kW512 / 2 * kChunkBytes, valid - lo, d[r]);
      }
      __m512 sum[R];
      for (int r = 0; r < R; ++r) sum[r] = _mm512_setzero_ps();
      steps_avx512<R>(d, code, xk, sum, std::make_integer_sequence<int, codec::kGemvChunk>{});
      for (int r = 0; r < R; ++r) acc[r] = _mm512_mask3_fmadd_ps(sum[r], am[r], acc[r], lanes);
    }
    for (int r = 0; r < R; ++r) {
      if (g == 0) {
        _mm512_store_ps(group0[r], acc[r]);
      } else {
        store_out(a, o + r, butterfly_avx512(_mm512_load_ps(group0[r]), acc[r]));
      }
    }
  }
}

constexpr int kRows512 = 4;

void gemv_rows_avx512(const Gemv4bitArgs& a, const float* xt, int64_t o0, int64_t o1) {
  std::vector<float> am_buf;
  row_batches<kRows512>(
      o0, o1, [&](int64_t o) { rows_avx512<kRows512>(a, xt, o, am_buf); },
      [&](int64_t o) { rows_avx512<1>(a, xt, o, am_buf); });
}

#pragma GCC diagnostic pop

}  // namespace

// absmax_from_dq for 8 blocks at a time (declared in gemv_rows.h); the empty asm keeps the product rounded before the
// add (no FMA contraction).
QLORA_AVX2 void decode_absmax_avx2(const codec::Packed4bit& w, int64_t b0, int64_t b1, float* dst) {
  const __m256 offset = _mm256_set1_ps(w.offset);
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t b = b0;
  for (; b + kW256 <= b1; b += kW256) {
    // Eight table loads, not vgatherdps: on Zen 2 the gather is slower (decode 172 -> 184 tok/s on the bench model).
    const uint8_t* qa = w.qabsmax + b;
    const float* nc = w.nested_code;
    const __m256 dm =
        _mm256_setr_ps(nc[qa[0]], nc[qa[1]], nc[qa[2]], nc[qa[3]], nc[qa[4]], nc[qa[5]], nc[qa[6]], nc[qa[7]]);
    const int64_t nb = b / codec::kNestedBlocksize, past = (nb + 1) * codec::kNestedBlocksize - b;
    __m256 a2 = _mm256_set1_ps(w.absmax2[nb]);
    if (past < kW256) {
      a2 = _mm256_blendv_ps(
          a2, _mm256_set1_ps(w.absmax2[nb + 1]),
          _mm256_castsi256_ps(_mm256_cmpgt_epi32(iota, _mm256_set1_epi32(static_cast<int32_t>(past - 1)))));
    }
    __m256 p = _mm256_mul_ps(dm, a2);
    __asm__("" : "+x"(p));
    _mm256_storeu_ps(dst + (b - b0), _mm256_add_ps(p, offset));
  }
  decode_absmax_scalar(w, b, b1, dst + (b - b0));
}

namespace {

// ---------------------------------------------------------------------------------------------------------------
// AVX2: W = 8, four groups per superchunk; 16-entry lookups as two 8-entry permutes and a blend on the nibble's
// bit 3; tail lanes (a row whose chunk count is not a multiple of 32) kept by a blend at each chunk's end.

// The words of 8 chunks (128 bytes from src; the first `valid` are read, the rest are 0): d[m] lane p = word m of
// chunk lane_chunk(p, 8).
QLORA_AVX2_INLINE void load_words_avx2(const uint8_t* src, int valid, __m256i d[4]) {
  __m256i r[4];
  const __m256i half = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);  // chunk of each word within a register
  for (int i = 0; i < 4; ++i) {
    const auto* p = reinterpret_cast<const __m256i*>(src + 32 * i);  // chunks 2 i, 2 i + 1
    if (valid >= 2 * i + 2) {
      r[i] = _mm256_loadu_si256(p);
    } else {
      const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid - 2 * i), half);
      r[i] = _mm256_maskload_epi32(reinterpret_cast<const int*>(p), m);
    }
  }
  const __m256i t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
  const __m256i t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
  d[0] = _mm256_unpacklo_epi64(t0, t2);
  d[1] = _mm256_unpackhi_epi64(t0, t2);
  d[2] = _mm256_unpacklo_epi64(t1, t3);
  d[3] = _mm256_unpackhi_epi64(t1, t3);
}

// finish_row's butterfly on the four groups' lane sums (register lane p of group g holds spec lane
// g * 8 + lane_chunk(p, 8)): off = 16 and 8 add the groups lane by lane (0 + 2, 1 + 3, then the two sums); then spec
// lane c + off sits at register lane p ^ 2 (off 4), p ^ 1 (2), p ^ 4 (1), so each step pairs the lanes the
// specification pairs and the result, spec lane 0, is register lane 0: the specification's bits.
QLORA_AVX2_INLINE float butterfly_avx2(__m256 g0, __m256 g1, __m256 g2, __m256 g3) {
  __m256 t = _mm256_add_ps(_mm256_add_ps(g0, g2), _mm256_add_ps(g1, g3));
  t = _mm256_add_ps(t, _mm256_permute_ps(t, 0x4E));                                          // p ^ 2 within 128 bits
  t = _mm256_add_ps(t, _mm256_permute_ps(t, 0xB1));                                          // p ^ 1
  return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));  // p ^ 4
}
static_assert(lane_chunk(2, 8) == 4 && lane_chunk(1, 8) == 2 && lane_chunk(4, 8) == 1, "the butterfly's partner lanes");

// Element J of the group's chunks for R rows: s[r] = fma(code[nibble], x, s[r]).
template <int R, int J>
QLORA_AVX2_INLINE void step_avx2(const __m256i (&d)[R][4], __m256 code_lo, __m256 code_hi, const float* xk,
                                 __m256 (&s)[R]) {
  constexpr int kShift = nibble_shift(J);
  const __m256 xv = _mm256_loadu_ps(xk + J * codec::kGemvLanes);
  for (int r = 0; r < R; ++r) {
    const __m256i word = d[r][J / 8];
    const __m256i idx = _mm256_srli_epi32(word, kShift);      // vpermps reads the low 3 bits
    const __m256i hi = _mm256_slli_epi32(word, 28 - kShift);  // nibble bit 3 -> sign bit
    const __m256 c = _mm256_blendv_ps(_mm256_permutevar8x32_ps(code_lo, idx), _mm256_permutevar8x32_ps(code_hi, idx),
                                      _mm256_castsi256_ps(hi));
    s[r] = _mm256_fmadd_ps(c, xv, s[r]);
  }
}

template <int R, int... J>
QLORA_AVX2_INLINE void steps_avx2(const __m256i (&d)[R][4], __m256 code_lo, __m256 code_hi, const float* xk,
                                  __m256 (&s)[R], std::integer_sequence<int, J...>) {
  (step_avx2<R, J>(d, code_lo, code_hi, xk, s), ...);
}

template <int R>
QLORA_AVX2 void rows_avx2(const Gemv4bitArgs& a, const float* xt, int64_t o, std::vector<float>& am_buf) {
  const int64_t in = a.in_features, chunks = in / codec::kGemvChunk;
  const RowBlocks rb = row_blocks(a.w, a.in_features, o, R, am_buf, decode_absmax_avx2);
  const __m256 code_lo = _mm256_loadu_ps(a.w.code), code_hi = _mm256_loadu_ps(a.w.code + 8);
  const __m256i lane_elem = _mm256_setr_epi32(0, 64, 128, 192, 32, 96, 160, 224);  // lane_chunk(p, 8) * 32
  alignas(32) float groups[3][R][kW256];  // groups 0-2's lane sums, until group 3's are there
  for (int g = 0; g < codec::kGemvLanes / kW256; ++g) {
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t c0 = g * kW256; c0 < chunks; c0 += codec::kGemvLanes) {
      const int valid = static_cast<int>(std::min<int64_t>(kW256, chunks - c0));
      const __m256 lanes = _mm256_castsi256_ps(
          _mm256_cmpgt_epi32(_mm256_set1_epi32(valid * static_cast<int>(codec::kGemvChunk)), lane_elem));
      __m256i d[R][4];
      __m256 am[R];
      for (int r = 0; r < R; ++r) {
        const int64_t e = (o + r) * in + c0 * codec::kGemvChunk;
        load_words_avx2(a.w.packed + e / 2, valid, d[r]);
        am[r] = group_absmax_avx2(rb, rb.row_offset(o + r) + c0 * codec::kGemvChunk);
      }
      const float* xk = xt + (c0 / codec::kGemvLanes) * kSuperElems + g * kW256;
      __m256 sum[R];
      for (int r = 0; r < R; ++r) sum[r] = _mm256_setzero_ps();
      steps_avx2<R>(d, code_lo, code_hi, xk, sum, std::make_integer_sequence<int, codec::kGemvChunk>{});
      for (int r = 0; r < R; ++r) acc[r] = _mm256_blendv_ps(acc[r], _mm256_fmadd_ps(sum[r], am[r], acc[r]), lanes);
    }
    for (int r = 0; r < R; ++r) {
      if (g < 3) {
        _mm256_store_ps(groups[g][r], acc[r]);
      } else {
        store_out(a, o + r,
                  butterfly_avx2(_mm256_load_ps(groups[0][r]), _mm256_load_ps(groups[1][r]),
                                 _mm256_load_ps(groups[2][r]), acc[r]));
      }
    }
  }
}

constexpr int kRows256 = 2;

void gemv_rows_avx2(const Gemv4bitArgs& a, const float* xt, int64_t o0, int64_t o1) {
  std::vector<float> am_buf;
  row_batches<kRows256>(
      o0, o1, [&](int64_t o) { rows_avx2<kRows256>(a, xt, o, am_buf); },
      [&](int64_t o) { rows_avx2<1>(a, xt, o, am_buf); });
}

}  // namespace
}  // namespace gemv_detail

using namespace gemv_detail;

void gemv_4bit_ref(const Gemv4bitArgs& a) {
  check_args(a);
  gemv_rows_ref(a, 0, a.out_features);
}

void gemv_4bit_prepare(const uint16_t* x, int64_t in_features, Isa isa, Gemv4bitX& px) {
  check_shape("gemv_4bit", in_features, codec::kGemvChunk);
  px.in_features = in_features;
  px.isa = cpu_supports(isa) ? isa : Isa::kScalar;
  if (px.isa == Isa::kScalar) return;
  Gemv4bitArgs a;
  a.x = x;
  a.in_features = in_features;
  layout_x(a, px.isa == Isa::kAvx512 ? kW512 : kW256, px.xt);
}

void gemv_4bit_rows(const Gemv4bitArgs& a, const Gemv4bitX& px, int64_t o0, int64_t o1) {
  check_args(a);
  if (a.in_features != px.in_features) {
    throw std::invalid_argument("gemv_4bit: x was prepared for in_features " + std::to_string(px.in_features) +
                                ", the weight has " + std::to_string(a.in_features));
  }
  if (px.isa == Isa::kAvx512) {
    gemv_rows_avx512(a, px.xt.data(), o0, o1);
  } else if (px.isa == Isa::kAvx2) {
    gemv_rows_avx2(a, px.xt.data(), o0, o1);
  } else {
    gemv_rows_ref(a, o0, o1);
  }
}

void gemv_4bit_cpu(const Gemv4bitArgs& a, Isa isa) {
  check_args(a);
  const int64_t grain = std::max<int64_t>(1, kGrainWeights / std::max<int64_t>(1, a.in_features));
  thread_local Gemv4bitX px;
  gemv_4bit_prepare(a.x, a.in_features, isa, px);
  const Gemv4bitX* p = &px;  // the caller's thread_local: named inside the lambda it would be each worker's own
  at::parallel_for(0, a.out_features, grain, [&](int64_t o0, int64_t o1) { gemv_4bit_rows(a, *p, o0, o1); });
}

}  // namespace qlora::quant
