// bitsandbytes 4-bit checkpoint layout (what transformers writes for `*-bnb-4bit` models), per quantized
// projection with prefix P (e.g. "model.layers.0.self_attn.q_proj"):
//   P.weight                  U8  [ceil(n/2), 1]  packed nibbles (first element in the high nibble)
//   P.weight.absmax           U8 (double quant) or F32, [ceil(n/blocksize)]
//   P.weight.quant_map        F32 [16]   codebook
//   P.weight.nested_absmax    F32 [ceil(nblocks/256)]   (double quant only)
//   P.weight.nested_quant_map F32 [256]  dynamic map     (double quant only)
//   P.weight.quant_state.bitsandbytes__nf4|__fp4  U8 [len]  json.dumps of
//     {"quant_type", "blocksize", "dtype", "shape"[, "nested_blocksize", "nested_dtype", "nested_offset"]}
#pragma once

#include <torch/types.h>

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors.h"
#include "quant/quantized_tensor.h"

namespace qlora::io {

// The tensors to write for one quantized projection, keys as above (CPU tensors).
std::vector<std::pair<std::string, torch::Tensor>> bnb_tensors(const std::string& prefix,
                                                               const quant::QuantizedTensor& q);

// The quant_state JSON exactly as Python's json.dumps writes it (", " / ": " separators, bnb key order,
// nested_offset as Python's repr of the float).
std::string bnb_quant_state_json(const quant::QuantizedTensor& q);

// True when the checkpoint holds `prefix.weight.quant_state.bitsandbytes__*`.
bool bnb_is_quantized(const Checkpoint& ckpt, const std::string& prefix);

// All checkpoint keys that belong to the quantized weight of `prefix` (P.weight and P.weight.*).
std::vector<std::string> bnb_keys(const Checkpoint& ckpt, const std::string& prefix);

// Reads one projection into a QuantizedTensor without dequantizing (data copied out of the mapping).
// Inconsistent parts (sizes, dtypes, JSON fields, a missing or duplicated quant_state) throw qlora::Error
// naming the checkpoint folder and the key.
quant::QuantizedTensor bnb_read(const Checkpoint& ckpt, const std::string& prefix);

// config.json "quantization_config" of a bnb-4bit model (BitsAndBytesConfig.to_dict()).
nlohmann::json bnb_quantization_config(quant::QuantType type, bool double_quant, const std::string& compute_dtype);

// Python repr() of a float (shortest round-trip digits; exponent form below 1e-4 or from 1e16).
std::string python_float_repr(double v);

// "bfloat16" / "float16" / "float32" <-> dtype (qlora::Error for others).
std::string torch_dtype_name(torch::ScalarType t);
torch::ScalarType torch_dtype_from_name(const std::string& name);

}  // namespace qlora::io
