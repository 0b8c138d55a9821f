// Attention pieces of the Llama decoder: the boolean attention mask (causal x padding x packing segments)
// and grouped-query scaled-dot-product attention with the softmax in fp32.
#pragma once

#include <torch/torch.h>

namespace qlora::model {

// Builds the (B, 1, T, past + T) boolean mask, true = may attend:
//   causal on sequence index (query i sits at past + i), keys masked by attention_mask (B, past + T) or
//   (B, T) when past == 0, and block diagonal by segment_ids (B, T) (packing; only without a cache).
// A query always sees itself, so padding rows never become all-masked (no NaN).
// Returns an undefined tensor when the mask is purely causal with past == 0 and no padding (fast path).
torch::Tensor build_attention_mask(int64_t batch, int64_t seq, int64_t past, const torch::Tensor& attention_mask,
                                   const torch::Tensor& segment_ids, torch::Device device);

// q: (B, nH, T, d), k/v: (B, nKV, S, d), mask: (B, 1, T, S) bool or undefined (= causal with S == T)
// -> (B, nH, T, d) in q's dtype. Query head h uses kv head h / (nH / nKV). Scores scaled by d^-0.5,
// softmax in fp32.
torch::Tensor grouped_query_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                      const torch::Tensor& mask);

// (B, nKV, S, d) -> (B, nKV * n_rep, S, d) (HF repeat_kv).
torch::Tensor repeat_kv(const torch::Tensor& x, int64_t n_rep);

}  // namespace qlora::model
