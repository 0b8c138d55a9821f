#include "model/attention.h"

#include <torch/version.h>

#include <cmath>

#include "quant/fused_ops.h"

namespace qlora::model {

torch::Tensor build_attention_mask(int64_t batch, int64_t seq, int64_t past, const torch::Tensor& attention_mask,
                                   const torch::Tensor& segment_ids, torch::Device device) {
  const int64_t total = past + seq;
  if (!attention_mask.defined() && !segment_ids.defined() && past == 0) return {};
  auto opts = torch::TensorOptions().device(device).dtype(torch::kInt64);
  torch::Tensor q_idx = torch::arange(past, total, opts).view({seq, 1});
  torch::Tensor k_idx = torch::arange(0, total, opts).view({1, total});
  torch::Tensor allowed = (k_idx <= q_idx).view({1, 1, seq, total}).expand({batch, 1, seq, total});
  if (attention_mask.defined()) {
    TORCH_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == batch,
                "attention_mask must be (B, T), got ", attention_mask.sizes());
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

torch::Tensor repeat_kv(const torch::Tensor& x, int64_t n_rep) {
  if (n_rep == 1) return x;
  const int64_t b = x.size(0), kv = x.size(1), s = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, kv, n_rep, s, d}).reshape({b, kv * n_rep, s, d});
}

torch::Tensor grouped_query_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                      const torch::Tensor& mask) {
  const int64_t n_heads = q.size(1);
  const int64_t n_kv = k.size(1);
  TORCH_CHECK(n_heads % n_kv == 0, "attention: heads ", n_heads, " not a multiple of kv heads ", n_kv);
  torch::Tensor kr = repeat_kv(k, n_heads / n_kv);
  torch::Tensor vr = repeat_kv(v, n_heads / n_kv);
  const int64_t t = q.size(2), s = kr.size(2);
  torch::Tensor m = mask;
  if (!m.defined()) {
    TORCH_CHECK(s == t, "attention: an undefined mask means causal with no cache");
  }
#if TORCH_VERSION_MAJOR >= 2
  // Fused kernel where LibTorch has one; the math backend upcasts the softmax like the eager path.
  if (!m.defined()) return at::scaled_dot_product_attention(q, kr, vr, {}, 0.0, /*is_causal=*/true);
  return at::scaled_dot_product_attention(q, kr, vr, m, 0.0, /*is_causal=*/false);
#else
  if (!m.defined()) {
    auto opts = torch::TensorOptions().device(q.device()).dtype(torch::kBool);
    m = torch::ones({t, s}, opts).tril().view({1, 1, t, s});
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  torch::Tensor scores = torch::matmul(q, kr.transpose(2, 3));  // (B, nH, T, S) in q's dtype
  // Scale, mask and softmax in fp32 in one pass; probs come back in q's dtype.
  torch::Tensor probs = quant::scaled_masked_softmax(scores, m, scale);
  return torch::matmul(probs, vr);  // (B, nH, T, d)
#endif
}

}  // namespace qlora::model
