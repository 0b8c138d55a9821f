// Rotary position embeddings, HF transformers convention ("half-split" / NeoX, rotate_half), with the
// `linear` and `llama3` rope_scaling variants (modeling_rope_utils.py).
#pragma once

#include <torch/torch.h>

#include <utility>

#include "io/hf_config.h"

namespace qlora::ops {

// inv_freq[i] = 1 / theta^(2i/d) for i < d/2, then scaled per config.rope_scaling:
//   linear: inv_freq / factor;  llama3: wavelen = 2π/inv_freq, > old_ctx/low -> /factor, < old_ctx/high -> kept,
//   else smooth blend. fp32, CPU, (d/2).
torch::Tensor rope_inv_freq(const io::LlamaConfig& config);

// position_ids: (B, T) int64 -> {cos, sin} each (B, T, d) in `dtype`, computed in fp32 on inv_freq's device
// (emb = cat(freqs, freqs)).
std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(const torch::Tensor& inv_freq, const torch::Tensor& position_ids,
                                                     torch::ScalarType dtype);

// x: (B, heads, T, d), cos/sin: (B, T, d) -> x*cos + rotate_half(x)*sin, rotate_half(x) = cat(-x2, x1).
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

}  // namespace qlora::ops
