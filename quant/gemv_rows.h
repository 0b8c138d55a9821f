// What the CPU GEMV kernels (gemv_4bit.cpp, gemv_q8.cpp) share: the blocks a batch of rows touches and their fp32
// absmax, the register order of 8 chunks after an unpack transpose, and the row batching. Internal to quant/.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant/codec_4bit.h"

#define QLORA_AVX2 __attribute__((target("avx2,fma,f16c")))
#define QLORA_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline

namespace qlora::quant::gemv_detail {

// What every CPU GEMV needs of its shape: rows of whole 32-element chunks and a valid blocksize; `kernel` names the
// caller in the std::invalid_argument it throws otherwise.
inline void check_shape(const char* kernel, int64_t in_features, int64_t blocksize) {
  if (in_features % codec::kGemvChunk != 0) {
    throw std::invalid_argument(std::string(kernel) + ": in_features " + std::to_string(in_features) +
                                " is not a multiple of 32");
  }
  if (!codec::valid_blocksize(blocksize)) {
    throw std::invalid_argument(std::string(kernel) + ": blocksize " + std::to_string(blocksize) +
                                " is not a power of two in [32, 4096]");
  }
}

// The chunk (within its group of w) that register lane p of a w-lane kernel holds: the order the unpack transpose
// leaves the words in (p = 4 h + i: 128-bit lane h, word i).
constexpr int lane_chunk(int p, int w) {
  return (p >> 2) + (w / 4) * (p & 3);
}
static_assert(lane_chunk(5, 16) == 1 + 4 * 1 && lane_chunk(7, 8) == 1 + 2 * 3, "the unpack transpose's lane order");

// The blocks a batch of rows [o, o + rows) touches (blocks may straddle rows) and their fp32 absmax.
struct RowBlocks {
  int64_t first = 0;          // first block
  int64_t count = 0;          // blocks from `first` on
  const float* am = nullptr;  // am[b - first] = absmax of block b
  int64_t in_features = 0;
  int64_t blocksize = 0;
  int log2_blocksize = 0;  // blocks are powers of two: e / blocksize as a shift (a 64-bit division costs ~40 cycles)
  // Element offset of row o's start from block `first`'s.
  int64_t row_offset(int64_t o) const { return o * in_features - first * blocksize; }
};

// decode(w, b0, b1, dst) writes the fp32 absmax of double-quantized blocks [b0, b1) (plain absmax is read in place).
template <class DecodeFn>
RowBlocks row_blocks(const codec::Packed4bit& w, int64_t in_features, int64_t o, int rows, std::vector<float>& buf,
                     DecodeFn decode) {
  RowBlocks rb;
  rb.in_features = in_features;
  rb.blocksize = w.blocksize;
  rb.log2_blocksize = __builtin_ctzll(static_cast<unsigned long long>(w.blocksize));
  rb.first = o * in_features / w.blocksize;
  const int64_t end = ((o + rows) * in_features - 1) / w.blocksize + 1;
  rb.count = end - rb.first;
  if (w.qabsmax == nullptr) {
    rb.am = w.absmax + rb.first;
    return rb;
  }
  buf.resize(static_cast<size_t>(end - rb.first));
  decode(w, rb.first, end, buf.data());
  rb.am = buf.data();
  return rb;
}

// Row o's output y, cast to the output type (Args: Gemv4bitArgs or GemvQ8Args).
template <class Args>
void store_out(const Args& a, int64_t o, float y) {
  if (a.out_bf16) {
    static_cast<uint16_t*>(a.y)[o] = codec::bf16_bits_rne(y);
  } else {
    static_cast<float*>(a.y)[o] = y;
  }
}

// Scalar decode of blocks [b0, b1) (the SIMD decoders' remainder): codec::absmax_from_dq, the reference's bits.
inline void decode_absmax_scalar(const codec::Packed4bit& w, int64_t b0, int64_t b1, float* dst) {
  for (int64_t b = b0; b < b1; ++b) dst[b - b0] = w.block_absmax(b, w.nested_code);
}

// absmax_from_dq for 8 blocks at a time (gemv_4bit.cpp).
void decode_absmax_avx2(const codec::Packed4bit& w, int64_t b0, int64_t b1, float* dst);

// The W-lane register kernels run rows in batches of R (R independent accumulator chains hide the FMA latency)
// over the row range of one thread; the remainder runs one row at a time.
template <int R, class RowsFn, class OneFn>
void row_batches(int64_t o0, int64_t o1, const RowsFn& rows, const OneFn& one) {
  int64_t o = o0;
  for (; o + R <= o1; o += R) rows(o);
  for (; o < o1; ++o) one(o);
}

// The absmax of 8 chunks (register lane p: chunk lane_chunk(p, 8) of the group) whose first element is e_rel
// elements past block rb.first's start: they span at most 8 blocks, so an 8-float window of rb.am permuted to the
// lanes. e_rel >= 0.
QLORA_AVX2_INLINE __m256 group_absmax_avx2(const RowBlocks& rb, int64_t e_rel) {
  const __m128i bs_shift = _mm_cvtsi32_si128(rb.log2_blocksize);
  const __m256i lane_elem = _mm256_setr_epi32(0, 64, 128, 192, 32, 96, 160, 224);  // lane_chunk(p, 8) * 32
  const __m256i iota8 = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int64_t fb = e_rel >> rb.log2_blocksize;
  const __m256i blk = _mm256_sub_epi32(
      _mm256_srl_epi32(_mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(e_rel)), lane_elem), bs_shift),
      _mm256_set1_epi32(static_cast<int32_t>(fb)));
  const int64_t n = rb.count - fb < 8 ? rb.count - fb : 8;
  const __m256i in_range = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(n)), iota8);
  return _mm256_permutevar8x32_ps(_mm256_maskload_ps(rb.am + fb, in_range), blk);
}

// Whether every group of 8 chunks of every row starts on a multiple of 256 elements (row length a multiple of 256):
// then group_absmax_aligned_avx2 reads each group's absmax from the weight, with no per-batch decode into a buffer.
inline bool groups_aligned(int64_t in_features) {
  return in_features % 256 == 0;
}

// The absmax of the 8 chunks of a group (register lane p: chunk lane_chunk(p, 8)) whose first element e is a multiple
// of 256, blocksize 2^kLog2 (kLog2 8 stands for every blocksize >= 256): the group spans 256 / blocksize whole
// blocks (one if blocksize >= 256), all under one absmax2 (256 blocks each), so lane p takes block e / blocksize +
// (lane_chunk(p, 8) * 32 >> kLog2). Double-quantized ones are decoded as codec::absmax_from_dq does (the product
// rounded before the add: its bits).
template <int kLog2>
QLORA_AVX2_INLINE __m256 group_absmax_aligned_avx2(const codec::Packed4bit& w, int64_t e) {
  static_assert(kLog2 >= 5 && kLog2 <= 8, "blocksizes 32, 64, 128 and >= 256");
  const int64_t b = e >> __builtin_ctzll(static_cast<unsigned long long>(w.blocksize));
  const bool dq = w.qabsmax != nullptr;
  const auto at = [&](int j) { return dq ? w.nested_code[w.qabsmax[b + j]] : w.absmax[b + j]; };
  __m256 v;
  if constexpr (kLog2 == 5) {
    v = _mm256_setr_ps(at(0), at(2), at(4), at(6), at(1), at(3), at(5), at(7));
  } else if constexpr (kLog2 == 6) {
    const __m128 h = _mm_setr_ps(at(0), at(1), at(2), at(3));
    v = _mm256_set_m128(h, h);
  } else if constexpr (kLog2 == 7) {
    const __m128 h = _mm_setr_ps(at(0), at(0), at(1), at(1));
    v = _mm256_set_m128(h, h);
  } else {
    v = _mm256_set1_ps(at(0));
  }
  if (!dq) return v;
  __m256 p = _mm256_mul_ps(v, _mm256_set1_ps(w.absmax2[b / codec::kNestedBlocksize]));
  __asm__("" : "+x"(p));  // no fma contraction
  return _mm256_add_ps(p, _mm256_set1_ps(w.offset));
}
static_assert(lane_chunk(1, 8) == 2 && lane_chunk(4, 8) == 1, "group_absmax_aligned_avx2's lane order");

}  // namespace qlora::quant::gemv_detail
