#include "ops/attention.h"

#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>

#include "common/cpu_isa.h"
#include "ops/flash_attention.h"
#include "ops/fused_kernels.h"

namespace qlora::ops {

torch::Tensor build_attention_mask(int64_t batch, int64_t seq, int64_t past, const torch::Tensor& attention_mask,
                                   const torch::Tensor& segment_ids, torch::Device device, int64_t sliding_window) {
  const int64_t total = past + seq;
  const bool window_matters = sliding_window > 0 && total > sliding_window;
  if (!attention_mask.defined() && !segment_ids.defined() && past == 0 && !window_matters) return {};
  auto opts = torch::TensorOptions().device(device).dtype(torch::kInt64);
  torch::Tensor q_idx = torch::arange(past, total, opts).view({seq, 1});
  torch::Tensor k_idx = torch::arange(0, total, opts).view({1, total});
  torch::Tensor causal = k_idx <= q_idx;
  if (window_matters) causal = causal.logical_and(k_idx > q_idx - sliding_window);
  torch::Tensor allowed = causal.view({1, 1, seq, total}).expand({batch, 1, seq, total});
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

namespace {

// Soft-capped attention as transformers' eager_attention_forward computes it (Gemma 2).
torch::Tensor softcapped_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   const torch::Tensor& mask, double scale, double softcap) {
  const int64_t b = q.size(0), n_heads = q.size(1), t = q.size(2), d = q.size(3);
  const int64_t n_kv = k.size(1), s = k.size(2), group = n_heads / n_kv;
  // (B, nKV, g, T, d) x (B, nKV, 1, d, S): query head h reads kv head h / g, as repeat_kv does.
  torch::Tensor qg = q.reshape({b, n_kv, group, t, d});
  torch::Tensor scores = torch::matmul(qg, k.unsqueeze(2).transpose(-1, -2)) * scale;
  scores = torch::tanh(scores / softcap) * softcap;
  torch::Tensor allowed = mask;
  if (!allowed.defined()) {
    auto opts = torch::TensorOptions().device(q.device()).dtype(torch::kInt64);
    allowed = torch::arange(s, opts).view({1, s}) <= torch::arange(s - t, s, opts).view({t, 1});
  }
  // Masked scores get the dtype's lowest value, as transformers adds it (a query always sees itself).
  const double lowest = q.scalar_type() == torch::kFloat32   ? static_cast<double>(std::numeric_limits<float>::lowest())
                        : q.scalar_type() == torch::kFloat16 ? -65504.0
                                                             : -3.3895313892515355e38;
  scores = scores.masked_fill(allowed.dim() == 4 ? allowed.unsqueeze(2).logical_not() : allowed.logical_not(), lowest);
  torch::Tensor p = torch::softmax(scores, -1, torch::kFloat32).to(q.scalar_type());
  return torch::matmul(p, v.unsqueeze(2)).reshape({b, n_heads, t, d});
}

// ops/flash_attention.h's blocked kernel as an autograd function. Saves q, k, v, the output, the fp32 logsumexp and
// the mask's intervals.
struct FlashAttentionFunction : torch::autograd::Function<FlashAttentionFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& intervals, double scale) {
    const torch::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
    torch::Tensor out = torch::empty_like(qc);
    torch::Tensor lse = torch::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(torch::kFloat32));
    detail::flash_attention_forward_cpu(qc, kc, vc, intervals, scale, out, lse, active_isa());
    ctx->save_for_backward({qc, kc, vc, out, lse, intervals});
    ctx->saved_data["scale"] = scale;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const torch::autograd::variable_list sv = ctx->get_saved_variables();
    torch::Tensor dq, dk, dv;
    if (grad_out[0].defined()) {
      const torch::Tensor g = grad_out[0].to(torch::kBFloat16).contiguous();
      dq = torch::empty_like(sv[0]);
      dk = torch::empty_like(sv[1]);
      dv = torch::empty_like(sv[2]);
      detail::flash_attention_backward_cpu(sv[0], sv[1], sv[2], sv[5], sv[3], sv[4], g,
                                           ctx->saved_data["scale"].toDouble(), dq, dk, dv, active_isa());
    }
    return {dq, dk, dv, torch::Tensor(), torch::Tensor()};
  }
};

// Whether the blocked kernel takes these arguments (the mask's intervals are checked after).
bool flash_attention_applies(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& mask) {
  if (!q.device().is_cpu() || q.scalar_type() != torch::kBFloat16 || k.scalar_type() != torch::kBFloat16 ||
      v.scalar_type() != torch::kBFloat16 || q.size(2) < 2 || q.size(3) % 2 != 0 || v.size(3) != q.size(3)) {
    return false;
  }
  if (!blocked_cpu_attention_runs()) return false;
  if (!mask.defined()) return true;  // causal, S == T (checked by the caller)
  return mask.scalar_type() == torch::kBool && mask.dim() == 4 && mask.size(1) == 1 && mask.size(2) == q.size(2) &&
         mask.size(3) == k.size(2) && (mask.size(0) == 1 || mask.size(0) == q.size(0));
}

}  // namespace

bool blocked_cpu_attention_runs() {
  static const bool sdpa_asked = [] {
    const char* env = std::getenv("QLORA_CPU_ATTENTION");
    const std::string want = env == nullptr ? "" : env;
    if (!want.empty() && want != "blocked" && want != "sdpa") {
      spdlog::warn("QLORA_CPU_ATTENTION={} is unknown (blocked|sdpa); using blocked", want);
    }
    return want == "sdpa";
  }();
  return !sdpa_asked && active_isa() == Isa::kAvx512 && detail::flash_attention_available();
}

bool decode_attention_applies(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& mask,
                              double softcap) {
  if (!q.device().is_cpu() || q.dim() != 4 || q.size(2) != 1 || softcap > 0 || torch::GradMode::is_enabled()) {
    return false;
  }
  if (!detail::fused_dtype_supported(q.scalar_type()) || k.scalar_type() != q.scalar_type() || k.size(2) == 0) {
    return false;
  }
  if (!mask.defined()) return k.size(2) == 1;  // causal without a cache: the query sees itself only
  return mask.scalar_type() == torch::kBool && mask.dim() == 4 && mask.size(1) == 1 && mask.size(2) == 1 &&
         mask.size(3) == k.size(2) && (mask.size(0) == q.size(0) || mask.size(0) == 1);
}

torch::Tensor grouped_query_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                      const torch::Tensor& mask, double scale, double softcap) {
  const int64_t n_heads = q.size(1), n_kv = k.size(1);
  TORCH_CHECK(n_heads % n_kv == 0, "attention: heads ", n_heads, " not a multiple of kv heads ", n_kv);
  TORCH_CHECK(mask.defined() || k.size(2) == q.size(2), "attention: an undefined mask means causal with no cache");
  const std::optional<double> sdpa_scale = scale > 0 ? std::optional<double>(scale) : std::nullopt;
  const double score_scale = scale > 0 ? scale : 1.0 / std::sqrt(static_cast<double>(q.size(3)));  // SDPA's default
  if (decode_attention_applies(q, k, mask, softcap)) {
    torch::Tensor allowed;
    if (mask.defined()) allowed = mask.select(2, 0).select(1, 0).expand({q.size(0), k.size(2)}).contiguous();
    torch::Tensor out = torch::empty(q.sizes(), q.options());
    detail::decode_attention_cpu(q, k, v, allowed, score_scale, out, active_isa());
    return out;
  }
  if (softcap > 0) return softcapped_attention(q, k, v, mask, score_scale, softcap);
  if (flash_attention_applies(q, k, v, mask)) {
    const torch::Tensor intervals = detail::mask_intervals(mask, q.size(2), k.size(2));
    if (intervals.defined()) return FlashAttentionFunction::apply(q, k, v, intervals, score_scale);
  }
  if (!mask.defined()) {
    return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true,
                                            sdpa_scale, /*enable_gqa=*/true);
  }
  return at::scaled_dot_product_attention(q, k, v, mask, /*dropout_p=*/0.0, /*is_causal=*/false, sdpa_scale,
                                          /*enable_gqa=*/true);
}

}  // namespace qlora::ops
