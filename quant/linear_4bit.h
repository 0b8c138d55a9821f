// The frozen 4-bit linear layer: y = x · dequant(W)ᵀ (+ b). Forward and backward dequantize W on the fly;
// only the QuantizedTensor is saved for backward; W gets no gradient.
#pragma once

#include <torch/torch.h>

#include "quant/quantized_tensor.h"

namespace qlora::quant {

// The autograd function behind linear_4bit (public so tests can inspect what it saves). forward dequantizes
// W into x's dtype, runs torch::linear and saves only the QuantizedTensor's parts (in ctx->saved_data);
// backward dequantizes again: grad_x = grad_y · W, grad_bias = sum of grad_y over leading dims, no grad for W.
struct LinearNF4Function : public torch::autograd::Function<LinearNF4Function> {
  // x: (..., in), bias: (out) or nullopt -> (..., out).
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const c10::optional<torch::Tensor>& bias, const QuantizedTensor& w);
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out);
};

// x: (..., in) -> (..., out), computed in x's dtype. Differentiable w.r.t. x (and bias if it requires grad).
// A single bf16 row (batch-1 decoding) on a CUDA device, or on the CPU under c10::InferenceMode, goes through the
// 4-bit GEMV kernel instead of dequant + matmul (gemv_4bit below); everything else dequantizes into a reused
// per-thread, per-device buffer.
torch::Tensor linear_4bit(const torch::Tensor& x, const QuantizedTensor& w, const torch::Tensor& bias = {});

// y = W x for one bf16 row x: (in) or (1, in) -> (out) or (1, out), W read as 4-bit codes (quant/gemv_4bit.h; its
// summation order is specified, so CPU and CUDA give the same bits). CPU: gemv_4bit_cpu (the SIMD kernel of the
// active ISA, multithreaded); CUDA: the kernel (CUDA builds). Needs in % 32 == 0, a contiguous bf16 x on W's device;
// no autograd.
torch::Tensor gemv_4bit(const QuantizedTensor& w, const torch::Tensor& x);
// The same into y, a contiguous bf16 tensor of w.shape[0] elements on W's device (batch-1 decoding's preallocated
// buffers: no allocation, no dispatch).
void gemv_4bit_out(const QuantizedTensor& w, const torch::Tensor& x, torch::Tensor& y);
// Whether linear_4bit takes the GEMV path for this x and w: one contiguous bf16 row, in % 32 == 0, and either a CUDA
// device (16-byte aligned data) or the CPU under c10::InferenceMode (no autograd: training never takes it).
bool gemv_4bit_applies(const QuantizedTensor& w, const torch::Tensor& x);

// Module holding a frozen 4-bit weight (and optional bias). Built by quantizing a dense weight or from
// stored quantized parts (a bnb-4bit checkpoint). The 4-bit parts are registered as buffers ("weight",
// "weight_absmax", "weight_quant_map", and with double quant "weight_nested_absmax",
// "weight_nested_quant_map"; "bias" too), so module.to() and named_buffers() see them; there are no
// parameters (the base layer is frozen; a bias that should train must be set requires_grad by the caller).
class Linear4bitImpl : public torch::nn::Module {
 public:
  explicit Linear4bitImpl(QuantizedTensor weight, torch::Tensor bias = {});
  static std::shared_ptr<Linear4bitImpl> from_dense(const torch::Tensor& weight, QuantType type = QuantType::kNF4,
                                                    int64_t blocksize = kDefaultBlocksize, bool double_quant = true,
                                                    const torch::Tensor& bias = {});
  torch::Tensor forward(const torch::Tensor& x);  // x: (..., in) -> (..., out)
  const QuantizedTensor& weight() const { return weight_; }
  int64_t in_features() const { return weight_.shape.at(1); }
  int64_t out_features() const { return weight_.shape.at(0); }
  const torch::Tensor& bias() const { return bias_; }
  void to_device(torch::Device device);

  // Module::to would cast every buffer (uint8 codes included) to a new dtype: here a dtype change only
  // applies to the bias; the 4-bit parts keep their types and only change device.
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, bool non_blocking = false) override;

 private:
  QuantizedTensor weight_;
  torch::Tensor bias_;
};
TORCH_MODULE(Linear4bit);

}  // namespace qlora::quant
