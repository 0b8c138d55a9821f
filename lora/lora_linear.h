// LoraLinear: a trainable low-rank update on a frozen base projection (PEFT's lora.Linear / lora.bnb.Linear4bit):
//   y = base(x) + (dropout(x) · Aᵀ · Bᵀ) · scale,   scale = alpha / r   (rsLoRA: alpha / sqrt(r))
// A (r, in) and B (out, r) are Parameters named lora_A / lora_B, stored in `LoraLinearOptions::dtype`: fp32 masters
// by default, or bf16 (what the QLoRA paper's scripts do with --bf16, halving adapter memory). Forward casts them
// to x's dtype, so autograd accumulates gradients in the storage dtype. Dropout acts on the LoRA branch only, in
// train mode only.
// The base (a model::LinearLayer, usually a frozen 4-bit FrozenLinear) is registered as `base_layer` and never trained.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>

#include "model/linear.h"

namespace qlora::lora {

struct LoraLinearOptions {
  int64_t r = 16;
  double alpha = 32.0;
  double dropout = 0.0;
  bool rslora = false;
  torch::ScalarType dtype = torch::kFloat32;  // storage dtype of A and B (and of their gradients): fp32 | bf16 | fp16
};

// alpha / r, or alpha / sqrt(r) with rsLoRA (PEFT update_layer).
double lora_scale(int64_t r, double alpha, bool rslora);

class LoraLinearImpl : public model::LinearLayerImpl {
 public:
  // A gets PEFT's default init (kaiming_uniform a=sqrt(5): U(-1/sqrt(in), 1/sqrt(in))) drawn from a CPU generator
  // seeded with `seed`; B = 0 (so the wrapped layer starts equal to the base). Parameters live on `device`.
  LoraLinearImpl(model::LinearLayerPtr base, const LoraLinearOptions& options, uint64_t seed,
                 torch::Device device = torch::kCPU);

  // x: (..., in) -> (..., out) in x's dtype.
  torch::Tensor forward(const torch::Tensor& x) override;
  int64_t in_features() const override { return base_->in_features(); }
  int64_t out_features() const override { return base_->out_features(); }
  // base.dense_weight + scale · B · A, computed in fp32 and cast to `dtype`: (out, in).
  torch::Tensor dense_weight(torch::ScalarType dtype) const override;
  std::shared_ptr<model::FrozenLinearImpl> frozen_base() override { return base_->frozen_base(); }
  // scale · B · A in fp32: (out, in).
  torch::Tensor delta_weight() const;

  // Overwrites A and B (e.g. from an adapter file; rounded to the storage dtype). a: (r, in), b: (out, r).
  void set_weights(const torch::Tensor& a, const torch::Tensor& b);
  // Re-draws A from `seed` and zeroes B.
  void reset_parameters(uint64_t seed);

  const torch::Tensor& lora_A() const { return lora_A_; }  // (r, in), options().dtype
  const torch::Tensor& lora_B() const { return lora_B_; }  // (out, r), options().dtype
  const model::LinearLayerPtr& base() const { return base_; }
  const LoraLinearOptions& options() const { return options_; }
  int64_t rank() const { return options_.r; }
  double scale() const { return scale_; }

 private:
  model::LinearLayerPtr base_;
  LoraLinearOptions options_;
  double scale_;
  torch::Tensor lora_A_;
  torch::Tensor lora_B_;
};
TORCH_MODULE(LoraLinear);

}  // namespace qlora::lora
