#include "ops/activation_checkpoint.h"

#include <ATen/Context.h>
#include <torch/csrc/autograd/custom_function.h>

#include <optional>

namespace qlora::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The function to recompute plus the RNG states to replay, kept in ctx->saved_data as a capsule.
struct CheckpointState : torch::CustomClassHolder {
  CheckpointFn fn;
  torch::Tensor cpu_rng_state;
  std::optional<torch::Device> accel_device;
  torch::Tensor accel_rng_state;
  std::vector<bool> input_requires_grad;
};

// Restores the saved RNG states for the recompute and puts the current ones back afterwards.
class RngReplay {
 public:
  explicit RngReplay(const CheckpointState& s) : s_(s) {
    at::Generator cpu = at::globalContext().defaultGenerator(torch::kCPU);
    cpu_now_ = cpu.get_state();
    cpu.set_state(s.cpu_rng_state);
    if (s.accel_device) {
      at::Generator g = at::globalContext().defaultGenerator(*s.accel_device);
      accel_now_ = g.get_state();
      g.set_state(s.accel_rng_state);
    }
  }
  ~RngReplay() {
    at::Generator cpu = at::globalContext().defaultGenerator(torch::kCPU);  // a handle sharing the generator
    cpu.set_state(cpu_now_);
    if (s_.accel_device) {
      at::Generator g = at::globalContext().defaultGenerator(*s_.accel_device);
      g.set_state(accel_now_);
    }
  }

 private:
  const CheckpointState& s_;
  torch::Tensor cpu_now_, accel_now_;
};

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  static variable_list forward(AutogradContext* ctx, torch::TensorList inputs,
                               c10::intrusive_ptr<CheckpointState> state) {
    state->cpu_rng_state = at::globalContext().defaultGenerator(torch::kCPU).get_state();
    for (const auto& t : inputs) {
      state->input_requires_grad.push_back(t.requires_grad());
      if (!state->accel_device && !t.device().is_cpu()) {
        state->accel_device = t.device();
        state->accel_rng_state = at::globalContext().defaultGenerator(t.device()).get_state();
      }
    }
    ctx->save_for_backward(inputs.vec());
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    variable_list outputs;
    {
      torch::NoGradGuard no_grad;
      outputs = state->fn(inputs.vec());
    }
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto state = c10::static_intrusive_pointer_cast<CheckpointState>(ctx->saved_data["state"].toCapsule());
    variable_list saved = ctx->get_saved_variables();
    variable_list detached;
    detached.reserve(saved.size());
    for (size_t i = 0; i < saved.size(); ++i) {
      detached.push_back(saved[i].detach().requires_grad_(state->input_requires_grad[i]));
    }
    variable_list outputs;
    {
      RngReplay replay(*state);
      torch::AutoGradMode grad_on(true);
      outputs = state->fn(detached);
    }
    variable_list outs, grads;
    for (size_t i = 0; i < outputs.size() && i < grad_outputs.size(); ++i) {
      if (outputs[i].requires_grad() && grad_outputs[i].defined()) {
        outs.push_back(outputs[i]);
        grads.push_back(grad_outputs[i]);
      }
    }
    // Accumulates into the .grad of every leaf reached: parameters inside fn and the detached inputs.
    if (!outs.empty()) torch::autograd::backward(outs, grads);
    variable_list input_grads;
    for (auto& d : detached) input_grads.push_back(d.requires_grad() ? d.grad() : torch::Tensor());
    input_grads.emplace_back();  // for `state`
    return input_grads;
  }
};

}  // namespace

std::vector<torch::Tensor> checkpoint(const CheckpointFn& fn, const std::vector<torch::Tensor>& inputs) {
  if (!torch::GradMode::is_enabled()) return fn(inputs);
  std::vector<torch::Tensor> args = inputs;
  bool any = false;
  for (const auto& t : args) any = any || t.requires_grad();
  // The node is only recorded when an input requires grad; parameters inside fn may still need it (the first
  // layer's input comes from a frozen embedding), so add a dummy input that does.
  if (!any) {
    auto opts = inputs.empty() ? torch::TensorOptions() : inputs[0].options();
    args.push_back(torch::zeros({}, opts.dtype(torch::kFloat32)).requires_grad_(true));
  }
  const size_t n_real = inputs.size();
  auto state = c10::make_intrusive<CheckpointState>();
  state->fn = [fn, n_real](const std::vector<torch::Tensor>& xs) {
    return fn(std::vector<torch::Tensor>(xs.begin(), xs.begin() + static_cast<std::ptrdiff_t>(n_real)));
  };
  return CheckpointFunction::apply(torch::TensorList(args), state);
}

}  // namespace qlora::ops
