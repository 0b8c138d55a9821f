// RoPE: frequencies and cos/sin tables (fp32, as HF computes them) and apply_rope, the autograd op over the fused
// CPU kernel detail::rope_cpu (ops/fused_kernels.cpp) with its LibTorch-ops fallback.
#include "ops/rope.h"

#include <torch/csrc/autograd/custom_function.h>

#include <cmath>

#include "common/error.h"
#include "ops/fused_kernels.h"

namespace qlora::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// x or, when its last dimension is not unit-stride, a contiguous copy (the kernel reads rows through strides).
torch::Tensor unit_last_stride(const torch::Tensor& x) {
  return x.size(3) > 0 && x.stride(3) != 1 ? x.contiguous() : x;
}

// x (B, H, T, d) -> contiguous rotated x. Saves cos and sin (shared by all layers).
struct RopeFunction : torch::autograd::Function<RopeFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin) {
    torch::Tensor out = torch::empty(x.sizes(), x.options().memory_format(torch::MemoryFormat::Contiguous));
    detail::rope_cpu(unit_last_stride(x), cos, sin, /*backward=*/false, out, active_isa());
    ctx->save_for_backward({cos, sin});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const variable_list saved = ctx->get_saved_variables();
    torch::Tensor grad;
    if (grad_out[0].defined()) {
      const torch::Tensor g = grad_out[0].to(saved[0].scalar_type());
      grad = torch::empty(g.sizes(), g.options().memory_format(torch::MemoryFormat::Contiguous));
      detail::rope_cpu(unit_last_stride(g), saved[0], saved[1], /*backward=*/true, grad, active_isa());
    }
    return {grad, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

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
  torch::Tensor emb = torch::cat({freqs, freqs}, -1);                       // (B, T, d)
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

namespace detail {

torch::Tensor apply_rope_ops(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  const torch::Tensor rotated = torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);  // (B, 1, T, d) broadcast over heads
}

}  // namespace detail

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  TORCH_CHECK(x.dim() == 4 && cos.dim() == 3 && cos.sizes() == sin.sizes() && cos.size(0) == x.size(0) &&
                  cos.size(1) == x.size(2) && cos.size(2) == x.size(3),
              "apply_rope: x must be (B, H, T, d) and cos/sin (B, T, d), got ", x.sizes(), " and ", cos.sizes());
  const bool fused = x.device().is_cpu() && detail::fused_dtype_supported(x.scalar_type()) && cos.device().is_cpu() &&
                     sin.device().is_cpu() && cos.scalar_type() == x.scalar_type() &&
                     sin.scalar_type() == x.scalar_type() && !cos.requires_grad() && !sin.requires_grad() &&
                     x.size(3) % 2 == 0;
  if (!fused) return detail::apply_rope_ops(x, cos, sin);
  return RopeFunction::apply(x, cos.contiguous(), sin.contiguous());
}

}  // namespace qlora::ops
