// The frozen 4-bit linear layer: y = x · dequant(W)ᵀ (+ b). Forward and backward dequantize W on the fly;
// only the QuantizedTensor is saved for backward; W gets no gradient.
#pragma once

#include <torch/torch.h>

#include "quant/quantized_tensor.h"

namespace qlora::quant {

// x: (..., in) -> (..., out), computed in x's dtype. Differentiable w.r.t. x (and bias if it requires grad).
torch::Tensor linear_4bit(const torch::Tensor& x, const QuantizedTensor& w, const torch::Tensor& bias = {});

// Module holding a frozen 4-bit weight (and optional bias). Built by quantizing a dense weight or from
// stored quantized parts (a bnb-4bit checkpoint).
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

 private:
  QuantizedTensor weight_;
  torch::Tensor bias_;
};
TORCH_MODULE(Linear4bit);

}  // namespace qlora::quant
