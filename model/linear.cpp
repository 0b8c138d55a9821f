#include "model/linear.h"

#include <c10/core/InferenceMode.h>

#include "ops/dense_gemv.h"

namespace qlora::model {

std::shared_ptr<FrozenLinearImpl> FrozenLinearImpl::quantized(quant::QuantizedTensor w, torch::Tensor bias) {
  TORCH_CHECK(w.shape.size() == 2, "FrozenLinear: quantized weight must be 2-D, got ", w.shape.size(), " dims");
  auto m = std::make_shared<FrozenLinearImpl>();
  // The parts are registered as buffers so Module::to() moves them (set_data keeps qweight_'s handles valid).
  m->register_buffer("weight_packed", w.packed);
  m->register_buffer("weight_code", w.code);
  m->register_buffer("weight_absmax", w.absmax);
  if (w.double_quant) {
    m->register_buffer("weight_absmax2", w.absmax2);
    m->register_buffer("weight_nested_code", w.nested_code);
  }
  m->qweight_ = std::move(w);
  if (bias.defined()) m->bias_ = m->register_buffer("bias", bias.detach());
  return m;
}

std::shared_ptr<FrozenLinearImpl> FrozenLinearImpl::dense(torch::Tensor w, torch::Tensor bias) {
  TORCH_CHECK(w.dim() == 2, "FrozenLinear: dense weight must be 2-D, got ", w.sizes());
  auto m = std::make_shared<FrozenLinearImpl>();
  m->weight_ = m->register_buffer("weight", w.detach().set_requires_grad(false));
  if (bias.defined()) m->bias_ = m->register_buffer("bias", bias.detach());
  return m;
}

// x: (..., in) -> (..., out), in x's dtype.
torch::Tensor FrozenLinearImpl::forward(const torch::Tensor& x) {
  if (qweight_) {
    TORCH_CHECK(qweight_->packed.defined(),
                "FrozenLinear: the 4-bit weight is not resident (layer streaming evicted it; run the layer between "
                "the streamer's before/after hooks)");
    torch::Tensor b = bias_.defined() ? bias_.to(x.scalar_type()) : bias_;
    return quant::linear_4bit(x, *qweight_, b);
  }
  if (!bias_.defined() && weight_.scalar_type() == torch::kBFloat16 &&
      (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16) && x.numel() == x.size(-1) &&
      x.device().is_cpu() && weight_.device().is_cpu() && weight_.is_contiguous() && c10::InferenceMode::is_enabled()) {
    // One row through a bf16 weight (a decoded token's dense lm_head, or dense projections with quant none): fp32
    // activations (fp32 compute with LoadOptions::lm_head_16bit) read it at 2 bytes an element instead of converting it
    // to fp32 for one row, and bf16 ones take about half the time of LibTorch's one-row bf16 linear (bench/RESULTS.md).
    // Same fp32 products and sums, rounded once.
    torch::Tensor y = ops::gemv_bf16(weight_, x.reshape({x.size(-1)}).contiguous());
    auto shape = x.sizes().vec();
    shape.back() = weight_.size(0);
    return y.view(shape);
  }
  torch::Tensor w = weight_.scalar_type() == x.scalar_type() ? weight_ : weight_.to(x.scalar_type());
  torch::Tensor b = bias_.defined() ? bias_.to(x.scalar_type()) : bias_;
  return torch::nn::functional::linear(x, w, b);
}

int64_t FrozenLinearImpl::in_features() const {
  return qweight_ ? qweight_->shape.at(1) : weight_.size(1);
}
int64_t FrozenLinearImpl::out_features() const {
  return qweight_ ? qweight_->shape.at(0) : weight_.size(0);
}

torch::Tensor FrozenLinearImpl::dense_weight(torch::ScalarType dtype) const {
  if (qweight_) return quant::dequantize_4bit(*qweight_, dtype);
  return weight_.to(dtype);
}

const quant::QuantizedTensor& FrozenLinearImpl::quantized_weight() const {
  TORCH_CHECK(is_quantized(), "FrozenLinear::quantized_weight: this projection is dense");
  return *qweight_;
}

void FrozenLinearImpl::to_device(torch::Device device) {
  to(device);
}

std::shared_ptr<FrozenLinearImpl> FrozenLinearImpl::frozen_base() {
  return std::dynamic_pointer_cast<FrozenLinearImpl>(shared_from_this());
}

quant::QuantizedTensor FrozenLinearImpl::exchange_quantized_weight(quant::QuantizedTensor w) {
  TORCH_CHECK(is_quantized(), "FrozenLinear::exchange_quantized_weight: this projection is dense");
  TORCH_CHECK(w.shape == qweight_->shape, "FrozenLinear::exchange_quantized_weight: shape mismatch");
  std::swap(w, *qweight_);
  return w;
}

}  // namespace qlora::model
