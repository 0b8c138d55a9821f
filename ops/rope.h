// Rotary position embeddings (RoPE), HF transformers convention ("half-split" / NeoX, rotate_half), with the
// `linear` and `llama3` rope_scaling variants (modeling_rope_utils.py): the frequencies, the cos/sin tables and
// apply_rope, an autograd op whose CPU path is the fused kernel detail::rope_cpu (ops/fused_kernels.h) and whose
// other devices and dtypes take detail::apply_rope_ops.
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

// x: (B, heads, T, d), cos/sin: (B, T, d) -> x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1),
// cos/sin broadcast over heads: contiguous (B, heads, T, d) in x's dtype. CPU fp32/bf16/fp16 with cos/sin of x's
// dtype: one fused pass in fp32, rounded once, differentiable in x (the backward keeps only cos and sin). Otherwise
// (other devices or dtypes, cos/sin that require grad) the LibTorch ops below.
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

namespace detail {
// apply_rope with LibTorch ops (the non-CPU path; tests run it on CPU too). Rounds every intermediate to x's dtype.
torch::Tensor apply_rope_ops(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
}  // namespace detail

}  // namespace qlora::ops
