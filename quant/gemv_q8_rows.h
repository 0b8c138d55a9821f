// The row loop of the q8 GEMV's SIMD kernels, one copy per instruction set: gemv_q8.cpp includes this file inside a
// namespace that names the set's integer dots `Dots` (a group of 8 chunks of R rows: DotsAvx2, DotsAvx512), with
// QLORA_Q8_ROWS defined as that set's target attribute, so that each copy is compiled for its own instructions and
// inlines its own dots. Included more than once on purpose: no #pragma once, no includes (gemv_q8.cpp has them).

// Rows [o, o + R): per group of 8 chunks the 8 exact chunk sums of each row, then one fma per lane. kAligned: rows of
// a multiple of 256 elements, blocksize 2^kAligned (8: >= 256), whose groups read their absmax from the weight
// (gemv_rows.h); 0: any row length, the batch's absmax decoded into am_buf first, partial groups summed by the
// reference's scalar dots.
template <int R, int kAligned>
QLORA_Q8_ROWS void rows(const GemvQ8Args& a, const LaidOutX& x, const Dots& dots, int64_t o,
                        std::vector<float>& am_buf) {
  const int64_t in = a.in_features, chunks = in / kChunk, groups = (chunks + kGroup - 1) / kGroup;
  const RowBlocks rb = kAligned == 0 ? row_blocks(a.w, in, o, R, am_buf, decode_absmax_avx2) : RowBlocks{};
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
      dots.group<R>(a, x, o, c0, isum);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), scale[r], acc[r]);
      continue;
    }
    // The row's last, partial group: the reference's scalar dots, the lanes past the row left as they are.
    const __m256 lanes = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(valid), lane_c));
    for (int r = 0; r < R; ++r) {
      alignas(32) int32_t t[kGroup] = {};
      for (int p = 0; p < kGroup; ++p) {
        const int64_t c = c0 + lane_chunk(p, kGroup);
        if (c < chunks) {
          t[p] = codec::q8_chunk_dot(a.w.packed + ((o + r) * in + c * kChunk) / 2, x.cq, x.q + c * kChunk);
        }
      }
      isum[r] = _mm256_load_si256(reinterpret_cast<const __m256i*>(t));
      acc[r] = _mm256_blendv_ps(acc[r], _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), scale[r], acc[r]), lanes);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) store_out(a, o + r, butterfly_q8_avx2(acc[r]));
}

constexpr int kRows = 2;

QLORA_Q8_ROWS void gemv_rows(const GemvQ8Args& a, const LaidOutX& x, int64_t o0, int64_t o1) {
  const Dots dots(x.cu);
  // The first two batches' bytes (rows prefetches each later one as it goes).
  const uint8_t* first = a.w.packed + ((o0 * a.in_features) >> 1);
  const int64_t first_bytes = (std::min<int64_t>(2 * kRows, o1 - o0) * a.in_features) >> 1;
  for (int64_t line = 0; line < first_bytes; line += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(first + line), _MM_HINT_NTA);
  }
  std::vector<float> am_buf;
  const auto run = [&](auto aligned) {
    constexpr int kAligned = decltype(aligned)::value;
    row_batches<kRows>(
        o0, o1, [&](int64_t o) { rows<kRows, kAligned>(a, x, dots, o, am_buf); },
        [&](int64_t o) { rows<1, kAligned>(a, x, dots, o, am_buf); });
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
