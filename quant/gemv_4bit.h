// 4-bit GEMV for batch-1 decoding: y = W x, W (out, in) kept as packed NF4/FP4 codes (bitsandbytes layout), read
// once, never dequantized into a buffer. The summation order is specified in quant/codec_4bit.h, so the CPU
// reference below and the CUDA kernel (gemv_cuda.cu, CUDA builds) give the same bits.
#pragma once

#include <cstdint>

#include "quant/codec_4bit.h"

namespace qlora::quant {

struct Gemv4bitArgs {
  codec::Packed4bit w;  // W (out, in), row-major
  int64_t out_features = 0;
  int64_t in_features = 0;      // a multiple of 32
  const uint16_t* x = nullptr;  // [in] bf16 bits
  bool out_bf16 = true;         // y as bf16 bits (uint16_t) or fp32
  void* y = nullptr;            // [out]
};

// The specification: scalar CPU code following codec_4bit.h's order exactly (slow; tests and tiny layers).
void gemv_4bit_ref(const Gemv4bitArgs& a);

namespace cuda {
// Enqueues the GEMV on `stream` (cudaStream_t). CUDA builds only. Throws std::runtime_error on a bad launch.
void gemv_4bit(const Gemv4bitArgs& a, void* stream);
}  // namespace cuda

}  // namespace qlora::quant
