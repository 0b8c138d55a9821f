// Every quantize path (_avx512, _avx2 where the CPU has them) writes the same packed bytes and absmax as the
// scalar quantize_blocks_ref (Isa::kScalar; which the golden bitsandbytes vectors pin down, test_golden.cpp), on random
// data of awkward sizes and on values that sit exactly on decision bounds, at +-0, +-inf, NaN and subnormals.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <limits>

#include "quant/dequant_kernels.h"
#include "quant/quantized_tensor.h"

namespace qlora::quant {
namespace {

using qlora::Isa;

void expect_same(const QuantizedTensor& a, const QuantizedTensor& b, const std::string& what) {
  EXPECT_TRUE(torch::equal(a.packed, b.packed)) << what << ": packed bytes differ";
  if (a.double_quant) {
    EXPECT_TRUE(torch::equal(a.absmax, b.absmax)) << what << ": qabsmax differs";
    EXPECT_TRUE(torch::equal(a.absmax2, b.absmax2)) << what << ": absmax2 differs";
    EXPECT_EQ(a.offset, b.offset) << what;
  } else {
    // Bitwise (NaN-safe): compare the fp32 bits.
    EXPECT_TRUE(torch::equal(a.absmax.view(torch::kInt32), b.absmax.view(torch::kInt32))) << what << ": absmax";
  }
}

TEST(QuantizePaths, SimdEqualsScalarOnRandomData) {
  torch::manual_seed(21);
  const std::vector<std::pair<int64_t, int64_t>> cases = {{1, 32},       {31, 32},      {33, 32},    {77, 64},
                                                          {1001, 64},    {4097, 128},   {9999, 512}, {70001, 1024},
                                                          {40000, 4096}, {64 * 301, 64}};
  int checked = 0;
  for (const auto& [numel, bs] : cases) {
    const torch::Tensor w = torch::randn({numel}) * torch::exp(torch::randn({numel}) * 2);
    for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kHalf}) {
      const torch::Tensor x = w.to(dt);
      for (auto type : {QuantType::kNF4, QuantType::kFP4}) {
        for (bool dq : {false, true}) {
          const QuantizedTensor ref = detail::quantize_4bit_with(x, type, bs, dq, Isa::kScalar);
          for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
            if (!cpu_supports(isa)) continue;
            expect_same(detail::quantize_4bit_with(x, type, bs, dq, isa), ref,
                        std::string(isa_name(isa)) + " n=" + std::to_string(numel) + " bs=" + std::to_string(bs) + " " +
                            c10::toString(dt) + " " + quant_type_name(type));
            ++checked;
          }
        }
      }
    }
  }
  RecordProperty("simd_cases_checked", checked);
}

TEST(QuantizePaths, SimdEqualsScalarOnBoundsAndSpecialValues) {
  // One block of 64 per special pattern: values exactly on each decision bound (and one ulp either side)
  // of both codebooks, with the block's absmax 1.0 so x / absmax is exact.
  std::vector<float> v;
  for (const auto* code : {&nf4_code(), &fp4_code()}) {
    const detail::CodeBounds cb = detail::code_bounds(*code);
    for (size_t i = 0; i < 15; ++i) {
      const float b = cb.bounds[i];
      v.insert(v.end(), {b, std::nextafter(b, 2.0f), std::nextafter(b, -2.0f)});
    }
  }
  while (v.size() % 64 != 63) v.push_back(0.25f);
  v.push_back(1.0f);  // absmax of the last bound block
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const float tiny = std::numeric_limits<float>::denorm_min();
  const std::vector<float> specials = {0.0f, -0.0f, nan, -nan, inf, -inf, tiny, -tiny, 1e-30f, -1e-30f, 3.0f};
  for (float s : specials) {
    for (int i = 0; i < 64; ++i) v.push_back(i % 3 == 0 ? s : (i % 3 == 1 ? 0.5f * static_cast<float>(i) : -0.0f));
  }
  for (int i = 0; i < 64; ++i) v.push_back(tiny * static_cast<float>(i % 5));  // a block of subnormals only
  for (int i = 0; i < 64; ++i) v.push_back(nan);                               // a block of NaN only
  const torch::Tensor w = torch::from_blob(v.data(), {static_cast<int64_t>(v.size())}, torch::kFloat32).clone();
  for (auto type : {QuantType::kNF4, QuantType::kFP4}) {
    for (int64_t bs : {32, 64}) {
      const QuantizedTensor ref = detail::quantize_4bit_with(w, type, bs, false, Isa::kScalar);
      for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
        if (!cpu_supports(isa)) continue;
        expect_same(detail::quantize_4bit_with(w, type, bs, false, isa), ref,
                    std::string(isa_name(isa)) + " " + quant_type_name(type) + " bs=" + std::to_string(bs));
      }
    }
  }
}

TEST(QuantizePaths, CodeBoundsAreSortedMidpoints) {
  for (const auto* code : {&nf4_code(), &fp4_code()}) {
    const detail::CodeBounds cb = detail::code_bounds(*code);
    for (size_t i = 0; i + 1 < 15; ++i) EXPECT_LE(cb.bounds[i], cb.bounds[i + 1]);
    for (size_t i = 0; i < 15; ++i) {
      const double lo = (*code)[cb.order[i]], hi = (*code)[cb.order[i + 1]];
      EXPECT_LE(lo, hi);
      EXPECT_NEAR(cb.bounds[i], (lo + hi) / 2.0, 1e-7);
    }
    EXPECT_TRUE(std::isinf(cb.bounds[15]));
  }
  EXPECT_FALSE(detail::code_bounds(nf4_code()).remap);  // NF4's table is sorted
  EXPECT_TRUE(detail::code_bounds(fp4_code()).remap);
}

}  // namespace
}  // namespace qlora::quant
