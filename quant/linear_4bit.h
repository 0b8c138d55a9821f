// The frozen 4-bit linear layer: y = x · dequant(W)ᵀ (+ b). Forward and backward dequantize W on the fly;
// only the QuantizedTensor is saved for backward; W gets no gradient.
#pragma once

#include <torch/torch.h>

#include <initializer_list>
#include <utility>

#include "quant/gemv_4bit.h"
#include "quant/gemv_q8.h"
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

// The CPU kernel one-row projections take (batch-1 decoding), per thread:
//   kQ8     quant/gemv_q8.h: activations rounded to 8 bits per 32 elements, an exact integer dot product per 32
//           weights (llama.cpp's CPU arithmetic class; ~1% relative error, a tenth of NF4's own on Gaussian data);
//           bf16 or fp32 rows. The default: on an AVX2 CPU it runs ~2.5x faster than kExact.
//   kExact  quant/gemv_4bit.h: fp32 products of bf16 activations, the bits the CUDA kernel gives; bf16 rows only
//           (an fp32 row dequantizes + multiplies).
// CUDA devices always take the CUDA kernel (kExact's arithmetic).
enum class CpuGemv { kQ8, kExact };
CpuGemv cpu_gemv();
const char* cpu_gemv_name(CpuGemv g);
// Whether this thread's CpuGemv takes rows of dtype t (bf16; fp32 too for kQ8).
bool cpu_gemv_takes(torch::ScalarType t);
// Sets this thread's CpuGemv until it goes out of scope.
class CpuGemvScope {
 public:
  explicit CpuGemvScope(CpuGemv g);
  ~CpuGemvScope();
  CpuGemvScope(const CpuGemvScope&) = delete;
  CpuGemvScope& operator=(const CpuGemvScope&) = delete;

 private:
  CpuGemv previous_;
};

// x: (..., in) -> (..., out), computed in x's dtype. Differentiable w.r.t. x (and bias if it requires grad).
// A single row (batch-1 decoding; gemv_4bit_applies) on a CUDA device, or on the CPU under c10::InferenceMode, goes
// through a 4-bit GEMV kernel instead of dequant + matmul (gemv_4bit below); everything else dequantizes into a
// reused per-thread, per-device buffer.
torch::Tensor linear_4bit(const torch::Tensor& x, const QuantizedTensor& w, const torch::Tensor& bias = {});

// y = W x for one row x: (in) or (1, in) -> (out) or (1, out) in x's dtype, W read as 4-bit codes. CPU: this
// thread's cpu_gemv() kernel (multithreaded; kQ8 takes bf16 or fp32 x, kExact bf16); CUDA: the kernel of
// quant/gemv_4bit.h (CUDA builds; bf16, its summation order specified, so it gives gemv_4bit_ref's bits). Needs
// in % 32 == 0 and a contiguous x on W's device; no autograd.
torch::Tensor gemv_4bit(const QuantizedTensor& w, const torch::Tensor& x);
// The same into y, a contiguous tensor of x's dtype and w.shape[0] elements on W's device (batch-1 decoding's
// preallocated buffers: no allocation, no dispatch).
void gemv_4bit_out(const QuantizedTensor& w, const torch::Tensor& x, torch::Tensor& y);
// The same for several weights sharing x ({weight, y} pairs: q, k, v; gate, up): on the CPU with kQ8, x is quantized
// once and all their rows run in one parallel region; otherwise one gemv_4bit_out each. The bits of separate calls.
void gemv_4bit_out(std::initializer_list<std::pair<const QuantizedTensor*, torch::Tensor*>> outs,
                   const torch::Tensor& x);
// One-row CPU projections for a caller that runs its own parallel region (model/decode_layer.cpp): prepare() lays x
// out once for kernel `g` (per thread or shared; read-only afterwards), rows() computes rows [o0, o1) of y = W x for
// any W of that in_features on the calling thread. The bits of gemv_4bit_out under CpuGemvScope(g). cpu_gemv() is
// per thread: take it on the thread that owns the call, not inside the region. x (bf16, or fp32 for kQ8) must
// outlive the rows() calls; y has x's dtype.
class CpuGemvRows {
 public:
  void prepare(CpuGemv g, const void* x, torch::ScalarType dtype, int64_t in_features, Isa isa = active_isa());
  void rows(const QuantizedTensor& w, void* y, int64_t o0, int64_t o1) const;

 private:
  CpuGemv g_ = CpuGemv::kQ8;
  const void* x_ = nullptr;
  bool bf16_ = true;
  GemvQ8X q8_;
  Gemv4bitX exact_;
};

// Whether linear_4bit takes the GEMV path for this x and w: one contiguous row, in % 32 == 0, and either a CUDA
// device (bf16, 16-byte aligned data) or the CPU under c10::InferenceMode (no autograd: training never takes it)
// with a dtype this thread's CpuGemv takes (bf16; fp32 too for kQ8).
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
