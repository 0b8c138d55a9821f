// ops::gemv_bf16 (one fp32 or bf16 row through a bf16 weight) on every kernel path the CPU has: exact where the sums
// are exact (small integers), and within the float summation bound of a float64 product elsewhere.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "common/cpu_isa.h"
#include "ops/dense_gemv.h"

namespace qlora::ops {
namespace {

std::vector<Isa> every_path() {
  std::vector<Isa> isas = {Isa::kScalar};
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (cpu_supports(isa)) isas.push_back(isa);
  }
  return isas;
}

// Widths around the vector paths' steps (8 and 16 lanes, 4 accumulators) and tails; rows split over threads.
const std::vector<int64_t> kWidths = {1, 7, 8, 31, 32, 64, 100, 768, 2051};

// Integers in [-8, 8] times integers in [-4, 4]: every product and partial sum is exact in fp32, so every path's
// fp32 result equals the float64 one in any summation order, and its bf16 result that sum rounded once to bf16. A
// skipped, repeated or misplaced element shows.
TEST(DenseGemv, SmallIntegerProductsAreExactOnEveryPath) {
  torch::manual_seed(1);
  for (int64_t in : kWidths) {
    const torch::Tensor w = torch::randint(-8, 9, {37, in}).to(torch::kBFloat16);
    const torch::Tensor x = torch::randint(-4, 5, {in}).to(torch::kFloat32);
    const torch::Tensor expect = torch::mv(w.to(torch::kFloat64), x.to(torch::kFloat64));
    for (Isa isa : every_path()) {
      const torch::Tensor y = gemv_bf16(w, x, isa);
      ASSERT_EQ(y.scalar_type(), torch::kFloat32);
      EXPECT_TRUE(torch::equal(y.to(torch::kFloat64), expect)) << "in " << in << ", " << isa_name(isa);
      const torch::Tensor yb = gemv_bf16(w, x.to(torch::kBFloat16), isa);
      ASSERT_EQ(yb.scalar_type(), torch::kBFloat16);
      EXPECT_TRUE(torch::equal(yb, expect.to(torch::kFloat32).to(torch::kBFloat16)))
          << "bf16 row, in " << in << ", " << isa_name(isa);
    }
  }
}

// Random values: |y - y64| <= gamma_n * sum |w_i x_i| (gamma_n = n u / (1 - n u), u = 2^-24), the bound of an fp32
// sum of n exact products in any order, row by row; a bf16 row's result adds its one rounding to bf16 (2^-8 of it).
TEST(DenseGemv, RandomRowsAreWithinTheSummationBoundOfFloat64) {
  torch::manual_seed(2);
  for (int64_t in : kWidths) {
    const torch::Tensor w = torch::randn({300, in}).to(torch::kBFloat16);
    for (auto dt : {torch::kFloat32, torch::kBFloat16}) {
      const torch::Tensor x = torch::randn({in}).to(dt);
      const torch::Tensor w64 = w.to(torch::kFloat64), x64 = x.to(torch::kFloat64);
      const torch::Tensor expect = torch::mv(w64, x64);
      const double u = std::ldexp(1.0, -24), n = static_cast<double>(in);
      torch::Tensor bound = torch::mv(w64.abs(), x64.abs()) * (n * u / (1.0 - n * u));
      if (dt == torch::kBFloat16) bound = bound + (expect.abs() + bound) * std::ldexp(1.0, -8);
      for (Isa isa : every_path()) {
        const torch::Tensor y = gemv_bf16(w, x, isa);
        ASSERT_EQ(y.scalar_type(), dt);
        const torch::Tensor err = (y.to(torch::kFloat64) - expect).abs();
        EXPECT_TRUE((err <= bound).all().item<bool>())
            << "in " << in << ", " << c10::toString(dt) << ", " << isa_name(isa) << ": worst error / bound "
            << (err / bound.clamp_min(1e-300)).max().item<double>();
      }
    }
  }
}

TEST(DenseGemv, RefusesOtherDtypesAndShapes) {
  const torch::Tensor w = torch::ones({4, 8}, torch::kBFloat16);
  EXPECT_THROW(gemv_bf16(w.to(torch::kFloat32), torch::ones({8})), c10::Error);
  EXPECT_THROW(gemv_bf16(w, torch::ones({8}, torch::kHalf)), c10::Error);
  EXPECT_THROW(gemv_bf16(w, torch::ones({7})), c10::Error);
  EXPECT_THROW(gemv_bf16(w.t(), torch::ones({4})), c10::Error);
}

}  // namespace
}  // namespace qlora::ops
