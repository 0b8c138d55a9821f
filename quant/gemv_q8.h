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
#include <vector>

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

// gemv_q8_cpu in two halves, for callers that run their own parallel region (model/decode_layer.cpp runs a decoder
// layer's every step in one): gemv_q8_prepare quantizes and lays out x once for `isa`'s kernel, then gemv_q8_rows
// computes rows [o0, o1) of any weight of that in_features on the calling thread, reading the prepared x (not a.x).
// The bits of gemv_q8_cpu, NaN rows where an activation is not finite. A prepared x is read-only: threads share it.
struct GemvQ8X {
  Isa isa = Isa::kScalar;  // whose kernel the rows run: the reference, AVX2, or AVX-512 (VNNI + VBMI)
  bool finite = true;
  int64_t in_features = 0;
  std::vector<int8_t> q;   // x quantized, natural order
  std::vector<float> e;    // per chunk (the reference's)
  std::vector<int8_t> xl;  // the SIMD kernels' layout (gemv_q8.cpp)
  std::vector<float> el;
  std::vector<int32_t> off;
};
// Throws std::invalid_argument when in_features is not a multiple of 32.
void gemv_q8_prepare(const void* x, bool x_bf16, int64_t in_features, Isa isa, GemvQ8X& px);
// Throws std::invalid_argument when a's in_features or blocksize does not fit.
void gemv_q8_rows(const GemvQ8Args& a, const GemvQ8X& px, int64_t o0, int64_t o1);

}  // namespace qlora::quant
