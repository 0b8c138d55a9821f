#include "trainer/optimizer.h"

#include <cmath>

namespace qlora::trainer {
namespace {

// The optimizer's state key of a parameter: torch::optim keys its state map by the TensorImpl address.
void* state_key(const torch::Tensor& p) {
  return static_cast<void*>(p.unsafeGetTensorImpl());
}

}  // namespace

AdapterAdamW::AdapterAdamW(std::vector<torch::Tensor> params, const torch::optim::AdamWOptions& options,
                           std::optional<torch::Device> state_device, bool fp32_master)
    : torch::optim::AdamW(std::move(params), options), state_device_(state_device), fp32_master_(fp32_master) {
  TORCH_CHECK(!options.amsgrad(), "AdapterAdamW: amsgrad is not supported");
  fp32_update_ = state_device_.has_value();
  for (const auto& group : param_groups()) {
    for (const auto& p : group.params()) {
      TORCH_CHECK(c10::isFloatingType(p.scalar_type()), "AdapterAdamW: parameters must be floating point");
      if (p.scalar_type() != torch::kFloat32) fp32_update_ = true;
    }
  }
}

torch::Device AdapterAdamW::device_for(const torch::Tensor& param) const {
  return state_device_ ? *state_device_ : param.device();
}

torch::Tensor AdapterAdamW::working_weight(const torch::Tensor& p) {
  const torch::Device dev = device_for(p);
  if (p.scalar_type() == torch::kFloat32 || !fp32_master_) return p.detach().to(dev, torch::kFloat32);
  auto it = masters_.find(state_key(p));
  if (it == masters_.end()) it = masters_.emplace(state_key(p), p.detach().to(dev, torch::kFloat32).clone()).first;
  return it->second;
}

torch::Tensor AdapterAdamW::step(LossClosure closure) {
  if (!fp32_update_) return torch::optim::AdamW::step(std::move(closure));
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  auto& states = state();
  for (auto& group : param_groups()) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(group.options());
    const double lr = o.lr(), beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      const torch::Device dev = device_for(p);
      const auto key = state_key(p);
      auto it = states.find(key);
      if (it == states.end()) {
        auto st = std::make_unique<torch::optim::AdamWParamState>();
        st->step(0);
        st->exp_avg(torch::zeros(p.sizes(), torch::TensorOptions().dtype(torch::kFloat32).device(dev)));
        st->exp_avg_sq(torch::zeros(p.sizes(), torch::TensorOptions().dtype(torch::kFloat32).device(dev)));
        it = states.emplace(key, std::move(st)).first;
      }
      auto& st = static_cast<torch::optim::AdamWParamState&>(*it->second);
      // fp32 working copies on the state device (aliases of p and its gradient when those already are).
      torch::Tensor w = working_weight(p);
      const torch::Tensor g = p.grad().detach().to(dev, torch::kFloat32);
      w.mul_(1 - lr * o.weight_decay());
      st.step(st.step() + 1);
      const double bias_correction1 = 1 - std::pow(beta1, static_cast<double>(st.step()));
      const double bias_correction2 = 1 - std::pow(beta2, static_cast<double>(st.step()));
      torch::Tensor& m = st.exp_avg();
      torch::Tensor& v = st.exp_avg_sq();
      m.mul_(beta1).add_(g, 1 - beta1);
      v.mul_(beta2).addcmul_(g, g, 1 - beta2);
      const torch::Tensor denom = (v.sqrt() / std::sqrt(bias_correction2)).add_(o.eps());
      w.addcdiv_(m, denom, -lr / bias_correction1);
      if (!w.is_same(p)) p.detach().copy_(w);  // rounded to p's dtype, moved to p's device
    }
  }
  return loss;
}

void AdapterAdamW::save(torch::serialize::OutputArchive& archive) const {
  torch::optim::AdamW::save(archive);
  int64_t index = 0;
  for (const auto& group : param_groups()) {
    for (const auto& p : group.params()) {
      auto it = masters_.find(state_key(p));
      if (it != masters_.end()) archive.write("qlora_master." + std::to_string(index), it->second, /*is_buffer=*/true);
      ++index;
    }
  }
}

void AdapterAdamW::load(torch::serialize::InputArchive& archive) {
  torch::optim::AdamW::load(archive);
  auto& states = state();
  masters_.clear();
  int64_t index = 0;
  for (auto& group : param_groups()) {
    for (auto& p : group.params()) {
      // A checkpoint written before masters existed has none: the master starts from the weight at the next step.
      torch::Tensor master;
      if (archive.try_read("qlora_master." + std::to_string(index++), master, /*is_buffer=*/true)) {
        TORCH_CHECK(master.sizes() == p.sizes(), "optimizer master weight of shape ", master.sizes(),
                    " for a parameter of shape ", p.sizes());
        masters_[state_key(p)] = master.to(device_for(p), torch::kFloat32);
      }
      auto it = states.find(state_key(p));
      if (it == states.end()) continue;
      auto& st = static_cast<torch::optim::AdamWParamState&>(*it->second);
      const torch::Device dev = device_for(p);
      TORCH_CHECK(st.exp_avg().sizes() == p.sizes(), "optimizer state of shape ", st.exp_avg().sizes(),
                  " for a parameter of shape ", p.sizes());
      // fp32 states where the fp32 path keeps them; the parameter's dtype for torch's own step.
      const auto dtype = fp32_update_ ? torch::kFloat32 : p.scalar_type();
      st.exp_avg(st.exp_avg().to(dev, dtype));
      st.exp_avg_sq(st.exp_avg_sq().to(dev, dtype));
    }
  }
}

void promote_grads_to_fp32(const std::vector<torch::Tensor>& params) {
  torch::NoGradGuard no_grad;
  for (const auto& p : params) {
    if (p.grad().defined() && p.grad().scalar_type() != torch::kFloat32) {
      const_cast<torch::Tensor&>(p).mutable_grad() = p.grad().to(torch::kFloat32);
    }
  }
}

double clip_grad_norm_fp32(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return 0.0;
  std::vector<torch::Tensor> norms;
  norms.reserve(grads.size());
  for (const auto& g : grads) norms.push_back(g.to(torch::kFloat32).norm(2));
  const torch::Tensor total = norms.size() == 1 ? norms[0] : torch::stack(norms).norm(2);
  const torch::Tensor coef = torch::clamp(max_norm / (total + 1e-6), c10::nullopt, 1.0);
  for (auto& g : grads) g.mul_(coef.to(g.device()));
  return total.item().toDouble();
}

}  // namespace qlora::trainer
