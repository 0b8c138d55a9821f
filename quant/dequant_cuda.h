// CUDA 4-bit dequantization (NF4/FP4, bitsandbytes layout, double-quantized absmax decoded inline), compiled in
// QLORA_CUDA builds only. Raw pointers and a stream, no LibTorch: quant/quantized_tensor.cpp unpacks the tensors.
// The arithmetic is quant/codec_4bit.h, the same functions the CPU scalar reference runs, so the output is the
// CPU kernels' output byte for byte (fp32 and bf16 exactly; fp16 too except NaN payloads).
#pragma once

#include <cstdint>

namespace qlora::quant::cuda {

enum class OutType { kF32, kBF16, kF16 };

struct Dequant4bitArgs {
  const uint8_t* packed = nullptr;     // [ceil(n / 2)] codes, first element in the high nibble
  const float* code = nullptr;         // [16] codebook
  const float* absmax = nullptr;       // [nblocks] fp32 absmax (plain), or
  const uint8_t* qabsmax = nullptr;    // [nblocks] uint8 absmax codes (double quant) with
  const float* absmax2 = nullptr;      //   [ceil(nblocks / 256)] fp32 nested scales,
  const float* nested_code = nullptr;  //   [256] signed dynamic map and
  float offset = 0.0f;                 //   the mean of the original absmax
  int64_t n = 0;                       // elements
  int64_t blocksize = 64;              // power of two in [32, 4096]
  OutType out_type = OutType::kBF16;
  void* out = nullptr;  // [n] of out_type, contiguous
};

// Enqueues the dequant on `stream` (a cudaStream_t; nullptr = the legacy default stream). Allocates nothing.
// Throws std::runtime_error with the CUDA error string if the launch fails.
void dequantize_4bit(const Dequant4bitArgs& args, void* stream);

}  // namespace qlora::quant::cuda
