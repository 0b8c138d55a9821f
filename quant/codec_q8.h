// The arithmetic of the 4-bit GEMV with 8-bit activations (quant/gemv_q8.h), written like codec_4bit.h's: plain C++
// the CUDA compiler can build for the device and the CPU build builds for the host (only the CPU kernels use it yet).
//
// It is the arithmetic class of llama.cpp's CPU dot products (activations quantized to 8 bits per 32 elements, the
// weights' codes as small integers, an exact integer dot product per 32 weights), applied to bitsandbytes' layout:
//   - activations: chunk c of x (32 elements, fp32; bf16 widened exactly): amax_c = max |x_i|; if amax_c > 0,
//     q_i = clamp(rne(x_i * inv_c), -127, 127) with inv_c = 127 / amax_c (an fp32 division, then an fp32 product),
//     else q_i = 0; the chunk's scale e_c = amax_c / 8001 (fp32 division; 8001 = 127 * 63, the codebook's 63);
//   - codebook: cq[n] = rne(code[n] * 63), in [-63, 63] (|code| <= 1: the NF4 and FP4 codebooks are normalised):
//     7 bits, so that cq + 64 is a byte below 128 and the SIMD kernels multiply it as an unsigned byte by q (a
//     pair of such products stays below 2^15) and subtract 64 * sum(q) per chunk, with no sign fix-up per weight;
//   - chunk dot: isum_c = sum over the chunk of cq[nibble_i] * q_i, an exact int32 (at most 32 * 127 * 63 in size);
//   - lanes: lane l of 8 takes chunks l, l + 8, l + 16, ... in increasing order from +0:
//     acc = fma(float(isum_c), absmax_c * e_c, acc), the product rounded to fp32 first (float(isum_c) is exact);
//   - the 8 lane sums are combined by a butterfly: for off = 4, 2, 1: s[l] = s[l] + s[l + off]; y = s[0];
//   - a non-finite activation makes every y NaN (a dense product would give NaN or infinities).
// Only the exact integer part runs per weight: the SIMD kernels' inner step is a table lookup and a multiply-add of
// bytes, against codec_4bit.h's GEMV's fp32 lookup and fma per weight.
#pragma once

#include <cstdint>

#include "quant/codec_4bit.h"

namespace qlora::quant::codec {

constexpr int kQ8Lanes = 8;
constexpr int kQ8Chunk = kGemvChunk;    // 32: one absmax block holds whole chunks
constexpr float kQ8Max = 127.0f;        // activations: int8 in [-127, 127]
constexpr float kQ8CodeMax = 63.0f;     // codebook: [-63, 63]
constexpr int kQ8CodeOffset = 64;       // the SIMD kernels' unsigned codebook bytes: cq + 64 in [1, 127]
constexpr float kQ8ScaleDiv = 8001.0f;  // 127 * 63
static_assert(kQ8Chunk * 127 * 63 < (int64_t{1} << 24), "a chunk's integer dot is exact in fp32 too");
static_assert(2 * (kQ8CodeOffset + 63) * 127 < (1 << 15), "an unsigned code byte pair times q fits int16");

// Round to the nearest integer, ties to even (the default rounding mode; the SIMD conversions use the same).
QLORA_HD float rne(float v) {
#if defined(__CUDA_ARCH__)
  return rintf(v);
#else
  return __builtin_rintf(v);
#endif
}

QLORA_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// cq[n]: the codebook entry in 7 bits (|code| <= 1 gives [-63, 63]; larger values are clamped).
QLORA_HD int8_t q8_code(float code) {
  const float v = rne(mul_rn(code, kQ8CodeMax));
  return static_cast<int8_t>(v > kQ8CodeMax ? kQ8CodeMax : (v < -kQ8CodeMax ? -kQ8CodeMax : v));
}

// One activation's int8 value, inv = 127 / amax of its chunk (amax > 0 and finite).
QLORA_HD int8_t q8_activation(float x, float inv) {
  const float v = rne(mul_rn(x, inv));
  return static_cast<int8_t>(v > kQ8Max ? kQ8Max : (v < -kQ8Max ? -kQ8Max : v));
}

// A chunk of 32 activations x -> q[32], returning its scale e_c (0 for an all-zero chunk). amax must be finite.
QLORA_HD float q8_quantize_chunk(const float* x, int8_t* q) {
  float amax = 0.0f;
  for (int i = 0; i < kQ8Chunk; ++i) amax = x[i] < 0.0f ? (-x[i] > amax ? -x[i] : amax) : (x[i] > amax ? x[i] : amax);
  if (amax == 0.0f) {
    for (int i = 0; i < kQ8Chunk; ++i) q[i] = 0;
    return 0.0f;
  }
  const float inv = div_rn(kQ8Max, amax);
  for (int i = 0; i < kQ8Chunk; ++i) q[i] = q8_activation(x[i], inv);
  return div_rn(amax, kQ8ScaleDiv);
}

// isum_c: the exact integer dot product of one chunk's 16 packed bytes (first element in the high nibble) with its
// 32 int8 activations.
QLORA_HD int32_t q8_chunk_dot(const uint8_t* bytes, const int8_t* cq, const int8_t* q) {
  int32_t s = 0;
  for (int j = 0; j < kQ8Chunk / 2; ++j) {
    s += static_cast<int32_t>(cq[bytes[j] >> 4]) * q[2 * j];
    s += static_cast<int32_t>(cq[bytes[j] & 0x0F]) * q[2 * j + 1];
  }
  return s;
}

// A lane's running sum after one more chunk.
QLORA_HD float q8_lane_step(int32_t isum, float absmax, float e, float acc) {
  return fma_rn(static_cast<float>(isum), mul_rn(absmax, e), acc);
}

}  // namespace qlora::quant::codec
