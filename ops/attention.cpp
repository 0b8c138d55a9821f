#include "ops/attention.h"

namespace qlora::ops {

torch::Tensor build_attention_mask(int64_t batch, int64_t seq, int64_t past, const torch::Tensor& attention_mask,
                                   const torch::Tensor& segment_ids, torch::Device device) {
  const int64_t total = past + seq;
  if (!attention_mask.defined() && !segment_ids.defined() && past == 0) return {};
  auto opts = torch::TensorOptions().device(device).dtype(torch::kInt64);
  torch::Tensor q_idx = torch::arange(past, total, opts).view({seq, 1});
  torch::Tensor k_idx = torch::arange(0, total, opts).view({1, total});
  torch::Tensor allowed = (k_idx <= q_idx).view({1, 1, seq, total}).expand({batch, 1, seq, total});
  if (attention_mask.defined()) {
    TORCH_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == batch, "attention_mask must be (B, T), got ",
                attention_mask.sizes());
    torch::Tensor keys = attention_mask.to(device).to(torch::kBool);
    if (keys.size(1) == seq && past > 0) {
      keys = torch::cat({torch::ones({batch, past}, keys.options()), keys}, 1);
    }
    TORCH_CHECK(keys.size(1) == total, "attention_mask length ", attention_mask.size(1), " does not match ", total,
                " keys (cache ", past, " + new ", seq, ")");
    allowed = allowed.logical_and(keys.view({batch, 1, 1, total}));
  }
  if (segment_ids.defined()) {
    TORCH_CHECK(past == 0, "segment_ids (packing) cannot be combined with a KV cache");
    TORCH_CHECK(segment_ids.dim() == 2 && segment_ids.size(0) == batch && segment_ids.size(1) == seq,
                "segment_ids must be (B, T) = (", batch, ", ", seq, "), got ", segment_ids.sizes());
    torch::Tensor seg = segment_ids.to(device).to(torch::kInt64);
    torch::Tensor same = seg.view({batch, 1, seq, 1}) == seg.view({batch, 1, 1, seq});
    allowed = allowed.logical_and(same);
  }
  torch::Tensor self = (k_idx == q_idx).view({1, 1, seq, total});
  return allowed.logical_or(self).contiguous();
}

torch::Tensor grouped_query_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                      const torch::Tensor& mask) {
  const int64_t n_heads = q.size(1), n_kv = k.size(1);
  TORCH_CHECK(n_heads % n_kv == 0, "attention: heads ", n_heads, " not a multiple of kv heads ", n_kv);
  if (!mask.defined()) {
    TORCH_CHECK(k.size(2) == q.size(2), "attention: an undefined mask means causal with no cache");
    return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true,
                                            /*scale=*/std::nullopt, /*enable_gqa=*/true);
  }
  return at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0, /*is_causal=*/false,
                                          /*scale=*/std::nullopt, /*enable_gqa=*/true);
}

}  // namespace qlora::ops
