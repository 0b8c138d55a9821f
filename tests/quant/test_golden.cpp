// bitsandbytes compatibility: codebooks and every golden case of tests/fixtures/nf4_vectors.json, bit for bit,
// through every CPU dequant path and the LibTorch-ops path.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quant/dequant_kernels.h"
#include "quant/quantized_tensor.h"
#include "quant_test_util.h"

namespace qlora::quant {
namespace {

using namespace qlora::test;

torch::Tensor vec_tensor(const std::vector<float>& v) {
  return torch::from_blob(const_cast<float*>(v.data()), {static_cast<int64_t>(v.size())}, torch::kFloat32).clone();
}

TEST(Nf4Codebook, EqualsBitsandbytesTableBitForBit) {
  EXPECT_EQ(to_hex(vec_tensor(nf4_code())), nf4_golden()["nf4_code_hex"].get<std::string>());
  // Independent spot values from formats.md 1.1.
  EXPECT_EQ(nf4_code()[0], -1.0f);
  EXPECT_EQ(nf4_code()[7], 0.0f);
  EXPECT_EQ(nf4_code()[15], 1.0f);
  EXPECT_EQ(nf4_code()[8], 0.07958029955625534f);
}

TEST(Fp4Codebook, EqualsBitsandbytesTableOver12) {
  // get_4bit_type("fp4"): raw E2M1 (bias 2) values / 12, index = bit pattern, bit 3 = sign.
  const double raw[16] = {0, 0.0625, 8, 12, 4, 6, 2, 3, -0.0, -0.0625, -8, -12, -4, -6, -2, -3};
  ASSERT_EQ(fp4_code().size(), 16u);
  for (int i = 0; i < 16; ++i) {
    const float want = static_cast<float>(raw[i] / 12.0);
    EXPECT_EQ(fp4_code()[i], want) << i;
    EXPECT_EQ(std::signbit(fp4_code()[i]), i >= 8) << i;
  }
  EXPECT_EQ(fp4_code()[3], 1.0f);
  EXPECT_EQ(fp4_code()[11], -1.0f);
}

TEST(DynamicMap, EqualsGoldenBitForBit) {
  const auto& map = dynamic_map_signed();
  ASSERT_EQ(map.size(), 256u);
  EXPECT_EQ(to_hex(vec_tensor(map)), nf4_golden()["dynamic_map_signed_hex"].get<std::string>());
  EXPECT_EQ(map.front(), -0.99296875f);
  EXPECT_EQ(map.back(), 1.0f);
}

class GoldenCase : public ::testing::TestWithParam<int> {};

TEST_P(GoldenCase, QuantizeAndDequantizeBitExact) {
  const auto& c = nf4_golden()["cases"][static_cast<size_t>(GetParam())];
  SCOPED_TRACE(c["name"].get<std::string>());
  const torch::ScalarType dtype = golden_dtype(c["dtype"]);
  const std::vector<int64_t> shape = c["shape"].get<std::vector<int64_t>>();
  const int64_t bs = c["blocksize"].get<int64_t>();
  const bool nested = c["nested"].get<bool>();
  const torch::Tensor x = tensor_from_hex(c["input_hex"], dtype, shape);

  // Plain quantization: packed codes, fp32 absmax, fp32 dequant.
  const QuantizedTensor plain = quantize_4bit(x, QuantType::kNF4, bs, /*double_quant=*/false);
  EXPECT_EQ(to_hex(plain.packed), c["packed_hex"].get<std::string>());
  EXPECT_TRUE(bits_equal(plain.absmax, f32_from_json(c["absmax_fp32"])));
  const torch::Tensor want_plain = c.contains("dequant_plain_fp32_hex")
                                       ? tensor_from_hex(c["dequant_plain_fp32_hex"], torch::kFloat32, shape)
                                       : f32_from_json(c["dequant_plain_fp32"]).view(shape);
  for (auto isa : {detail::Isa::kScalar, detail::Isa::kAvx2, detail::Isa::kAvx512}) {
    if (!detail::cpu_supports(isa)) continue;
    torch::Tensor out = torch::empty(shape, torch::kFloat32);
    detail::dequantize_cpu_into(plain, out, isa);
    EXPECT_EQ(first_bit_mismatch(out, want_plain), -1) << detail::isa_name(isa);
  }
  EXPECT_TRUE(bits_equal(detail::dequantize_ops(plain, torch::kFloat32), want_plain));
  EXPECT_TRUE(bits_equal(dequantize_4bit(plain, torch::kFloat32), want_plain));
  if (!nested) return;

  // Double quantization: offset, 8-bit absmax, absmax2, restored absmax, dequant in the input dtype.
  const QuantizedTensor q = quantize_4bit(x, QuantType::kNF4, bs, /*double_quant=*/true);
  ASSERT_TRUE(q.double_quant);
  EXPECT_EQ(to_hex(q.packed), c["packed_hex"].get<std::string>());
  const float want_offset = static_cast<float>(c["absmax_mean_offset"].get<double>());
  EXPECT_EQ(q.offset, want_offset) << "offset differs by " << (q.offset - want_offset);
  EXPECT_EQ(q.absmax.scalar_type(), torch::kUInt8);
  EXPECT_EQ(to_hex(q.absmax), c["absmax_q8_hex"].get<std::string>());
  EXPECT_TRUE(bits_equal(q.absmax2, f32_from_json(c["absmax2_fp32"])));
  const torch::Tensor restored = f32_from_json(c["absmax_restored_fp32"]);
  EXPECT_EQ(first_bit_mismatch(q.absmax_fp32(), restored), -1);
  const torch::Tensor want = tensor_from_hex(c["dequant_nested_in_input_dtype_hex"], dtype, shape);
  for (auto isa : {detail::Isa::kScalar, detail::Isa::kAvx2, detail::Isa::kAvx512}) {
    if (!detail::cpu_supports(isa)) continue;
    torch::Tensor out = torch::empty(shape, torch::TensorOptions().dtype(dtype));
    detail::dequantize_cpu_into(q, out, isa);
    EXPECT_EQ(first_bit_mismatch(out, want), -1) << detail::isa_name(isa);
  }
  EXPECT_EQ(first_bit_mismatch(detail::dequantize_ops(q, dtype), want), -1) << "ops path";
  EXPECT_TRUE(bits_equal(dequantize_4bit(q, dtype), want));
}

INSTANTIATE_TEST_SUITE_P(Nf4Golden, GoldenCase,
                         ::testing::Range(0, static_cast<int>(nf4_golden()["cases"].size())));

TEST(Nf4Golden, HasAllSevenCases) { EXPECT_EQ(nf4_golden()["cases"].size(), 7u); }

}  // namespace
}  // namespace qlora::quant
