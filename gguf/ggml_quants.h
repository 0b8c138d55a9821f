// ggml tensor types that qlora.cpp writes into GGUF files, with scalar reference codecs that follow ggml's
// reference layout (ggml-common.h block structs, ggml-quants.c quantize_row_*_ref / dequantize_row_*), written
// from the format description, plus IEEE half / bfloat16 conversion with round-to-nearest-even.
#pragma once

#include <cstdint>
#include <string>

namespace qlora::gguf {

// ggml_type ids (ggml.h). Only the ones we write.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ5_0 = 6,  // fallback of Q4_K for rows that are not a multiple of 256 (llama-quantize)
  kQ5_1 = 7,  // fallback of Q5_K
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};

std::string ggml_type_name(GgmlType t);  // "F32", "F16", "Q4_0", "Q5_0", "Q5_1", "Q8_0", "Q4_K", ..., "BF16"
// Block-quantized (anything but F32 / F16 / BF16).
bool ggml_is_quantized(GgmlType t);
// Weights per block (1 for plain types, 32 for Q8_0/Q4_0/Q5_0/Q5_1, 256 for the K-quants) and bytes per block.
int64_t ggml_block_size(GgmlType t);
int64_t ggml_block_bytes(GgmlType t);
// Bytes of `n` elements (n a multiple of the block size).
uint64_t ggml_nbytes(GgmlType t, int64_t n);

// ---- scalar conversions (round to nearest, ties to even; NaN stays NaN, overflow -> inf) ----
uint16_t fp32_to_fp16(float f);
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);
float bf16_to_fp32(uint16_t b);

constexpr int64_t kQK8_0 = 32;
constexpr int64_t kQK4_0 = 32;
constexpr int64_t kQK5_0 = 32;
constexpr int64_t kQK5_1 = 32;

// Q8_0: 32 weights share one fp16 scale. d = max|x| / 127, q = round(x / d) (half away from zero),
// x' = q * d. Size: 2 + 32 = 34 bytes per 32 weights = 8.5 bits per weight.
struct BlockQ8_0 {
  uint16_t d;  // fp16 bits of the scale
  int8_t qs[kQK8_0];
};
static_assert(sizeof(BlockQ8_0) == 2 + kQK8_0, "Q8_0 block must be 34 bytes (ggml block_q8_0)");

// Q4_0: 32 weights share one fp16 scale. With m = the signed value of largest magnitude, d = m / -8,
// q = min(15, trunc(x / d + 8.5)) in [0, 15], x' = (q - 8) * d. Byte j holds q[j] in the low nibble and
// q[j + 16] in the high nibble. Size: 2 + 16 = 18 bytes per 32 weights = 4.5 bits per weight.
struct BlockQ4_0 {
  uint16_t d;  // fp16 bits of the scale
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0) == 2 + kQK4_0 / 2, "Q4_0 block must be 18 bytes (ggml block_q4_0)");

// Q5_0: as Q4_0 with 5-bit q: d = m / -16 (m the signed value of largest magnitude), q = min(31, trunc(x / d + 16.5)),
// x' = (q - 16) * d. The low 4 bits are packed as in Q4_0; the fifth bit of weight j is bit j of qh (little-endian).
// Size: 2 + 4 + 16 = 22 bytes per 32 weights = 5.5 bits per weight.
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK5_0 / 2];
};
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 block must be 22 bytes (ggml block_q5_0)");

// Q5_1: asymmetric 5-bit: d = (max - min) / 31, m = min, q = trunc((x - min) / d + 0.5) kept to its low byte,
// x' = q * d + m. Bits packed as in Q5_0. Size: 2 + 2 + 4 + 16 = 24 bytes per 32 weights = 6 bits per weight.
struct BlockQ5_1 {
  uint16_t d;
  uint16_t m;
  uint8_t qh[4];
  uint8_t qs[kQK5_1 / 2];
};
static_assert(sizeof(BlockQ5_1) == 24, "Q5_1 block must be 24 bytes (ggml block_q5_1)");

// k must be a multiple of 32. x: k floats -> y: k/32 blocks (and back).
void quantize_row_q8_0_ref(const float* x, BlockQ8_0* y, int64_t k);
void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t k);
void quantize_row_q4_0_ref(const float* x, BlockQ4_0* y, int64_t k);
void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t k);
void quantize_row_q5_0_ref(const float* x, BlockQ5_0* y, int64_t k);
void dequantize_row_q5_0(const BlockQ5_0* x, float* y, int64_t k);
void quantize_row_q5_1_ref(const float* x, BlockQ5_1* y, int64_t k);
void dequantize_row_q5_1(const BlockQ5_1* x, float* y, int64_t k);

}  // namespace qlora::gguf
