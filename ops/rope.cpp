#include "ops/rope.h"

#include <cmath>

#include "common/error.h"
#include "ops/fused_ops.h"

namespace qlora::ops {

torch::Tensor rope_inv_freq(const io::LlamaConfig& config) {
  const int64_t d = config.head_dim;
  TORCH_CHECK(d > 0 && d % 2 == 0, "rope: head_dim must be even, got ", d);
  // Same op order as HF: 1 / base ** (arange(0, d, 2).float() / d), in fp32.
  torch::Tensor exponent = torch::arange(0, d, 2, torch::kInt64).to(torch::kFloat32) / static_cast<float>(d);
  torch::Tensor inv_freq = 1.0 / torch::pow(static_cast<double>(config.rope_theta), exponent);
  inv_freq = inv_freq.to(torch::kFloat32);
  const io::RopeScaling& rs = config.rope_scaling;
  if (rs.type.empty() || rs.type == "default") return inv_freq;
  if (rs.type == "linear") return inv_freq / rs.factor;
  if (rs.type == "llama3") {
    const double old_ctx = static_cast<double>(rs.original_max_position_embeddings);
    const double low_wavelen = old_ctx / rs.low_freq_factor;
    const double high_wavelen = old_ctx / rs.high_freq_factor;
    torch::Tensor wavelen = 2.0 * M_PI / inv_freq;
    torch::Tensor scaled = torch::where(wavelen > low_wavelen, inv_freq / rs.factor, inv_freq);
    torch::Tensor smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
    torch::Tensor smoothed = (1.0 - smooth) * scaled / rs.factor + smooth * scaled;
    torch::Tensor is_medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    return torch::where(is_medium, smoothed, scaled).to(torch::kFloat32);
  }
  throw Error("rope_scaling type '" + rs.type + "' is not supported (supported: linear, llama3)");
}

std::pair<torch::Tensor, torch::Tensor> rope_cos_sin(const torch::Tensor& inv_freq, const torch::Tensor& position_ids,
                                                     torch::ScalarType dtype) {
  torch::Tensor pos = position_ids.to(inv_freq.device(), torch::kFloat32);  // (B, T)
  torch::Tensor freqs = pos.unsqueeze(-1) * inv_freq.view({1, 1, -1});      // (B, T, d/2)
  torch::Tensor emb = torch::cat({freqs, freqs}, -1);                      // (B, T, d)
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  // x * cos + rotate_half(x) * sin, cos/sin broadcast over heads (one fused pass on CPU).
  return ops::rotary_embedding(x, cos, sin);
}

}  // namespace qlora::ops
