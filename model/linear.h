// LinearLayer: the interface of every projection in the decoder (q/k/v/o, gate/up/down, optionally lm_head).
// model/ provides the frozen base (FrozenLinear: 4-bit or dense); lora/ wraps a base in a LoraLinear that
// implements the same interface, and swaps it in with LlamaModel::replace_linear — so model/ never depends
// on lora/.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>

#include "quant/linear_4bit.h"

namespace qlora::model {

class FrozenLinearImpl;

class LinearLayerImpl : public torch::nn::Module {
 public:
  // x: (..., in) -> (..., out), in x's dtype.
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  // The effective dense weight (out, in) in `dtype` (dequantized for 4-bit; base + delta for LoRA).
  virtual torch::Tensor dense_weight(torch::ScalarType dtype) const = 0;
  // The frozen base projection underneath (itself for a FrozenLinear; a wrapper's base); null if none.
  virtual std::shared_ptr<FrozenLinearImpl> frozen_base() { return nullptr; }
};
using LinearLayerPtr = std::shared_ptr<LinearLayerImpl>;

// A frozen base projection: either a 4-bit QuantizedTensor (through quant::linear_4bit) or a dense
// weight held in the compute dtype with requires_grad = false (quant type `none`).
class FrozenLinearImpl : public LinearLayerImpl {
 public:
  static std::shared_ptr<FrozenLinearImpl> quantized(quant::QuantizedTensor w, torch::Tensor bias = {});
  static std::shared_ptr<FrozenLinearImpl> dense(torch::Tensor w, torch::Tensor bias = {});

  torch::Tensor forward(const torch::Tensor& x) override;
  int64_t in_features() const override;
  int64_t out_features() const override;
  torch::Tensor dense_weight(torch::ScalarType dtype) const override;

  std::shared_ptr<FrozenLinearImpl> frozen_base() override;

  bool is_quantized() const { return qweight_.has_value(); }
  const quant::QuantizedTensor& quantized_weight() const;            // TORCH_CHECK(is_quantized())
  const torch::Tensor& dense_weight_ref() const { return weight_; }  // undefined when quantized
  const torch::Tensor& bias() const { return bias_; }
  void to_device(torch::Device device);
  // Layer streaming (model/layer_streaming.h): the 4-bit weight forward computes with, swapped for another of the
  // same shape (a device copy, or one without data meaning "not resident": forward then fails). The registered
  // buffers keep the original (host) parts. Returns the weight it replaces.
  quant::QuantizedTensor exchange_quantized_weight(quant::QuantizedTensor w);

 private:
  std::optional<quant::QuantizedTensor> qweight_;
  torch::Tensor weight_;  // dense frozen weight (buffer) when not quantized
  torch::Tensor bias_;
};

}  // namespace qlora::model
