// The frozen 4-bit linear layer (bitsandbytes MatMul4Bit semantics): W is dequantized on the fly in the
// forward and again in the backward; nothing but the 4-bit parts is kept for backward.
#include "quant/linear_4bit.h"

#include <c10/core/InferenceMode.h>
#include <torch/torch.h>

#include <vector>

#include "quant/dequant_kernels.h"
#include "quant/gemv_4bit.h"
#include "quant/gemv_q8.h"

#if defined(QLORA_WITH_CUDA)
#include <c10/cuda/CUDAStream.h>
#endif

namespace qlora::quant {
namespace {

using torch::autograd::AutogradContext;

// The QuantizedTensor travels in ctx->saved_data as its (small, 4-bit) parts and metadata.
void save_quantized(AutogradContext* ctx, const QuantizedTensor& w) {
  auto& d = ctx->saved_data;
  d["q_type"] = static_cast<int64_t>(w.type);
  d["q_blocksize"] = w.blocksize;
  d["q_shape"] = w.shape;
  d["q_dtype"] = static_cast<int64_t>(w.dtype);
  d["q_packed"] = w.packed;
  d["q_code"] = w.code;
  d["q_absmax"] = w.absmax;
  d["q_double_quant"] = w.double_quant;
  d["q_absmax2"] = w.absmax2;
  d["q_nested_code"] = w.nested_code;
  d["q_offset"] = static_cast<double>(w.offset);
}

QuantizedTensor load_quantized(AutogradContext* ctx) {
  auto& d = ctx->saved_data;
  QuantizedTensor w;
  w.type = static_cast<QuantType>(d["q_type"].toInt());
  w.blocksize = d["q_blocksize"].toInt();
  w.shape = d["q_shape"].toIntVector();
  w.dtype = static_cast<torch::ScalarType>(d["q_dtype"].toInt());
  w.packed = d["q_packed"].toTensor();
  w.code = d["q_code"].toTensor();
  w.absmax = d["q_absmax"].toTensor();
  w.double_quant = d["q_double_quant"].toBool();
  w.absmax2 = d["q_absmax2"].toTensor();
  w.nested_code = d["q_nested_code"].toTensor();
  w.offset = static_cast<float>(d["q_offset"].toDouble());
  return w;
}

// The dequantized weight for one matmul. On the CPU it goes into a per-thread scratch buffer that is reused from
// call to call (grown to the largest weight seen), never a fresh allocation: a fresh multi-MiB block is a new
// mapping whose pages fault in on first touch (~30 us each on our VMs), which made the frozen linear ~3x slower
// than a dense one (bench/RESULTS.md). The result lives only until the next call on this thread: forward and
// backward use it for one matmul and keep nothing (autograd is off inside a custom Function). A CUDA device gets
// one such buffer per thread too (the dequant kernel and the matmul that reads it are ordered on the thread's
// current stream, so the next call cannot overwrite it early): no allocator traffic per projection. Other devices
// allocate through their own caching allocator.
torch::Tensor dequantize_scratch(const QuantizedTensor& w, torch::ScalarType dtype) {
  const torch::Device dev = w.device();
  if (!dev.is_cpu() && !dev.is_cuda()) return dequantize_4bit(w, dtype);
  thread_local std::vector<torch::Tensor> scratch_by_device;  // [0]: CPU, [1 + i]: cuda:i
  const size_t slot = dev.is_cpu() ? 0 : 1 + static_cast<size_t>(dev.has_index() ? dev.index() : 0);
  if (scratch_by_device.size() <= slot) scratch_by_device.resize(slot + 1);
  torch::Tensor& scratch = scratch_by_device[slot];  // uint8, 64-byte (CPU) / 512-byte (CUDA) aligned
  const int64_t bytes = w.numel() * static_cast<int64_t>(c10::elementSize(dtype));
  if (!scratch.defined() || scratch.numel() < bytes) {
    scratch = torch::Tensor();  // free the smaller one first
    scratch = torch::empty({bytes}, torch::TensorOptions().dtype(torch::kUInt8).device(dev));
  }
  torch::Tensor out = scratch.narrow(0, 0, bytes).view(dtype).view(w.shape);
  dequantize_4bit_into(w, out);
  return out;
}

// x: (..., in) with one row -> (..., out) through the GEMV kernel (gemv_4bit_applies(w, x) holds).
torch::Tensor gemv_forward(const torch::Tensor& x, const QuantizedTensor& w, const torch::Tensor& bias) {
  torch::Tensor y = gemv_4bit(w, x.reshape({x.size(-1)}));
  if (bias.defined()) y = y + bias.to(y.scalar_type());
  auto shape = x.sizes().vec();
  shape.back() = w.shape[0];
  return y.view(shape);
}

}  // namespace

torch::Tensor LinearNF4Function::forward(AutogradContext* ctx, const torch::Tensor& x,
                                         const c10::optional<torch::Tensor>& bias_opt, const QuantizedTensor& w) {
  const torch::Tensor bias = bias_opt.has_value() ? *bias_opt : torch::Tensor();
  TORCH_CHECK(w.shape.size() == 2, "linear_4bit: weight must be 2-D (out, in)");
  TORCH_CHECK(x.size(-1) == w.shape[1], "linear_4bit: input has ", x.size(-1), " features, weight expects ",
              w.shape[1]);
  save_quantized(ctx, w);
  ctx->saved_data["has_bias"] = bias.defined();
  if (gemv_4bit_applies(w, x)) return gemv_forward(x, w, bias);     // batch-1 decoding: the 4-bit codes read once
  const torch::Tensor wd = dequantize_scratch(w, x.scalar_type());  // (out, in), not kept past this call
  return torch::linear(x, wd, bias.defined() ? bias.to(x.scalar_type()) : bias);
}

torch::autograd::variable_list LinearNF4Function::backward(AutogradContext* ctx,
                                                           torch::autograd::variable_list grad_out) {
  const torch::Tensor& g = grad_out[0];  // (..., out)
  torch::Tensor grad_x, grad_bias;
  if (ctx->needs_input_grad(0)) {
    const QuantizedTensor w = load_quantized(ctx);
    grad_x = torch::matmul(g, dequantize_scratch(w, g.scalar_type()));  // (..., out) · (out, in) -> (..., in)
  }
  if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(1)) {
    grad_bias = g.reshape({-1, g.size(-1)}).sum(0);
  }
  return {grad_x, grad_bias, torch::Tensor()};
}

namespace {
thread_local CpuGemv t_cpu_gemv = CpuGemv::kQ8;
}  // namespace

bool cpu_gemv_takes(torch::ScalarType t) {
  return t == torch::kBFloat16 || (t == torch::kFloat32 && cpu_gemv() == CpuGemv::kQ8);
}

CpuGemv cpu_gemv() {
  return t_cpu_gemv;
}

const char* cpu_gemv_name(CpuGemv g) {
  return g == CpuGemv::kQ8 ? "q8" : "exact";
}

CpuGemvScope::CpuGemvScope(CpuGemv g) : previous_(t_cpu_gemv) {
  t_cpu_gemv = g;
}

CpuGemvScope::~CpuGemvScope() {
  t_cpu_gemv = previous_;
}

bool gemv_4bit_applies(const QuantizedTensor& w, const torch::Tensor& x) {
  const auto aligned16 = [](const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  const bool shapes = w.device() == x.device() && x.is_contiguous() && w.shape.size() == 2 && x.numel() == w.shape[1] &&
                      w.shape[1] % 32 == 0 && w.packed.is_contiguous();
  if (x.is_cuda()) return shapes && x.scalar_type() == torch::kBFloat16 && aligned16(x) && aligned16(w.packed);
  // CPU: only where no autograd can ever be needed (InferenceMode, as generation runs), so that training, including
  // a checkpointed layer's no-grad forward and its recompute, keeps the dequant + matmul numerics.
  return x.is_cpu() && shapes && cpu_gemv_takes(x.scalar_type()) && c10::InferenceMode::is_enabled();
}

torch::Tensor gemv_4bit(const QuantizedTensor& w, const torch::Tensor& x) {
  TORCH_CHECK(w.shape.size() == 2, "gemv_4bit: W must be 2-D, got ", w.shape);
  torch::Tensor y =
      torch::empty(x.dim() == 2 ? std::vector<int64_t>{1, w.shape[0]} : std::vector<int64_t>{w.shape[0]}, x.options());
  gemv_4bit_out(w, x, y);
  return y;
}

namespace {
// The operands gemv_4bit_out takes: W 2-D with in % 32 == 0, x of in elements on W's device in a dtype its kernel
// takes, y contiguous of x's dtype and out elements on W's device.
void check_gemv_operands(const QuantizedTensor& w, const torch::Tensor& x, const torch::Tensor& y) {
  TORCH_CHECK(w.shape.size() == 2 && x.numel() == w.shape[1] && w.shape[1] % 32 == 0, "gemv_4bit: x has ", x.numel(),
              " elements, W is ", w.shape, " (in must be a multiple of 32)");
  const bool cpu = x.is_cpu();
  TORCH_CHECK(x.device() == w.device() && (cpu ? cpu_gemv_takes(x.scalar_type()) : x.scalar_type() == torch::kBFloat16),
              "gemv_4bit: x is ", x.scalar_type(), " on ", x.device(), "; the ",
              cpu ? cpu_gemv_name(cpu_gemv()) : "CUDA", " GEMV takes bf16",
              cpu && cpu_gemv() == CpuGemv::kQ8 ? " or fp32" : "", " on ", w.device());
  TORCH_CHECK(
      y.scalar_type() == x.scalar_type() && y.device() == w.device() && y.is_contiguous() && y.numel() == w.shape[0],
      "gemv_4bit: y must be a contiguous ", x.scalar_type(), " tensor of ", w.shape[0], " elements on ", w.device());
}
}  // namespace

void gemv_4bit_out(const QuantizedTensor& w, const torch::Tensor& x, torch::Tensor& y) {
  check_gemv_operands(w, x, y);
  const bool cpu = x.is_cpu();
  const torch::Tensor xc = x.contiguous();
  const bool bf16 = xc.scalar_type() == torch::kBFloat16;
  if (cpu && cpu_gemv() == CpuGemv::kQ8) {
    gemv_q8_cpu(detail::gemv_q8_args(w, xc.data_ptr(), bf16, y.data_ptr(), bf16));
    return;
  }
  const Gemv4bitArgs a = detail::gemv_args(w, xc.data_ptr(), y.data_ptr(), /*out_bf16=*/true);
  if (cpu) {
    gemv_4bit_cpu(a);
    return;
  }
#if defined(QLORA_WITH_CUDA)
  if (xc.is_cuda()) {
    cuda::gemv_4bit(a, c10::cuda::getCurrentCUDAStream(xc.device().index()).stream());
    return;
  }
#endif
  TORCH_CHECK(false, "gemv_4bit: no kernel for device ", xc.device(), " in this build");
}

void gemv_4bit_out(std::initializer_list<std::pair<const QuantizedTensor*, torch::Tensor*>> outs,
                   const torch::Tensor& x) {
  if (!x.is_cpu() || cpu_gemv() != CpuGemv::kQ8 || outs.size() < 2) {
    for (const auto& [w, y] : outs) gemv_4bit_out(*w, x, *y);
    return;
  }
  std::vector<GemvQ8Args> args;
  const torch::Tensor xc = x.contiguous();
  const bool bf16 = xc.scalar_type() == torch::kBFloat16;
  for (const auto& [w, y] : outs) {
    check_gemv_operands(*w, x, *y);
    args.push_back(detail::gemv_q8_args(*w, xc.data_ptr(), bf16, y->data_ptr(), bf16));
  }
  gemv_q8_cpu(args.data(), args.size());
}

void CpuGemvRows::prepare(CpuGemv g, const void* x, torch::ScalarType dtype, int64_t in_features, Isa isa) {
  TORCH_CHECK(dtype == torch::kBFloat16 || (dtype == torch::kFloat32 && g == CpuGemv::kQ8), "CpuGemvRows: the ",
              cpu_gemv_name(g), " GEMV does not take ", dtype, " rows");
  g_ = g;
  x_ = x;
  bf16_ = dtype == torch::kBFloat16;
  if (g == CpuGemv::kQ8) {
    gemv_q8_prepare(x, bf16_, in_features, isa, q8_);
  } else {
    gemv_4bit_prepare(static_cast<const uint16_t*>(x), in_features, isa, exact_);
  }
}

void CpuGemvRows::rows(const QuantizedTensor& w, void* y, int64_t o0, int64_t o1) const {
  if (g_ == CpuGemv::kQ8) {
    gemv_q8_rows(detail::gemv_q8_args(w, x_, bf16_, y, bf16_), q8_, o0, o1);
  } else {
    gemv_4bit_rows(detail::gemv_args(w, x_, y, /*out_bf16=*/true), exact_, o0, o1);
  }
}

torch::Tensor linear_4bit(const torch::Tensor& x, const QuantizedTensor& w, const torch::Tensor& bias) {
  // Inference on the CPU: no autograd node (nothing is saved, nothing can need a gradient).
  if (x.is_cpu() && gemv_4bit_applies(w, x)) return gemv_forward(x, w, bias);
  c10::optional<torch::Tensor> bias_opt;
  if (bias.defined()) bias_opt = bias;
  return LinearNF4Function::apply(x, bias_opt, w);
}

Linear4bitImpl::Linear4bitImpl(QuantizedTensor weight, torch::Tensor bias)
    : weight_(std::move(weight)), bias_(std::move(bias)) {
  TORCH_CHECK(weight_.shape.size() == 2, "Linear4bit: weight must be 2-D (out, in)");
  TORCH_CHECK(!bias_.defined() || bias_.numel() == weight_.shape[0], "Linear4bit: bias has ", bias_.numel(),
              " elements, expected ", weight_.shape[0]);
  register_buffer("weight", weight_.packed);
  register_buffer("weight_absmax", weight_.absmax);
  register_buffer("weight_quant_map", weight_.code);
  if (weight_.double_quant) {
    register_buffer("weight_nested_absmax", weight_.absmax2);
    register_buffer("weight_nested_quant_map", weight_.nested_code);
  }
  if (bias_.defined()) register_buffer("bias", bias_);
}

std::shared_ptr<Linear4bitImpl> Linear4bitImpl::from_dense(const torch::Tensor& weight, QuantType type,
                                                           int64_t blocksize, bool double_quant,
                                                           const torch::Tensor& bias) {
  TORCH_CHECK(weight.dim() == 2, "Linear4bit::from_dense: weight must be 2-D (out, in)");
  return std::make_shared<Linear4bitImpl>(quantize_4bit(weight.detach(), type, blocksize, double_quant),
                                          bias.defined() ? bias.detach() : bias);
}

torch::Tensor Linear4bitImpl::forward(const torch::Tensor& x) {
  return linear_4bit(x, weight_, bias_);
}

// Module::to() moves the buffers in place (set_data), and weight_/bias_ share those tensors.
void Linear4bitImpl::to_device(torch::Device device) {
  to(device);
}

void Linear4bitImpl::to(torch::Device device, bool non_blocking) {
  torch::nn::Module::to(device, non_blocking);
}

void Linear4bitImpl::to(torch::Dtype dtype, bool non_blocking) {
  if (bias_.defined()) bias_.set_data(bias_.to(dtype, non_blocking));
}

void Linear4bitImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  to(device, non_blocking);
  to(dtype, non_blocking);
}

}  // namespace qlora::quant
