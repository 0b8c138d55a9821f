// 4-bit GEMV for batch-1 decoding: y = W x, W (out, in) kept as packed NF4/FP4 codes (bitsandbytes layout), read
// once, never dequantized into a buffer. The summation order is specified in quant/codec_4bit.h, so the CPU
// reference below, the CPU SIMD kernels (gemv_4bit_cpu) and the CUDA kernel (gemv_cuda.cu, CUDA builds) all give
// the same bits.
#pragma once

#include <cstdint>
#include <vector>

#include "common/cpu_isa.h"
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

// The CPU kernels: gemv_4bit_avx512 / gemv_4bit_avx2 (gemv_4bit.cpp), which compute gemv_4bit_ref's sums in its
// order and so give its bits, or gemv_4bit_ref itself for Isa::kScalar or an `isa` the CPU lacks. Rows are split
// over LibTorch's thread pool; each row is summed by one thread, so the bits do not depend on the thread count.
// Throws std::invalid_argument when in_features is not a multiple of 32.
void gemv_4bit_cpu(const Gemv4bitArgs& a, Isa isa = active_isa());

// gemv_4bit_cpu in two halves, for callers that run their own parallel region (model/decode_layer.cpp):
// gemv_4bit_prepare lays x out once for `isa`'s kernel, gemv_4bit_rows computes rows [o0, o1) of any weight of that
// in_features on the calling thread (its a.x must be the prepared x: the reference reads it). The bits of
// gemv_4bit_cpu. A prepared x is read-only: threads share it. Both throw std::invalid_argument on a bad in_features.
struct Gemv4bitX {
  Isa isa = Isa::kScalar;
  int64_t in_features = 0;
  std::vector<float> xt;  // the SIMD kernels' layout (gemv_4bit.cpp)
};
void gemv_4bit_prepare(const uint16_t* x, int64_t in_features, Isa isa, Gemv4bitX& px);
void gemv_4bit_rows(const Gemv4bitArgs& a, const Gemv4bitX& px, int64_t o0, int64_t o1);

namespace cuda {
// Enqueues the GEMV on `stream` (cudaStream_t). CUDA builds only. Throws std::runtime_error on a bad launch.
void gemv_4bit(const Gemv4bitArgs& a, void* stream);
}  // namespace cuda

}  // namespace qlora::quant
