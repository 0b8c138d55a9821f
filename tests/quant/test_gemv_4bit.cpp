// The 4-bit GEMV specification (quant/gemv_4bit.h, gemv_4bit_ref; the CUDA kernel is checked against it bit for bit
// in tests/cuda): against a float64 product of the dequantized weight and x, for NF4/FP4, with and without double
// quantization, several blocksizes and shapes.
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quant/linear_4bit.h"
#include "quant/quantized_tensor.h"

namespace qlora::quant {
namespace {

// fp32 accumulation over `in` products of bf16-exact values: the error bound grows like in * eps * sum|w x|;
// 1e-5 relative to that sum (in <= 4096) is far above fp32 rounding and far below a wrong element or order.
constexpr double kRelTol = 1e-5;

TEST(Gemv4bit, ReferenceEqualsFloat64ProductOfTheDequantizedWeight) {
  torch::manual_seed(3);
  const CpuGemvScope exact(CpuGemv::kExact);  // gemv_4bit on the CPU: quant/gemv_4bit.h's kernel, not the q8 default
  for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
    for (bool dq : {true, false}) {
      for (auto [out, in, bs] : {std::tuple<int64_t, int64_t, int64_t>{7, 32, 64},
                                 {33, 96, 32},
                                 {64, 1024, 64},
                                 {5, 4096, 4096},
                                 {19, 640, 128}}) {
        const torch::Tensor w = torch::randn({out, in}, torch::kBFloat16);
        const QuantizedTensor q = quantize_4bit(w, type, bs, dq);
        const torch::Tensor x = torch::randn({in}, torch::kBFloat16);
        const torch::Tensor y = gemv_4bit(q, x);
        ASSERT_EQ(y.sizes(), torch::IntArrayRef({out}));
        const torch::Tensor wd = dequantize_4bit(q, torch::kFloat32).to(torch::kFloat64);
        const torch::Tensor xd = x.to(torch::kFloat64);
        const torch::Tensor ref = wd.matmul(xd);
        const torch::Tensor scale = wd.abs().matmul(xd.abs());
        // y is rounded to bf16 (8 bits of mantissa): its own rounding dominates.
        const torch::Tensor err = (y.to(torch::kFloat64) - ref).abs();
        const torch::Tensor bound = ref.abs() * (1.0 / 256) + scale * kRelTol;
        EXPECT_TRUE((err <= bound).all().item<bool>()) << quant_type_name(type) << " dq=" << dq << " " << out << "x"
                                                       << in << " bs=" << bs << " max err " << err.max().item<double>();
      }
    }
  }
}

TEST(Gemv4bit, RejectsRowsThatAreNotAMultipleOf32) {
  const QuantizedTensor q = quantize_4bit(torch::randn({4, 48}), QuantType::kNF4, 64, true);
  EXPECT_THROW(gemv_4bit(q, torch::randn({48}).to(torch::kBFloat16)), c10::Error);
}

TEST(Gemv4bit, CpuTensorsTakeTheGemvPathOfLinear4bitOnlyUnderInferenceMode) {
  const QuantizedTensor q = quantize_4bit(torch::randn({8, 64}), QuantType::kNF4, 64, true);
  EXPECT_FALSE(gemv_4bit_applies(q, torch::randn({1, 64}).to(torch::kBFloat16)));
  c10::InferenceMode inference;
  EXPECT_TRUE(gemv_4bit_applies(q, torch::randn({1, 64}).to(torch::kBFloat16)));
}

}  // namespace
}  // namespace qlora::quant
