// RoPE against hand-computed values: inv_freq formulas (default, linear, llama3) and the rotate_half rotation.
#include <gtest/gtest.h>

#include <cmath>

#include "ops/rope.h"

namespace qlora::test {
namespace {

constexpr double kFp32Rel = 2e-6;

TEST(Rope, DefaultInvFreqByHand) {
  io::LlamaConfig c;
  c.head_dim = 128;
  c.rope_theta = 10000.0;
  torch::Tensor f = ops::rope_inv_freq(c);
  ASSERT_EQ(f.numel(), 64);
  for (int i : {0, 1, 17, 63}) {
    const double expect = 1.0 / std::pow(10000.0, 2.0 * i / 128.0);
    EXPECT_NEAR(f[i].item<double>(), expect, kFp32Rel * expect) << i;
  }
  EXPECT_EQ(f[0].item<double>(), 1.0);
}

TEST(Rope, LinearScalingDividesByFactor) {
  io::LlamaConfig c;
  c.head_dim = 16;
  c.rope_theta = 10000.0;
  c.rope_scaling.type = "linear";
  c.rope_scaling.factor = 4.0;
  torch::Tensor f = ops::rope_inv_freq(c);
  for (int i : {0, 3, 7}) {
    const double expect = 1.0 / std::pow(10000.0, 2.0 * i / 16.0) / 4.0;
    EXPECT_NEAR(f[i].item<double>(), expect, kFp32Rel * expect) << i;
  }
}

// Llama-3.1 parameters: theta 500000, factor 8, low 1, high 4, original context 8192.
TEST(Rope, Llama3ScalingByHand) {
  io::LlamaConfig c;
  c.head_dim = 128;
  c.rope_theta = 500000.0;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8192;
  torch::Tensor f = ops::rope_inv_freq(c);
  int n_high = 0, n_low = 0, n_mid = 0;
  for (int i = 0; i < 64; ++i) {
    const double base = 1.0 / std::pow(500000.0, 2.0 * i / 128.0);
    const double wavelen = 2.0 * M_PI / base;
    double expect;
    if (wavelen < 8192.0 / 4.0) {  // high frequency: unchanged
      expect = base;
      ++n_high;
    } else if (wavelen > 8192.0 / 1.0) {  // low frequency: divided by the factor
      expect = base / 8.0;
      ++n_low;
    } else {  // blend
      const double s = (8192.0 / wavelen - 1.0) / (4.0 - 1.0);
      expect = (1.0 - s) * base / 8.0 + s * base;
      ++n_mid;
    }
    EXPECT_NEAR(f[i].item<double>(), expect, 1e-5 * expect) << "dim pair " << i;
  }
  // All three regimes are exercised with these parameters.
  EXPECT_GT(n_high, 0);
  EXPECT_GT(n_low, 0);
  EXPECT_GT(n_mid, 0);
  // Hand-checked spot values: i = 0 is unchanged (1.0); i = 63 is divided by 8.
  EXPECT_EQ(f[0].item<double>(), 1.0);
  EXPECT_NEAR(f[63].item<double>(), 1.0 / std::pow(500000.0, 126.0 / 128.0) / 8.0, 1e-5 * f[63].item<double>());
}

TEST(Rope, RejectsUnknownScaling) {
  io::LlamaConfig c;
  c.head_dim = 8;
  c.rope_scaling.type = "yarn";
  EXPECT_THROW(ops::rope_inv_freq(c), std::runtime_error);
}

TEST(Rope, RotateHalfByHand) {
  // d = 4, one head, position 3, inv_freq = {1, 0.01} (theta 10000, d 4).
  io::LlamaConfig c;
  c.head_dim = 4;
  c.rope_theta = 10000.0;
  torch::Tensor inv = ops::rope_inv_freq(c);
  EXPECT_NEAR(inv[1].item<double>(), 0.01, 1e-8);
  torch::Tensor pos = torch::full({1, 1}, 3, torch::kInt64);
  auto [cos, sin] = ops::rope_cos_sin(inv, pos, torch::kFloat32);
  torch::Tensor x = torch::tensor({1.0f, 2.0f, 3.0f, 4.0f}).view({1, 1, 1, 4});
  torch::Tensor y = ops::apply_rope(x, cos, sin).view({4});
  const double a0 = 3.0, a1 = 0.03;
  const double expect[4] = {1 * std::cos(a0) - 3 * std::sin(a0), 2 * std::cos(a1) - 4 * std::sin(a1),
                            3 * std::cos(a0) + 1 * std::sin(a0), 4 * std::cos(a1) + 2 * std::sin(a1)};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[i].item<double>(), expect[i], 1e-5) << i;
}

}  // namespace
}  // namespace qlora::test
