// LoraLinear against float64 references written here: forward, gradients of A, B and x, scaling, init, dropout.
#include <gtest/gtest.h>

#include <cmath>

#include "lora/lora_linear.h"

namespace qlora::lora {
namespace {

constexpr double kF32Tol = 1e-5;   // fp32 path vs float64 reference (relative to max |ref|)
constexpr double kBf16Tol = 2e-2;  // bf16 activations vs float64 reference (relative to max |ref|)

// A plain frozen dense base, independent of model/: y = x Wᵀ.
class DenseBase : public model::LinearLayerImpl {
 public:
  explicit DenseBase(torch::Tensor w) : w_(register_buffer("weight", std::move(w))) {}
  torch::Tensor forward(const torch::Tensor& x) override { return torch::linear(x, w_.to(x.scalar_type())); }
  int64_t in_features() const override { return w_.size(1); }
  int64_t out_features() const override { return w_.size(0); }
  torch::Tensor dense_weight(torch::ScalarType dtype) const override { return w_.to(dtype); }

 private:
  torch::Tensor w_;
};

double max_rel_err(const torch::Tensor& got, const torch::Tensor& ref) {
  auto g = got.to(torch::kFloat64), r = ref.to(torch::kFloat64);
  return (g - r).abs().max().item<double>() / std::max(r.abs().max().item<double>(), 1e-30);
}

struct LayerCase {
  int64_t in = 48, out = 40, r = 4;
  torch::Tensor w, a, b;
  LayerCase() {
    torch::manual_seed(7);
    w = torch::randn({out, in}) * 0.1;
    a = torch::randn({r, in}) * 0.2;
    b = torch::randn({out, r}) * 0.3;
  }
  std::shared_ptr<LoraLinearImpl> make(double alpha, bool rslora, double dropout = 0.0,
                                       torch::ScalarType storage = torch::kFloat32) {
    LoraLinearOptions o;
    o.dtype = storage;
    o.r = r;
    o.alpha = alpha;
    o.rslora = rslora;
    o.dropout = dropout;
    auto layer = std::make_shared<LoraLinearImpl>(std::make_shared<DenseBase>(w.clone()), o, /*seed=*/1);
    layer->set_weights(a, b);
    return layer;
  }
};

TEST(LoraLinear, ZeroBEqualsBaseExactly) {
  torch::manual_seed(3);
  auto w = torch::randn({24, 16});
  auto base = std::make_shared<DenseBase>(w);
  LoraLinearOptions o;
  o.r = 8;
  o.dropout = 0.1;
  LoraLinearImpl layer(base, o, /*seed=*/5);
  EXPECT_EQ(layer.lora_B().abs().sum().item<double>(), 0.0);
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    auto x = torch::randn({2, 3, 16}).to(dtype);
    layer.train();
    EXPECT_TRUE(torch::equal(layer.forward(x), base->forward(x))) << dtype;
    layer.eval();
    EXPECT_TRUE(torch::equal(layer.forward(x), base->forward(x))) << dtype;
  }
  EXPECT_TRUE(torch::equal(layer.dense_weight(torch::kFloat32), w));
}

TEST(LoraLinear, InitIsKaimingUniformAndDeterministic) {
  auto base = std::make_shared<DenseBase>(torch::zeros({32, 256}));
  LoraLinearOptions o;
  o.r = 16;
  LoraLinearImpl l1(base, o, /*seed=*/42), l2(base, o, /*seed=*/42), l3(base, o, /*seed=*/43);
  const double bound = 1.0 / std::sqrt(256.0);
  EXPECT_LE(l1.lora_A().abs().max().item<double>(), bound);
  // U(-b, b): std = b / sqrt(3); 4096 samples -> a few % sampling error.
  EXPECT_NEAR(l1.lora_A().std().item<double>(), bound / std::sqrt(3.0), 0.05 * bound);
  EXPECT_NEAR(l1.lora_A().mean().item<double>(), 0.0, 0.05 * bound);
  EXPECT_TRUE(torch::equal(l1.lora_A(), l2.lora_A()));
  EXPECT_FALSE(torch::equal(l1.lora_A(), l3.lora_A()));
  EXPECT_EQ(l1.lora_A().scalar_type(), torch::kFloat32);
  EXPECT_EQ(l1.lora_B().scalar_type(), torch::kFloat32);
  EXPECT_EQ(l1.lora_A().sizes(), (std::vector<int64_t>{16, 256}));
  EXPECT_EQ(l1.lora_B().sizes(), (std::vector<int64_t>{32, 16}));
}

TEST(LoraLinear, OnlyAdapterParametersRequireGrad) {
  LayerCase s;
  auto layer = s.make(8.0, false);
  std::vector<std::string> trainable;
  for (const auto& p : layer->named_parameters()) {
    if (p.value().requires_grad()) trainable.push_back(p.key());
  }
  EXPECT_EQ(trainable, (std::vector<std::string>{"lora_A", "lora_B"}));
  for (const auto& b : layer->named_buffers()) EXPECT_FALSE(b.value().requires_grad()) << b.key();
}

// y = x Wᵀ + s (x Aᵀ) Bᵀ; with upstream gradient G: dB = s Gᵀ (x Aᵀ), dA = s (G B)ᵀ x, dx = G W + s G B A.
void check_against_reference(double alpha, bool rslora, torch::ScalarType xdtype, double tol,
                             torch::ScalarType storage = torch::kFloat32) {
  LayerCase s;
  auto layer = s.make(alpha, rslora, 0.0, storage);
  ASSERT_EQ(layer->lora_A().scalar_type(), storage);
  ASSERT_EQ(layer->lora_B().scalar_type(), storage);
  const double scale = rslora ? alpha / std::sqrt(double(s.r)) : alpha / double(s.r);
  EXPECT_DOUBLE_EQ(layer->scale(), scale);

  torch::manual_seed(11);
  auto x64 = torch::randn({3, 5, s.in}, torch::kFloat64);
  auto g64 = torch::randn({3, 5, s.out}, torch::kFloat64);
  auto x = x64.to(xdtype).requires_grad_(true);
  auto y = layer->forward(x);
  ASSERT_EQ(y.scalar_type(), xdtype);
  (y.to(torch::kFloat64) * g64).sum().backward();

  // Reference on the values the layer actually saw (x rounded to xdtype), all in float64.
  auto xr = x.detach().to(torch::kFloat64).reshape({-1, s.in});
  auto g = g64.reshape({-1, s.out});
  // A and B as stored (rounded to the storage dtype by set_weights).
  auto W = s.w.to(torch::kFloat64), A = s.a.to(storage).to(torch::kFloat64), B = s.b.to(storage).to(torch::kFloat64);
  auto y_ref = xr.matmul(W.t()) + xr.matmul(A.t()).matmul(B.t()) * scale;
  auto dB_ref = g.t().matmul(xr.matmul(A.t())) * scale;
  auto dA_ref = g.matmul(B).t().matmul(xr) * scale;
  auto dx_ref = g.matmul(W) + g.matmul(B).matmul(A) * scale;

  EXPECT_LT(max_rel_err(y.reshape({-1, s.out}), y_ref), tol);
  ASSERT_TRUE(layer->lora_A().grad().defined());
  EXPECT_EQ(layer->lora_A().grad().scalar_type(), storage);
  EXPECT_EQ(layer->lora_B().grad().scalar_type(), storage);
  EXPECT_LT(max_rel_err(layer->lora_A().grad(), dA_ref), tol);
  EXPECT_LT(max_rel_err(layer->lora_B().grad(), dB_ref), tol);
  EXPECT_LT(max_rel_err(x.grad().reshape({-1, s.in}), dx_ref), tol);

  // dense_weight = W + s B A
  EXPECT_LT(max_rel_err(layer->dense_weight(torch::kFloat32), W + B.matmul(A) * scale), kF32Tol);
}

TEST(LoraLinear, ForwardBackwardMatchFloat64ReferenceAlphaOverR) {
  check_against_reference(/*alpha=*/8.0, /*rslora=*/false, torch::kFloat32, kF32Tol);  // scale 2
}

TEST(LoraLinear, ForwardBackwardMatchFloat64ReferenceRsLora) {
  check_against_reference(/*alpha=*/8.0, /*rslora=*/true, torch::kFloat32, kF32Tol);  // scale 4
}

TEST(LoraLinear, ForwardBackwardBf16Activations) {
  check_against_reference(/*alpha=*/16.0, /*rslora=*/false, torch::kBFloat16, kBf16Tol);
}

// bf16 storage (lora.dtype: bf16): A, B and their gradients in bf16, same maths.
TEST(LoraLinear, ForwardBackwardBf16Storage) {
  check_against_reference(/*alpha=*/16.0, /*rslora=*/false, torch::kBFloat16, kBf16Tol, torch::kBFloat16);
  check_against_reference(/*alpha=*/8.0, /*rslora=*/false, torch::kFloat32, kBf16Tol, torch::kBFloat16);
}

TEST(LoraLinear, ScaleFormulas) {
  EXPECT_DOUBLE_EQ(lora_scale(16, 32.0, false), 2.0);
  EXPECT_DOUBLE_EQ(lora_scale(16, 32.0, true), 8.0);
  EXPECT_DOUBLE_EQ(lora_scale(64, 16.0, false), 0.25);
  EXPECT_DOUBLE_EQ(lora_scale(64, 16.0, true), 2.0);
}

TEST(LoraLinear, DropoutOnlyOnLoraBranchAndOnlyInTraining) {
  LayerCase s;
  auto layer = s.make(8.0, false, /*dropout=*/0.5);
  auto nodrop = s.make(8.0, false, /*dropout=*/0.0);
  torch::manual_seed(5);
  auto x = torch::randn({4, s.in});
  layer->eval();
  EXPECT_TRUE(torch::allclose(layer->forward(x), nodrop->forward(x)));
  layer->train();
  auto y_train = layer->forward(x);
  EXPECT_FALSE(torch::allclose(y_train, nodrop->forward(x), 1e-3, 1e-3));
  // Base path untouched: the difference to the base lies in the span of the B columns (LoRA branch).
  auto base_y = torch::linear(x, s.w);
  auto delta = (y_train - base_y).to(torch::kFloat64);
  auto B = s.b.to(torch::kFloat64);
  auto coef = std::get<0>(torch::linalg_lstsq(B, delta.t(), c10::nullopt, c10::nullopt));
  auto resid = B.matmul(coef) - delta.t();
  EXPECT_LT(resid.abs().max().item<double>(), 1e-4);
  // With B = 0 the training-mode output is the base exactly, dropout or not.
  layer->set_weights(s.a, torch::zeros_like(s.b));
  EXPECT_TRUE(torch::equal(layer->forward(x), base_y));
}

TEST(LoraLinear, SetWeightsRejectsWrongShapes) {
  LayerCase s;
  auto layer = s.make(8.0, false);
  EXPECT_THROW(layer->set_weights(s.a.t(), s.b), c10::Error);
  EXPECT_THROW(layer->set_weights(s.a, s.b.t()), c10::Error);
}

}  // namespace
}  // namespace qlora::lora
