// Autograd wrappers of the fused CPU kernels (ops/fused_kernels.cpp) and their LibTorch-ops fallbacks
// (RoPE's are in ops/rope.cpp).
#include "ops/fused_ops.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/custom_function.h>

#include <mutex>

#include "ops/fused_kernels.h"

namespace qlora::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool fused_cpu(const torch::Tensor& t) {
  return t.device().is_cpu() && detail::fused_dtype_supported(t.scalar_type());
}

// logits (N, V), labels (N) -> fp32 scalar. Saves the logits (their dtype), the labels and the fp32 lse per row.
struct CrossEntropySumFunction : torch::autograd::Function<CrossEntropySumFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits, const torch::Tensor& labels,
                               int64_t ignore_index) {
    const torch::Tensor x = logits.contiguous();
    const torch::Tensor y = labels.to(torch::kInt64).contiguous();
    torch::Tensor lse = torch::empty({x.size(0)}, torch::TensorOptions().dtype(torch::kFloat32));
    const double total = detail::cross_entropy_forward_cpu(x, y, ignore_index, lse, active_isa());
    ctx->save_for_backward({x, y, lse});
    ctx->saved_data["ignore_index"] = ignore_index;
    return torch::scalar_tensor(total, torch::TensorOptions().dtype(torch::kFloat32));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor& x = saved[0];
    torch::Tensor grad;
    if (grad_out[0].defined()) {
      grad = torch::empty_like(x);
      detail::cross_entropy_backward_cpu(x, saved[1], ctx->saved_data["ignore_index"].toInt(), saved[2],
                                         grad_out[0].item<float>(), grad, active_isa());
    }
    return {grad, torch::Tensor(), torch::Tensor()};
  }
};

// x (..., H) -> normed x. Saves x and the fp32 1/rms per row; the weight travels as a saved tensor too.
struct RmsNormFunction : torch::autograd::Function<RmsNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight, double eps) {
    const torch::Tensor xc = x.contiguous();
    torch::Tensor out = torch::empty_like(xc);
    const int64_t h = xc.size(-1);
    torch::Tensor rstd = torch::empty({h == 0 ? 0 : xc.numel() / h}, torch::TensorOptions().dtype(torch::kFloat32));
    detail::rms_norm_forward_cpu(xc, weight, eps, out, rstd, active_isa());
    ctx->save_for_backward({xc, weight, rstd});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const variable_list saved = ctx->get_saved_variables();
    torch::Tensor grad;
    if (grad_out[0].defined()) {
      const torch::Tensor g = grad_out[0].to(saved[0].scalar_type()).contiguous();
      grad = torch::empty_like(saved[0]);
      detail::rms_norm_backward_cpu(saved[0], saved[1], saved[2], g, grad, active_isa());
    }
    return {grad, torch::Tensor(), torch::Tensor()};
  }
};

// silu(gate) * up. Saves gate and up.
struct SwigluFunction : torch::autograd::Function<SwigluFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& gate, const torch::Tensor& up) {
    const torch::Tensor g = gate.contiguous(), u = up.contiguous();
    torch::Tensor out = torch::empty_like(g);
    detail::swiglu_forward_cpu(g, u, out, active_isa());
    ctx->save_for_backward({g, u});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const variable_list saved = ctx->get_saved_variables();
    torch::Tensor grad_gate, grad_up;
    if (grad_out[0].defined()) {
      const torch::Tensor g = grad_out[0].to(saved[0].scalar_type()).contiguous();
      grad_gate = torch::empty_like(saved[0]);
      grad_up = torch::empty_like(saved[0]);
      detail::swiglu_backward_cpu(saved[0], saved[1], g, grad_gate, grad_up, active_isa());
    }
    return {grad_gate, grad_up};
  }
};

// One 64-bit draw from the default CPU generator, under its lock (LibTorch's own CPU kernels do the same).
uint64_t draw_dropout_seed() {
  at::Generator gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
}

// x -> x * mask / (1 - p). Keeps only the seed: backward regenerates the same mask.
struct DropoutFunction : torch::autograd::Function<DropoutFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, double p) {
    const uint64_t seed = draw_dropout_seed();
    const torch::Tensor xc = x.contiguous();
    torch::Tensor out = torch::empty_like(xc);
    detail::dropout_cpu(xc, seed, p, out, active_isa());
    ctx->saved_data["seed"] = static_cast<int64_t>(seed);
    ctx->saved_data["p"] = p;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    torch::Tensor grad;
    if (grad_out[0].defined()) {
      const torch::Tensor g = grad_out[0].contiguous();
      grad = torch::empty_like(g);
      detail::dropout_cpu(g, static_cast<uint64_t>(ctx->saved_data["seed"].toInt()), ctx->saved_data["p"].toDouble(),
                          grad, active_isa());
    }
    return {grad, torch::Tensor()};
  }
};

}  // namespace

namespace detail {

torch::Tensor cross_entropy_sum_ops(const torch::Tensor& logits, const torch::Tensor& labels, int64_t ignore_index) {
  const auto opts = torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum).ignore_index(ignore_index);
  return torch::nn::functional::cross_entropy(logits.to(torch::kFloat32), labels.to(torch::kInt64), opts);
}

torch::Tensor rms_norm_ops(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  const torch::Tensor xf = x.to(torch::kFloat32);
  const torch::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  const torch::Tensor normed = (xf * torch::rsqrt(var + eps)).to(x.scalar_type());
  return weight.scalar_type() == x.scalar_type() ? normed * weight : normed * weight.to(x.scalar_type());
}

torch::Tensor swiglu_ops(const torch::Tensor& gate, const torch::Tensor& up) {
  return torch::silu(gate) * up;
}

}  // namespace detail

torch::Tensor cross_entropy_sum(const torch::Tensor& logits, const torch::Tensor& labels, int64_t ignore_index) {
  TORCH_CHECK(logits.dim() == 2 && labels.dim() == 1 && labels.size(0) == logits.size(0),
              "cross_entropy_sum: logits must be (N, V) and labels (N), got ", logits.sizes(), " and ", labels.sizes());
  if (!fused_cpu(logits) || !labels.device().is_cpu()) {
    return detail::cross_entropy_sum_ops(logits, labels, ignore_index);
  }
  return CrossEntropySumFunction::apply(logits, labels, ignore_index);
}

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1), "rms_norm: weight ", weight.sizes(),
              " does not match input ", x.sizes());
  if (!fused_cpu(x) || !weight.device().is_cpu() || weight.requires_grad()) return detail::rms_norm_ops(x, weight, eps);
  return RmsNormFunction::apply(x, weight, eps);
}

torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up) {
  TORCH_CHECK(gate.sizes() == up.sizes(), "swiglu: gate ", gate.sizes(), " and up ", up.sizes(), " differ");
  if (!fused_cpu(gate) || !up.device().is_cpu() || up.scalar_type() != gate.scalar_type()) {
    return detail::swiglu_ops(gate, up);
  }
  return SwigluFunction::apply(gate, up);
}

torch::Tensor dropout(const torch::Tensor& x, double p, bool train) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "dropout probability must be in [0, 1), got ", p);
  if (!train || p == 0.0) return x;
  if (!fused_cpu(x)) return torch::dropout(x, p, /*train=*/true);
  return DropoutFunction::apply(x, p);
}

}  // namespace qlora::ops
