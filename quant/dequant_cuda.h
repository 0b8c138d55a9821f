// CUDA 4-bit dequantization (NF4/FP4, bitsandbytes layout, double-quantized absmax decoded inline), compiled in
// QLORA_CUDA builds only. Raw pointers and a stream, no LibTorch: quant/quantized_tensor.cpp unpacks the tensors.
// The arithmetic is quant/codec_4bit.h, the same functions dequantize_blocks_ref runs on the CPU, so the output is the
// CPU kernels' output byte for byte (fp32 and bf16 exactly; fp16 too except NaN payloads).
#pragma once

#include <cstdint>

#include "quant/codec_4bit.h"

namespace qlora::quant::cuda {

enum class OutType { kF32, kBF16, kF16 };

struct Dequant4bitArgs {
  codec::Packed4bit w;  // the weight (its parts on the device)
  int64_t n = 0;        // elements
  OutType out_type = OutType::kBF16;
  void* out = nullptr;  // [n] of out_type, contiguous
};

// Enqueues the dequant on `stream` (a cudaStream_t; nullptr = the legacy default stream). Allocates nothing.
// Throws std::runtime_error with the CUDA error string if the launch fails.
void dequantize_4bit(const Dequant4bitArgs& args, void* stream);

}  // namespace qlora::quant::cuda
