// ggml's "K-quant" formats Q4_K, Q5_K and Q6_K: 256-weight super-blocks split into sub-blocks that each carry a
// small integer scale (and for Q4_K / Q5_K a min), themselves scaled by one or two fp16 factors per super-block.
// Scalar reference codecs written from the format description (ggml-common.h block layouts, ggml-quants.c
// quantize_row_*_ref / dequantize_row_*) for the no-importance-matrix case, which is what llama-quantize runs
// without --imatrix. The quantizers reproduce the reference arithmetic step for step in float32 (same operations,
// same order, no fused multiply-add), so their output is byte-identical to llama.cpp's; the tests check that against
// llama-cpp-python (tests/interop/check_kquants.py).
#pragma once

#include <cstdint>

#include "gguf/ggml_quants.h"

namespace qlora::gguf {

constexpr int64_t kQK_K = 256;        // weights per super-block
constexpr int64_t kKScaleBytes = 12;  // Q4_K / Q5_K: 8 six-bit scales + 8 six-bit mins packed in 12 bytes

// Q4_K: 8 sub-blocks of 32 weights. Weight w = d * sc[s] * q - dmin * m[s], q in [0, 15], sc / m 6-bit integers.
// scales[12] packs them (sub-block s < 4: sc in scales[s] bits 0-5, m in scales[s + 4] bits 0-5; s >= 4: low 4 bits
// of sc / m in scales[s + 4] low / high nibble, their top 2 bits in bits 6-7 of scales[s - 4] / scales[s]).
// qs: 4 groups of 32 bytes; group g holds sub-block 2g in the low nibbles and 2g + 1 in the high nibbles.
// Size: 2 + 2 + 12 + 128 = 144 bytes per 256 weights = 4.5 bits per weight.
struct BlockQ4K {
  uint16_t d;     // fp16 super-block scale of the sub-block scales
  uint16_t dmin;  // fp16 super-block scale of the sub-block mins
  uint8_t scales[kKScaleBytes];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ4K) == 144, "Q4_K block must be 144 bytes (ggml block_q4_K)");

// Q5_K: as Q4_K with 5-bit q in [0, 31]: the low 4 bits in qs as in Q4_K, the fifth bit of weight 64g + j
// (sub-block 2g) in qh[j] bit 2g and of weight 64g + 32 + j (sub-block 2g + 1) in qh[j] bit 2g + 1.
// Size: 2 + 2 + 12 + 32 + 128 = 176 bytes per 256 weights = 5.5 bits per weight.
struct BlockQ5K {
  uint16_t d;
  uint16_t dmin;
  uint8_t scales[kKScaleBytes];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ5K) == 176, "Q5_K block must be 176 bytes (ggml block_q5_K)");

// Q6_K: 16 sub-blocks of 16 weights, symmetric. w = d * scales[s] * (q - 32), q in [0, 63], scales int8.
// Per half (128 weights, h = 0, 1), for l < 32 and the four quarters k = 0..3 (weight 128h + 32k + l):
// low 4 bits in ql[64h + l] (k = 0 low nibble, k = 2 high nibble) or ql[64h + 32 + l] (k = 1 low, k = 3 high);
// top 2 bits in qh[32h + l] bits 2k, 2k + 1.
// Size: 128 + 64 + 16 + 2 = 210 bytes per 256 weights = 6.5625 bits per weight.
struct BlockQ6K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;
};
static_assert(sizeof(BlockQ6K) == 210, "Q6_K block must be 210 bytes (ggml block_q6_K)");

// k must be a multiple of 256. x: k floats -> y: k/256 blocks (and back).
void quantize_row_q4_K_ref(const float* x, BlockQ4K* y, int64_t k);
void dequantize_row_q4_K(const BlockQ4K* x, float* y, int64_t k);
void quantize_row_q5_K_ref(const float* x, BlockQ5K* y, int64_t k);
void dequantize_row_q5_K(const BlockQ5K* x, float* y, int64_t k);
void quantize_row_q6_K_ref(const float* x, BlockQ6K* y, int64_t k);
void dequantize_row_q6_K(const BlockQ6K* x, float* y, int64_t k);

// Sub-block s (0..7) scale and min of a Q4_K / Q5_K block, unpacked from the 12 scale bytes.
void unpack_k_scale_min(int s, const uint8_t* scales, uint8_t* sc, uint8_t* m);

}  // namespace qlora::gguf
