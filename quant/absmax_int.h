// Plain symmetric absmax INT4 / INT8 blockwise quantization: the baseline NF4 is compared against (error
// ordering tests and benchmarks only; the model never stores weights this way).
// code = round(x / absmax * qmax) in [-qmax, qmax] with qmax = 7 (INT4) or 127 (INT8); x' = code * absmax / qmax.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace qlora::quant {

struct AbsmaxIntQuantized {
  int bits = 8;  // 4 or 8
  int64_t blocksize = 64;
  std::vector<int64_t> shape;
  torch::Tensor codes;   // int8 [numel] (INT4 codes are kept one per byte, in [-7, 7])
  torch::Tensor scales;  // fp32 [nblocks] absmax per block
};

// w: any float tensor (CPU) -> codes + scales. blocksize > 0.
AbsmaxIntQuantized quantize_int4_absmax(const torch::Tensor& w, int64_t blocksize = 64);
AbsmaxIntQuantized quantize_int8_absmax(const torch::Tensor& w, int64_t blocksize = 64);
// -> fp32 tensor of the original shape.
torch::Tensor dequantize_absmax_int(const AbsmaxIntQuantized& q);

}  // namespace qlora::quant
