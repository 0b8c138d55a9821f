// The per-tensor types of llama.cpp's K-quant "mixes" (llama-quantize --type Q4_K_M / Q5_K_M / Q6_K without
// --imatrix), as llama_tensor_get_type in src/llama-quant.cpp chooses them for dense (non-MoE) models of the
// architectures we export: llama, phi3, gemma2, qwen2, qwen3. Written from llama.cpp's src/llama-quant.cpp (commit
// 007dbbf) and checked byte for byte against the llama.cpp that llama-cpp-python 0.3.36 bundles (llama_build_info()
// "b1-0c1e570") by tests/interop/check_kquants.py:
//
//   output.weight (token_embd.weight when the model has no output.weight: tied embeddings)
//       Q6_K; Q8_0 when its row length is not a multiple of 256
//   attn_v.weight / attn_qkv.weight of layer i, ffn_down.weight of layer i (Q4_K_M, Q5_K_M)
//       Q6_K when use_more_bits(i, n_layer): i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2; else the base type
//   every other 2-D weight          the base type (Q4_K, Q5_K or Q6_K)
//   1-D tensors (norms, biases)     not quantized: they keep their type in the F16 file (F32)
//
// A type whose block does not divide the row length falls back: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and to
// F16 when even the 32-weight fallback does not divide it. (In llama.cpp the layer index of attn_v / ffn_down is a
// counter over tensors sorted by layer, which equals the layer number for one such tensor per layer.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf/ggml_quants.h"

namespace qlora::gguf {

enum class KQuantMix { kQ4_K_M, kQ5_K_M, kQ6_K };

// What of the whole model the mix depends on.
struct KQuantModel {
  int64_t n_layer = 0;     // block_count
  bool has_output = true;  // false: tied embeddings, token_embd takes output.weight's type
};

// Whether llama.cpp's use_more_bits picks layer i of n for the higher-precision type.
bool kquant_use_more_bits(int64_t i_layer, int64_t n_layer);

// The ggml type of tensor `gguf_name` (torch shape, last dim = row length) in the mix.
GgmlType kquant_tensor_type(KQuantMix mix, const std::string& gguf_name, const std::vector<int64_t>& shape,
                            const KQuantModel& model);

}  // namespace qlora::gguf
