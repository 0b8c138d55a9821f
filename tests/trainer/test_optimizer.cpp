// AdapterAdamW against independent references: LibTorch's own AdamW (fp32), a float64 AdamW written here (bf16
// storage), and a save/load round trip; clip_grad_norm_fp32 against torch::nn::utils::clip_grad_norm_ and a
// float64 norm.
#include <gtest/gtest.h>

#include <cmath>
#include <sstream>
#include <vector>

#include "test_util.h"
#include "trainer/optimizer.h"

namespace qlora::trainer {
namespace {

const std::vector<std::vector<int64_t>> kShapes = {{8, 33}, {17, 8}, {5}};

std::vector<torch::Tensor> make_params(torch::ScalarType dtype, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> out;
  for (const auto& s : kShapes) out.push_back(torch::randn(s).to(dtype).requires_grad_(true));
  return out;
}

// The gradients of step `k` (fp32 values, the same for every optimizer under test).
std::vector<torch::Tensor> grads_at(int k) {
  torch::manual_seed(1000 + k);
  std::vector<torch::Tensor> out;
  for (const auto& s : kShapes) out.push_back(torch::randn(s) * (k % 2 == 0 ? 1.0 : 1e-3));
  return out;
}

void set_grads(std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads) {
  for (size_t i = 0; i < params.size(); ++i) params[i].mutable_grad() = grads[i].to(params[i].scalar_type()).clone();
}

torch::optim::AdamWOptions options() {
  return torch::optim::AdamWOptions(3e-2).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1);
}

TEST(AdapterAdamW, Fp32PathKeepsTorchAdamW) {
  auto p = make_params(torch::kFloat32, 1);
  AdapterAdamW opt(p, options());
  EXPECT_FALSE(opt.uses_fp32_update());  // fp32 parameters, states beside them: torch's own step
}

TEST(AdapterAdamW, OffloadedUpdateEqualsTorchAdamW) {
  auto ref = make_params(torch::kFloat32, 1), got = make_params(torch::kFloat32, 1);
  torch::optim::AdamW torch_opt(ref, options());
  AdapterAdamW opt(got, options(), torch::Device(torch::kCPU));
  ASSERT_TRUE(opt.uses_fp32_update());
  for (int k = 0; k < 6; ++k) {
    const auto g = grads_at(k);
    set_grads(ref, g);
    set_grads(got, g);
    torch_opt.step();
    opt.step();
  }
  for (size_t i = 0; i < ref.size(); ++i) {
    // Same operations in the same order: equal up to the last bit of fp32.
    EXPECT_TRUE(torch::allclose(got[i], ref[i], /*rtol=*/1e-6, /*atol=*/1e-7))
        << "param " << i << " max diff " << (got[i] - ref[i]).abs().max().item<double>();
  }
}

// float64 AdamW on the bf16 starting values, the weight kept at full precision (the fp32 master's job); the bf16
// parameter is that weight rounded to bf16.
TEST(AdapterAdamW, Bf16StorageMatchesFloat64Reference) {
  auto got = make_params(torch::kBFloat16, 2);
  std::vector<torch::Tensor> w, m, v;
  for (const auto& p : got) {
    w.push_back(p.detach().to(torch::kFloat64));
    m.push_back(torch::zeros_like(w.back()));
    v.push_back(torch::zeros_like(w.back()));
  }
  AdapterAdamW opt(got, options(), torch::Device(torch::kCPU));
  ASSERT_TRUE(opt.uses_fp32_update());
  const auto o = options();
  const double lr = o.lr(), b1 = std::get<0>(o.betas()), b2 = std::get<1>(o.betas());
  for (int k = 0; k < 6; ++k) {
    auto g = grads_at(k);
    for (auto& t : g) t = t.to(torch::kBFloat16).to(torch::kFloat32);  // the gradients are stored in bf16
    set_grads(got, g);
    opt.step();
    for (size_t i = 0; i < w.size(); ++i) {
      const auto gd = g[i].to(torch::kFloat64);
      w[i] = w[i] * (1 - lr * o.weight_decay());
      m[i] = b1 * m[i] + (1 - b1) * gd;
      v[i] = b2 * v[i] + (1 - b2) * gd * gd;
      const double bc1 = 1 - std::pow(b1, k + 1), bc2 = 1 - std::pow(b2, k + 1);
      w[i] = w[i] - lr / bc1 * m[i] / (torch::sqrt(v[i]) / std::sqrt(bc2) + o.eps());
    }
  }
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].scalar_type(), torch::kBFloat16);
    const auto rounded = w[i].to(torch::kBFloat16).to(torch::kFloat64);
    const auto diff = (got[i].to(torch::kFloat64) - rounded).abs();
    const auto ulp = w[i].abs() * std::pow(2.0, -7) + 1e-30;
    EXPECT_TRUE((diff <= ulp).all().item<bool>()) << "param " << i << " max diff " << diff.max().item<double>();
    const double exact = (diff == 0).to(torch::kFloat64).mean().item<double>();
    EXPECT_GT(exact, 0.95) << "param " << i << ": only " << exact << " of the elements equal the reference";
  }
  // The states are fp32 and on the state device.
  for (const auto& [key, st] : opt.state()) {
    const auto& s = static_cast<const torch::optim::AdamWParamState&>(*st);
    EXPECT_EQ(s.exp_avg().scalar_type(), torch::kFloat32);
    EXPECT_EQ(s.exp_avg_sq().scalar_type(), torch::kFloat32);
    EXPECT_EQ(s.step(), 6);
  }
}

// A long run with small updates (lr 1e-4 on weights of magnitude ~1e-2, the regime of LoRA B matrices late in
// training): every AdamW update is below half a bf16 ulp of the weight. With the fp32 master the bf16 weights track
// the fp32 run (within one bf16 ulp of it); rounding the weight itself after each update (the old behaviour,
// fp32_master = false) leaves them where they started.
TEST(AdapterAdamW, Bf16WithMasterTracksFp32OverALongRun) {
  const auto opts = torch::optim::AdamWOptions(1e-4).betas({0.9, 0.999}).eps(1e-8).weight_decay(0.0);
  torch::manual_seed(11);
  const torch::Tensor init = torch::randn({64, 16}) * 0.02;
  auto make = [&](torch::ScalarType dt) {
    return std::vector<torch::Tensor>{init.to(dt).clone().detach().requires_grad_(true)};
  };
  auto ref = make(torch::kFloat32);
  auto with_master = make(torch::kBFloat16);
  auto without = make(torch::kBFloat16);
  ref[0].data().copy_(with_master[0].detach().to(torch::kFloat32));  // the same (bf16-representable) start
  AdapterAdamW opt_ref(ref, opts), opt_m(with_master, opts), opt_n(without, opts, std::nullopt, false);
  torch::manual_seed(12);
  const torch::Tensor direction = torch::randn({64, 16});
  for (int k = 0; k < 400; ++k) {
    // bf16-representable gradients, so the three runs see the same ones and differ only in how weights are kept.
    const torch::Tensor g = (direction + 0.1 * torch::randn({64, 16})).to(torch::kBFloat16).to(torch::kFloat32);
    for (auto* ps : {&ref, &with_master, &without}) (*ps)[0].mutable_grad() = g.to((*ps)[0].scalar_type());
    opt_ref.step();
    opt_m.step();
    opt_n.step();
  }
  const torch::Tensor r = ref[0].detach().to(torch::kFloat64);
  const torch::Tensor start = init.to(torch::kBFloat16).to(torch::kFloat64);
  const double moved = (r - start).abs().mean().item<double>();
  EXPECT_GT(moved, 0.02);  // the fp32 run moves ~lr per step: 400 x 1e-4
  const auto ulp = r.abs() * std::pow(2.0, -7) + 1e-7;
  const auto err_m = (with_master[0].detach().to(torch::kFloat64) - r).abs();
  EXPECT_TRUE((err_m <= ulp).all().item<bool>()) << "max " << (err_m / ulp).max().item<double>() << " ulps";
  const double mean_m = err_m.mean().item<double>();
  const double err_n = (without[0].detach().to(torch::kFloat64) - r).abs().mean().item<double>();
  EXPECT_GT(err_n, 0.25 * moved) << "without a master the bf16 run should lag the fp32 one";
  EXPECT_GT(err_n, 20 * mean_m) << "the master should track the fp32 run far better";
}

TEST(PromoteGradsToFp32, LaterBackwardsAccumulateInFp32) {
  torch::manual_seed(3);
  auto p = torch::randn({4, 8}).to(torch::kBFloat16).requires_grad_(true);
  const auto x1 = torch::randn({8}).to(torch::kBFloat16), x2 = torch::randn({8}).to(torch::kBFloat16);
  (p * x1).sum().backward();
  promote_grads_to_fp32({p});
  ASSERT_EQ(p.grad().scalar_type(), torch::kFloat32);
  (p * x2).sum().backward();
  EXPECT_EQ(p.grad().scalar_type(), torch::kFloat32);
  const auto want = (x1.to(torch::kFloat32) + x2.to(torch::kFloat32)).expand({4, 8});
  EXPECT_TRUE(torch::equal(p.grad(), want));  // bf16 inputs: the fp32 sum is exact
}

// Stopping after 3 updates, saving, loading into a fresh optimizer and continuing gives the same weights as 6
// uninterrupted updates.
TEST(AdapterAdamW, SaveLoadContinuesExactly) {
  auto full = make_params(torch::kBFloat16, 3);
  AdapterAdamW full_opt(full, options(), torch::Device(torch::kCPU));
  for (int k = 0; k < 6; ++k) {
    set_grads(full, grads_at(k));
    full_opt.step();
  }

  auto first = make_params(torch::kBFloat16, 3);
  AdapterAdamW first_opt(first, options(), torch::Device(torch::kCPU));
  for (int k = 0; k < 3; ++k) {
    set_grads(first, grads_at(k));
    first_opt.step();
  }
  std::ostringstream buffer;
  torch::save(first_opt, buffer);
  std::vector<torch::Tensor> second;
  for (const auto& p : first) second.push_back(p.detach().clone().requires_grad_(true));
  AdapterAdamW second_opt(second, options(), torch::Device(torch::kCPU));
  std::istringstream in(buffer.str());
  torch::load(second_opt, in);
  for (int k = 3; k < 6; ++k) {
    set_grads(second, grads_at(k));
    second_opt.step();
  }
  for (size_t i = 0; i < full.size(); ++i) EXPECT_TRUE(torch::equal(second[i], full[i])) << "param " << i;
}

TEST(ClipGradNormFp32, Fp32EqualsTorchClipGradNorm) {
  auto a = make_params(torch::kFloat32, 4), b = make_params(torch::kFloat32, 4);
  const auto g = grads_at(0);
  set_grads(a, g);
  set_grads(b, g);
  const double want = torch::nn::utils::clip_grad_norm_(a, 0.5);
  const double got = clip_grad_norm_fp32(b, 0.5);
  EXPECT_EQ(got, want);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].grad(), b[i].grad())) << "grad " << i;
}

TEST(ClipGradNormFp32, Bf16NormAccumulatesInFp32) {
  auto p = make_params(torch::kBFloat16, 5);
  auto g = grads_at(0);
  set_grads(p, g);
  double sq = 0.0;
  std::vector<torch::Tensor> before;
  for (const auto& t : p) {
    sq += t.grad().to(torch::kFloat64).pow(2).sum().item<double>();
    before.push_back(t.grad().to(torch::kFloat64));
  }
  const double norm = std::sqrt(sq);
  const double got = clip_grad_norm_fp32(p, 0.25);
  EXPECT_NEAR(got, norm, 1e-6 * norm);  // a bf16 sum would be off by ~1e-3 relative
  const double coef = 0.25 / (norm + 1e-6);
  for (size_t i = 0; i < p.size(); ++i) {
    EXPECT_EQ(p[i].grad().scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(torch::allclose(p[i].grad().to(torch::kFloat64), before[i] * coef, 1e-2, 1e-6)) << "grad " << i;
  }
}

}  // namespace
}  // namespace qlora::trainer
