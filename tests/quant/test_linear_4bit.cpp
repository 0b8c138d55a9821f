// LinearNF4Function / Linear4bit against float64 dense computations on the dequantized weight: forward,
// backward, finite differences, 3-D inputs, bias grad, no weight grad, nothing dense saved for backward.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quant/linear_4bit.h"
#include "quant_test_util.h"

namespace qlora::quant {
namespace {

using namespace qlora::test;

constexpr double kFp32RelTol = 1e-5;
constexpr double kBf16RelTol = 2e-2;  // bf16 inputs and output: 8 bits of mantissa, sums of ~100 terms
constexpr double kFiniteDiffTol = 1e-7;

double rel_err(const torch::Tensor& got, const torch::Tensor& want) {
  const torch::Tensor g = got.to(torch::kFloat64), w = want.to(torch::kFloat64);
  return ((g - w).norm() / w.norm()).item<double>();
}

struct Fixture {
  QuantizedTensor q;
  torch::Tensor w64;  // the dequantized weight in float64 (out, in)
  torch::Tensor b;
};

Fixture make(int64_t out, int64_t in, bool bias, uint64_t seed = 21) {
  torch::manual_seed(seed);
  Fixture f;
  f.q = quantize_4bit(torch::randn({out, in}) * 0.1, QuantType::kNF4, 64, true);
  f.w64 = dequantize_4bit(f.q, torch::kFloat64);
  if (bias) f.b = torch::randn({out});
  return f;
}

TEST(LinearNF4, ForwardBackwardFp32MatchFloat64Dense) {
  Fixture f = make(48, 96, true);
  const torch::Tensor x = torch::randn({10, 96}).requires_grad_(true);
  const torch::Tensor b = f.b.clone().requires_grad_(true);
  const torch::Tensor y = linear_4bit(x, f.q, b);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{10, 48}));
  EXPECT_EQ(y.scalar_type(), torch::kFloat32);
  const torch::Tensor x64 = x.detach().to(torch::kFloat64);
  EXPECT_LT(rel_err(y, x64.matmul(f.w64.t()) + f.b.to(torch::kFloat64)), kFp32RelTol);

  const torch::Tensor g = torch::randn({10, 48});
  y.backward(g);
  const torch::Tensor g64 = g.to(torch::kFloat64);
  EXPECT_LT(rel_err(x.grad(), g64.matmul(f.w64)), kFp32RelTol);
  EXPECT_LT(rel_err(b.grad(), g64.sum(0)), kFp32RelTol);
}

TEST(LinearNF4, Bf16ComputeWithinBf16Tolerance) {
  Fixture f = make(64, 128, false);
  const torch::Tensor x = torch::randn({2, 7, 128}).to(torch::kBFloat16).requires_grad_(true);
  const torch::Tensor y = linear_4bit(x, f.q);
  EXPECT_EQ(y.scalar_type(), torch::kBFloat16);
  const torch::Tensor x64 = x.detach().to(torch::kFloat64);
  EXPECT_LT(rel_err(y, x64.matmul(f.w64.t())), kBf16RelTol);
  const torch::Tensor g = torch::randn({2, 7, 64}).to(torch::kBFloat16);
  y.backward(g);
  EXPECT_EQ(x.grad().scalar_type(), torch::kBFloat16);
  EXPECT_LT(rel_err(x.grad(), g.to(torch::kFloat64).matmul(f.w64)), kBf16RelTol);
}

TEST(LinearNF4, ThreeDimensionalInputAndBiasGrad) {
  Fixture f = make(40, 64, true);
  const torch::Tensor x = torch::randn({3, 5, 64}).requires_grad_(true);
  const torch::Tensor b = f.b.clone().requires_grad_(true);
  const torch::Tensor y = linear_4bit(x, f.q, b);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{3, 5, 40}));
  const torch::Tensor x64 = x.detach().to(torch::kFloat64);
  EXPECT_LT(rel_err(y, x64.matmul(f.w64.t()) + f.b.to(torch::kFloat64)), kFp32RelTol);
  const torch::Tensor g = torch::randn({3, 5, 40});
  y.backward(g);
  EXPECT_EQ(x.grad().sizes(), x.sizes());
  EXPECT_LT(rel_err(x.grad(), g.to(torch::kFloat64).matmul(f.w64)), kFp32RelTol);
  EXPECT_LT(rel_err(b.grad(), g.to(torch::kFloat64).sum(std::vector<int64_t>{0, 1})), kFp32RelTol);
}

TEST(LinearNF4, FiniteDifferencesInFloat64) {
  Fixture f = make(6, 64, true, 22);
  const torch::Tensor x = torch::randn({2, 64}, torch::kFloat64).requires_grad_(true);
  const torch::Tensor b = f.b.to(torch::kFloat64).requires_grad_(true);
  const torch::Tensor r = torch::randn({2, 6}, torch::kFloat64);
  auto loss = [&](const torch::Tensor& xx, const torch::Tensor& bb) { return (linear_4bit(xx, f.q, bb) * r).sum(); };
  loss(x, b).backward();
  const double h = 1e-6;
  torch::NoGradGuard ng;
  for (int64_t i : {0, 5, 63, 64, 100, 127}) {
    torch::Tensor xp = x.detach().clone(), xm = x.detach().clone();
    xp.view({-1})[i] += h;
    xm.view({-1})[i] -= h;
    const double fd = (loss(xp, b.detach()).item<double>() - loss(xm, b.detach()).item<double>()) / (2 * h);
    EXPECT_NEAR(x.grad().view({-1})[i].item<double>(), fd, kFiniteDiffTol) << i;
  }
  for (int64_t j = 0; j < 6; ++j) {
    torch::Tensor bp = b.detach().clone(), bm = b.detach().clone();
    bp[j] += h;
    bm[j] -= h;
    const double fd = (loss(x.detach(), bp).item<double>() - loss(x.detach(), bm).item<double>()) / (2 * h);
    EXPECT_NEAR(b.grad()[j].item<double>(), fd, kFiniteDiffTol) << j;
  }
}

TEST(LinearNF4, SavesNoDenseWeightForBackward) {
  Fixture f = make(256, 512, false);
  const torch::Tensor x = torch::randn({4, 512}).requires_grad_(true);
  const torch::Tensor y = linear_4bit(x, f.q);
  auto* node = dynamic_cast<torch::autograd::CppNode<LinearNF4Function>*>(y.grad_fn().get());
  ASSERT_NE(node, nullptr);
  int64_t saved_bytes = 0;
  for (const auto& kv : node->ctx_.saved_data) {
    if (!kv.second.isTensor() || !kv.second.toTensor().defined()) continue;
    const torch::Tensor t = kv.second.toTensor();
    EXPECT_LT(t.numel(), 256 * 512 / 2 + 1) << kv.first << " looks like a dense weight";
    saved_bytes += static_cast<int64_t>(t.nbytes());
  }
  EXPECT_EQ(saved_bytes, f.q.nbytes());  // exactly the 4-bit parts
  EXPECT_EQ(node->ctx_.get_saved_variables().size(), 0u);
}

TEST(LinearNF4, WeightGetsNoGradAndIsNotAParameter) {
  auto lin = Linear4bitImpl::from_dense(torch::randn({32, 64}), QuantType::kNF4, 64, true, torch::randn({32}));
  EXPECT_EQ(lin->parameters().size(), 0u);
  auto buffers = lin->named_buffers();
  ASSERT_TRUE(buffers.contains("weight"));
  EXPECT_EQ(buffers["weight"].scalar_type(), torch::kUInt8);
  EXPECT_TRUE(buffers.contains("weight_absmax"));
  EXPECT_TRUE(buffers.contains("weight_nested_absmax"));
  EXPECT_TRUE(buffers.contains("bias"));
  EXPECT_EQ(lin->in_features(), 64);
  EXPECT_EQ(lin->out_features(), 32);
  const torch::Tensor x = torch::randn({2, 64}).requires_grad_(true);
  lin->forward(x).sum().backward();
  EXPECT_TRUE(x.grad().defined());
  for (const auto& b : lin->buffers()) EXPECT_FALSE(b.grad().defined());
  EXPECT_FALSE(lin->bias().grad().defined());
}

TEST(LinearNF4, ModuleToDtypeKeepsFourBitParts) {
  auto lin = Linear4bitImpl::from_dense(torch::randn({16, 64}), QuantType::kNF4, 64, true, torch::randn({16}));
  const torch::Tensor x = torch::randn({3, 64});
  const torch::Tensor before = lin->forward(x);
  lin->to(torch::kBFloat16);
  EXPECT_EQ(lin->named_buffers()["weight"].scalar_type(), torch::kUInt8);
  EXPECT_EQ(lin->named_buffers()["weight_nested_absmax"].scalar_type(), torch::kFloat32);
  EXPECT_EQ(lin->bias().scalar_type(), torch::kBFloat16);
  lin->to_device(torch::kCPU);
  const torch::Tensor after = lin->forward(x.to(torch::kBFloat16));
  EXPECT_LT(rel_err(after, before), kBf16RelTol);
}

// The CPU path dequantizes into a per-thread scratch buffer reused across calls: layers of different shapes and
// dtypes, interleaved forward and backward (as in a model, with a later layer's forward between), stay exact.
TEST(LinearNF4, ReusedScratchKeepsLayersIndependent) {
  Fixture big = make(96, 64, false, 31), small = make(16, 96, false, 32);
  const torch::Tensor x = torch::randn({5, 64}, torch::kFloat64).to(torch::kFloat32).requires_grad_(true);
  const torch::Tensor h = linear_4bit(x, big.q);                         // (5, 96)
  const torch::Tensor y = linear_4bit(h.to(torch::kBFloat16), small.q);  // another shape and dtype in between
  const torch::Tensor g = torch::randn({5, 16});
  y.to(torch::kFloat32).backward(g);
  const torch::Tensor x64 = x.detach().to(torch::kFloat64);
  const torch::Tensor h64 = torch::matmul(x64, big.w64.t());
  EXPECT_LT(rel_err(h, h64), kFp32RelTol);
  EXPECT_LT(rel_err(y, torch::matmul(h64, small.w64.t())), kBf16RelTol);
  const torch::Tensor gx64 = torch::matmul(torch::matmul(g.to(torch::kFloat64), small.w64), big.w64);
  EXPECT_LT(rel_err(x.grad(), gx64), kBf16RelTol);
}

}  // namespace
}  // namespace qlora::quant
