// QuantizedTensor: a frozen weight kept only as 4-bit codes, bit-compatible with bitsandbytes
// (quantize_4bit / dequantize_4bit, NF4 and FP4, with or without double quantization).
//
// Layout (bitsandbytes): the tensor is flattened row-major; blocks are consecutive runs of `blocksize`
// elements (the last one may be partial). code = nearest codebook entry of x / absmax[block] (exact
// midpoint -> lower index). Two codes per byte, FIRST element in the HIGH nibble; odd counts pad one 0.0.
// Double quantization: offset = mean(absmax); (absmax - offset) is quantized blockwise (256) to uint8
// against the signed dynamic map with fp32 absmax2 per 256-block:
//   absmax[i] = dynamic_map[qabsmax[i]] * absmax2[i / 256] + offset.
// Bits per parameter: 4 + 32/blocksize (plain) or 4 + 8/blocksize + 32/(256*blocksize) (double quant), i.e. 4.5 and
// 4.127 at blocksize 64. The array-by-array layout, with static_asserts on these numbers: quant/codec_4bit.h.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qlora::quant {

enum class QuantType { kNF4, kFP4 };

constexpr int64_t kDefaultBlocksize = 64;
constexpr int64_t kNestedBlocksize = 256;

std::string quant_type_name(QuantType t);             // "nf4" | "fp4"
QuantType parse_quant_type(const std::string& name);  // throws qlora::Error on anything else

// The base-weight choice of configs and CLIs: a 4-bit type, or "none" (projections stay dense).
constexpr const char* kNoQuant = "none";
std::vector<std::string> quant_option_names();                         // {"nf4", "fp4", "none"}
std::optional<QuantType> parse_quant_option(const std::string& name);  // "none" -> nullopt, else parse_quant_type

// The 16-entry codebooks, exactly bitsandbytes' tables (fp32), and the 256-entry signed dynamic map.
const std::vector<float>& nf4_code();
const std::vector<float>& fp4_code();
const std::vector<float>& dynamic_map_signed();

struct QuantizedTensor {
  QuantType type = QuantType::kNF4;
  int64_t blocksize = kDefaultBlocksize;
  std::vector<int64_t> shape;                  // original shape, e.g. {out, in}
  torch::ScalarType dtype = torch::kBFloat16;  // original dtype (dequant default)
  torch::Tensor packed;                        // uint8 [ceil(numel/2)]
  torch::Tensor code;                          // fp32 [16] (the codebook, stored as bnb's quant_map)
  // Plain: absmax is fp32 [nblocks]. Double quant: absmax is uint8 [nblocks] (qabsmax).
  torch::Tensor absmax;
  bool double_quant = false;
  torch::Tensor absmax2;      // fp32 [ceil(nblocks/256)]   (double quant only)
  torch::Tensor nested_code;  // fp32 [256] dynamic map   (double quant only)
  float offset = 0.0f;        // mean of the fp32 absmax  (double quant only)

  int64_t numel() const;
  int64_t num_blocks() const;
  // Bytes held in memory by all parts (what the memory planner counts).
  int64_t nbytes() const;
  // Same accounting from a shape alone, without quantizing anything.
  static int64_t nbytes_for(int64_t numel, int64_t blocksize, bool double_quant);
  torch::Device device() const { return packed.device(); }
  QuantizedTensor to(torch::Device device) const;  // moves every part
  // fp32 absmax per block (decodes the double-quantized form).
  torch::Tensor absmax_fp32() const;
};

// Quantize a float32/bf16/fp16 tensor (any shape; CPU fast path, LibTorch-ops path elsewhere).
// blocksize: power of two in [32, 4096], else qlora::Error.
QuantizedTensor quantize_4bit(const torch::Tensor& w, QuantType type = QuantType::kNF4,
                              int64_t blocksize = kDefaultBlocksize, bool double_quant = true);

// Dequantize to `out_dtype` (fp32/bf16/fp16) in the original shape. CPU: multithreaded SIMD kernel
// decoding the double-quantized absmax on the fly; other devices: LibTorch ops (or CUDA kernel).
torch::Tensor dequantize_4bit(const QuantizedTensor& q, torch::ScalarType out_dtype);
// Same, writing into a preallocated contiguous tensor of the right numel (no allocation on the hot path).
void dequantize_4bit_into(const QuantizedTensor& q, torch::Tensor& out);

}  // namespace qlora::quant
