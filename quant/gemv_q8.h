// 4-bit GEMV with 8-bit activations for batch-1 decoding on the CPU: y = W x, W (out, in) kept as packed NF4/FP4
// codes (bitsandbytes layout), x quantized to int8 per 32 elements, an exact integer dot product per 32 weights
// (quant/codec_q8.h specifies the arithmetic and its order). llama.cpp's CPU dot products work this way; it costs
// a table lookup and a byte multiply-add per weight where gemv_4bit.h's fp32 arithmetic costs a 16-entry float
// lookup and an fma, which an AVX2 CPU without a fast 8-lane permute cannot feed at memory speed.
//
// The price is accuracy: x is rounded to 8 bits per 32 elements (relative error up to 1/254 of the chunk's largest
// |x|) and the codebook to multiples of 1/63 (NF4's codes move by at most 1/126, a tenth of their closest spacing).
// tests/quant/test_gemv_q8.cpp bounds the result against a float64 product of the dequantized weight.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/cpu_isa.h"
#include "quant/codec_4bit.h"

namespace qlora::quant {

struct GemvQ8Args {
  codec::Packed4bit w;  // W (out, in), row-major
  int64_t out_features = 0;
  int64_t in_features = 0;  // a multiple of 32
  const void* x = nullptr;  // [in]: bf16 bits (uint16_t) or fp32
  bool x_bf16 = true;
  bool out_bf16 = true;  // y as bf16 bits (uint16_t) or fp32
  void* y = nullptr;     // [out]
};

// The specification: scalar code following codec_q8.h exactly (slow; tests).
void gemv_q8_ref(const GemvQ8Args& a);

// The CPU kernel: an AVX-512 one (VNNI and VBMI too: Ice Lake, Sapphire Rapids, Zen 4) for Isa::kAvx512, an AVX2
// one for Isa::kAvx2 or an AVX-512 CPU without VNNI / VBMI (gemv_q8.cpp), each computing gemv_q8_ref's integer dot
// products and float sums in its order and so giving its bits, or gemv_q8_ref itself for Isa::kScalar or a CPU
// without AVX2. Rows are split over LibTorch's thread pool, each row summed by one thread (the bits do not depend on
// the thread count). Throws std::invalid_argument when in_features is not a multiple of 32.
void gemv_q8_cpu(const GemvQ8Args& a, Isa isa = active_isa());
// y_i = W_i x for `count` weights that share x (q, k, v; gate, up): x is quantized once and the rows of all run in
// one parallel region; each y_i has the bits of its own gemv_q8_cpu. Throws std::invalid_argument when they do not
// share x and in_features.
void gemv_q8_cpu(const GemvQ8Args* args, size_t count, Isa isa = active_isa());

}  // namespace qlora::quant
