#include "lora/lora_linear.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "ops/fused_ops.h"

namespace qlora::lora {

double lora_scale(int64_t r, double alpha, bool rslora) {
  TORCH_CHECK(r > 0, "LoRA rank must be positive, got ", r);
  return rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

LoraLinearImpl::LoraLinearImpl(model::LinearLayerPtr base, const LoraLinearOptions& options, uint64_t seed,
                               torch::Device device)
    : base_(std::move(base)), options_(options), scale_(lora_scale(options.r, options.alpha, options.rslora)) {
  TORCH_CHECK(base_ != nullptr, "LoraLinear needs a base layer");
  TORCH_CHECK(options_.dropout >= 0.0 && options_.dropout < 1.0, "LoRA dropout must be in [0, 1), got ",
              options_.dropout);
  register_module("base_layer", base_);
  TORCH_CHECK(
      options_.dtype == torch::kFloat32 || options_.dtype == torch::kBFloat16 || options_.dtype == torch::kFloat16,
      "LoRA weights must be stored in fp32, bf16 or fp16, got ", options_.dtype);
  const auto opts = torch::TensorOptions().dtype(options_.dtype).device(device);
  lora_A_ = register_parameter("lora_A", torch::empty({options_.r, in_features()}, opts));
  lora_B_ = register_parameter("lora_B", torch::zeros({out_features(), options_.r}, opts));
  reset_parameters(seed);
}

void LoraLinearImpl::reset_parameters(uint64_t seed) {
  torch::NoGradGuard no_grad;
  // kaiming_uniform_(a=sqrt(5)) on (r, in): gain = sqrt(2 / (1 + 5)), bound = sqrt(3) * gain / sqrt(in) = 1/sqrt(in).
  // Drawn on the CPU so the values do not depend on the device.
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features()));
  auto gen = at::detail::createCPUGenerator(seed);
  torch::Tensor a = torch::empty({options_.r, in_features()}, torch::kFloat32);
  a.uniform_(-bound, bound, gen);
  lora_A_.copy_(a);  // rounded to the storage dtype
  lora_B_.zero_();
}

void LoraLinearImpl::set_weights(const torch::Tensor& a, const torch::Tensor& b) {
  TORCH_CHECK(a.dim() == 2 && a.size(0) == options_.r && a.size(1) == in_features(), "lora_A must be (", options_.r,
              ", ", in_features(), "), got ", a.sizes());
  TORCH_CHECK(b.dim() == 2 && b.size(0) == out_features() && b.size(1) == options_.r, "lora_B must be (",
              out_features(), ", ", options_.r, "), got ", b.sizes());
  torch::NoGradGuard no_grad;
  lora_A_.copy_(a);
  lora_B_.copy_(b);
}

// x: (..., in) -> (..., out)
torch::Tensor LoraLinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = base_->forward(x);
  torch::Tensor h = x;
  if (options_.dropout > 0.0 && is_training()) h = ops::dropout(x, options_.dropout, /*train=*/true);
  const auto dtype = x.scalar_type();
  // (..., in) · Aᵀ -> (..., r); then y + low · (scale B)ᵀ as one addmm: the scale goes on the small (out, r) B
  // instead of the (tokens, out) product, and the sum is the matmul's accumulate (no separate mul and add passes).
  // The casts are differentiable: gradients flow to A and B in their storage dtype.
  torch::Tensor low = torch::linear(h, lora_A_.to(dtype));
  const torch::Tensor b_scaled = (lora_B_.to(torch::kFloat32) * scale_).to(dtype);
  const int64_t out = y.size(-1);
  return torch::addmm(y.reshape({-1, out}), low.reshape({-1, options_.r}), b_scaled.t()).view(y.sizes());
}

torch::Tensor LoraLinearImpl::delta_weight() const {
  torch::NoGradGuard no_grad;
  // (out, r) · (r, in) -> (out, in), in fp32 whatever the storage dtype.
  return torch::matmul(lora_B_.to(torch::kFloat32), lora_A_.to(torch::kFloat32)) * scale_;
}

torch::Tensor LoraLinearImpl::dense_weight(torch::ScalarType dtype) const {
  torch::NoGradGuard no_grad;
  torch::Tensor w = base_->dense_weight(torch::kFloat32).to(lora_A_.device());
  return (w + delta_weight()).to(dtype);
}

}  // namespace qlora::lora
