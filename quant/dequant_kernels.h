// Internal kernels behind quantize_4bit / dequantize_4bit (not part of the public API; tests and the
// benchmark use them to force a path). Each entry point runs one kernel family of quant/quantize_kernels.cpp or
// quant/dequant_kernels.cpp: `<thing>_ref` (Isa::kScalar), the specification, or `<thing>_avx2` / `_avx512`,
// which must produce the same bits. An `isa` the CPU lacks runs `_ref`.
#pragma once

#include <torch/types.h>

#include <array>
#include <cstdint>
#include <vector>

#include "common/cpu_isa.h"
#include "quant/codec_4bit.h"
#include "quant/gemv_4bit.h"
#include "quant/gemv_q8.h"
#include "quant/quantized_tensor.h"

namespace qlora::quant::detail {

static_assert(codec::kNestedBlocksize == kNestedBlocksize, "one double-quantization block size");
static_assert(codec::valid_blocksize(kDefaultBlocksize), "the default blocksize is a valid one");

// Decision table of a 16-entry codebook: the sorted midpoints (bounds[15] = +inf) and the sorted -> code index
// map. A value's code is the number of bounds strictly below it (a value exactly on a bound takes the lower
// entry, as torch.bucketize(right=False) in bitsandbytes' reference), mapped through `order` when the
// codebook is not sorted (FP4).
struct CodeBounds {
  std::array<float, 16> bounds;
  std::array<uint8_t, 16> order;
  bool remap;
};
CodeBounds code_bounds(const std::vector<float>& code);

// Quantizes blocks [b0, b1) of x (n elements of dtype dt: fp32, bf16 or fp16) with the given path: writes
// absmax[b] and the blocks' packed bytes (packed[e / 2]; blocksize is a multiple of 16, so each block owns
// whole bytes; an odd final element is paired with the code of 0.0). Every path gives the same bytes.
void quantize_blocks_cpu(const void* x, torch::ScalarType dt, int64_t n, int64_t bs, int64_t b0, int64_t b1,
                         const CodeBounds& cb, float* absmax, uint8_t* packed, Isa isa);

// quantize_4bit with a forced CPU path (tests and the benchmark).
QuantizedTensor quantize_4bit_with(const torch::Tensor& w, QuantType type, int64_t blocksize, bool double_quant,
                                   Isa isa);

// CPU dequant of q into `out` (contiguous, q.numel() elements, fp32/bf16/fp16) with the given path.
void dequantize_cpu_into(const QuantizedTensor& q, torch::Tensor& out, Isa isa);

// Device-generic dequant written with LibTorch ops (the non-CPU path). out_dtype may also be kFloat64
// (the fp32 products cast exactly; used for finite-difference checks).
torch::Tensor dequantize_ops(const QuantizedTensor& q, torch::ScalarType out_dtype);

// q's parts as the raw pointers the kernels read (on q's device; q must outlive the view).
codec::Packed4bit packed_view(const QuantizedTensor& q);
// The GEMV arguments of y = W x for W = w (2-D), x: in_features bf16 values, y: out_features bf16 or fp32 values.
Gemv4bitArgs gemv_args(const QuantizedTensor& w, const void* x, void* y, bool out_bf16);
// The same for the GEMV with 8-bit activations: x bf16 (x_bf16) or fp32 values.
GemvQ8Args gemv_q8_args(const QuantizedTensor& w, const void* x, bool x_bf16, void* y, bool out_bf16);

// fp32 mean of x[0..n) computed like torch.mean on a contiguous CPU fp32 tensor in one thread
// (cascade sum over 8-lane vectors, then / n). bitsandbytes' double-quant offset is this value.
float torch_mean_f32(const float* x, int64_t n);

// Decodes the fp32 absmax of blocks [b0, b1) into dst: dyn_map[q] * absmax2[i / 256] + offset with two
// separate fp32 roundings (never fused), exactly as bitsandbytes restores it.
void decode_absmax(const QuantizedTensor& q, int64_t b0, int64_t b1, float* dst);

}  // namespace qlora::quant::detail
