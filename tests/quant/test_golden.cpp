// bitsandbytes compatibility: codebooks and every golden case of tests/fixtures/nf4_vectors.json (or of the file
// named by QLORA_QUANT_GOLDEN), bit for bit, through every CPU dequant path and the LibTorch-ops path.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "quant/dequant_kernels.h"
#include "quant/quantized_tensor.h"
#include "quant_test_util.h"

namespace qlora::quant {
namespace {

using namespace qlora::test;

// The cases: tests/fixtures/nf4_vectors.json, or the file named by QLORA_QUANT_GOLDEN (same format, written from the
// installed bitsandbytes by tests/interop_hf/check_bnb_quant.py; there a case may set "quant_type": "fp4").
const nlohmann::json& golden() {
  static const nlohmann::json j = []() -> nlohmann::json {
    const char* env = std::getenv("QLORA_QUANT_GOLDEN");
    if (env == nullptr) return nf4_golden();
    std::ifstream f(env);
    if (!f.good()) {
      ADD_FAILURE() << "QLORA_QUANT_GOLDEN: cannot read " << env;
      return nlohmann::json{{"cases", nlohmann::json::array()}};
    }
    return nlohmann::json::parse(f);
  }();
  return j;
}

torch::Tensor vec_tensor(const std::vector<float>& v) {
  return torch::from_blob(const_cast<float*>(v.data()), {static_cast<int64_t>(v.size())}, torch::kFloat32).clone();
}

// The golden's own quantized parts (bitsandbytes' bytes), to dequantize them with our kernels.
QuantizedTensor golden_parts(const nlohmann::json& c, QuantType type, torch::ScalarType dtype,
                             const std::vector<int64_t>& shape, int64_t bs, bool nested) {
  QuantizedTensor q;
  q.type = type;
  q.blocksize = bs;
  q.shape = shape;
  q.dtype = dtype;
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  q.packed = tensor_from_hex(c["packed_hex"], torch::kUInt8, {(n + 1) / 2});
  q.code = vec_tensor(type == QuantType::kNF4 ? nf4_code() : fp4_code());
  q.double_quant = nested;
  if (!nested) {
    q.absmax = f32_from_json(c["absmax_fp32"]);
    return q;
  }
  q.absmax = tensor_from_hex(c["absmax_q8_hex"], torch::kUInt8, {(n + bs - 1) / bs});
  q.absmax2 = f32_from_json(c["absmax2_fp32"]);
  q.nested_code = vec_tensor(dynamic_map_signed());
  q.offset = static_cast<float>(c["absmax_mean_offset"].get<double>());
  return q;
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

// The raw bits of each element (uint8 / int16 / int32 view), so -0 != +0 and NaNs compare by payload.
torch::Tensor raw_bits(const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous().view({-1});
  switch (c.element_size()) {
    case 1:
      return c.view(torch::kUInt8);
    case 2:
      return c.view(torch::kInt16);
    default:
      return c.view(torch::kInt32);
  }
}

// "" when got and want hold the same bits, else how many elements differ and the first one (short messages for
// large cases).
std::string bit_diff(const torch::Tensor& got, const torch::Tensor& want) {
  if (got.numel() != want.numel() || got.scalar_type() != want.scalar_type()) {
    return "numel/dtype " + std::to_string(got.numel()) + " " + c10::toString(got.scalar_type()) + " vs " +
           std::to_string(want.numel()) + " " + c10::toString(want.scalar_type());
  }
  const int64_t i = first_bit_mismatch(got, want);
  if (i < 0) return "";
  const int64_t count = (raw_bits(got) != raw_bits(want)).sum().item<int64_t>();
  const auto value = [i](const torch::Tensor& t) {
    return t.contiguous().view({-1})[i].to(torch::kDouble).item<double>();
  };
  std::ostringstream s;
  s.precision(9);
  s << count << " of " << got.numel() << " elements differ; first at " << i << ": got " << value(got) << ", want "
    << value(want);
  return s.str();
}

class GoldenCase : public ::testing::TestWithParam<int> {};

TEST_P(GoldenCase, QuantizeAndDequantizeBitExact) {
  const auto& c = golden()["cases"][static_cast<size_t>(GetParam())];
  SCOPED_TRACE(c["name"].get<std::string>());
  const QuantType type = parse_quant_type(c.value("quant_type", std::string("nf4")));
  const torch::ScalarType dtype = golden_dtype(c["dtype"]);
  const std::vector<int64_t> shape = c["shape"].get<std::vector<int64_t>>();
  const int64_t bs = c["blocksize"].get<int64_t>();
  const bool nested = c["nested"].get<bool>();
  const torch::Tensor x = tensor_from_hex(c["input_hex"], dtype, shape);
  const torch::Tensor want_packed = tensor_from_hex(c["packed_hex"], torch::kUInt8, {(x.numel() + 1) / 2});

  // Plain quantization: codebook, packed codes, fp32 absmax, fp32 dequant.
  const QuantizedTensor plain = quantize_4bit(x, type, bs, /*double_quant=*/false);
  if (c.contains("code_hex")) {
    // Value for value: bitsandbytes' FP4 table (get_4bit_type) holds +0.0 at index 8 where ours holds -0.0, which
    // dequantizes as CUDA does (sign * LUT: -0 * absmax). The dequant is compared bit for bit below.
    EXPECT_TRUE(torch::equal(plain.code, tensor_from_hex(c["code_hex"], torch::kFloat32, {16}))) << "codebook";
  }
  EXPECT_EQ(bit_diff(plain.packed, want_packed), "") << "packed";
  EXPECT_EQ(bit_diff(plain.absmax, f32_from_json(c["absmax_fp32"])), "") << "absmax";
  const torch::Tensor want_plain = c.contains("dequant_plain_fp32_hex")
                                       ? tensor_from_hex(c["dequant_plain_fp32_hex"], torch::kFloat32, shape)
                                       : f32_from_json(c["dequant_plain_fp32"]).view(shape);
  for (auto isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (!cpu_supports(isa)) continue;
    torch::Tensor out = torch::empty(shape, torch::kFloat32);
    detail::dequantize_cpu_into(plain, out, isa);
    EXPECT_EQ(bit_diff(out, want_plain), "") << isa_name(isa);
  }
  EXPECT_EQ(bit_diff(detail::dequantize_ops(plain, torch::kFloat32), want_plain), "") << "ops path";
  EXPECT_EQ(bit_diff(dequantize_4bit(plain, torch::kFloat32), want_plain), "");
  // The golden's own bytes through our dequant (the same result, even where our bytes differ).
  EXPECT_EQ(bit_diff(dequantize_4bit(golden_parts(c, type, dtype, shape, bs, false), torch::kFloat32), want_plain), "")
      << "golden bytes";
  if (!nested) return;

  // Double quantization: offset, 8-bit absmax, absmax2, restored absmax, dequant in the input dtype.
  const QuantizedTensor q = quantize_4bit(x, type, bs, /*double_quant=*/true);
  ASSERT_TRUE(q.double_quant);
  EXPECT_EQ(bit_diff(q.packed, want_packed), "") << "packed (double quant)";
  const float want_offset = static_cast<float>(c["absmax_mean_offset"].get<double>());
  EXPECT_EQ(q.offset, want_offset) << "offset differs by " << (q.offset - want_offset);
  EXPECT_EQ(q.absmax.scalar_type(), torch::kUInt8);
  EXPECT_EQ(bit_diff(q.absmax, tensor_from_hex(c["absmax_q8_hex"], torch::kUInt8, {q.num_blocks()})), "")
      << "8-bit absmax";
  EXPECT_EQ(bit_diff(q.absmax2, f32_from_json(c["absmax2_fp32"])), "") << "absmax2";
  if (c.contains("nested_code_hex")) {
    EXPECT_EQ(bit_diff(q.nested_code, tensor_from_hex(c["nested_code_hex"], torch::kFloat32, {256})), "")
        << "dynamic map";
  }
  const torch::Tensor restored = f32_from_json(c["absmax_restored_fp32"]);
  EXPECT_EQ(bit_diff(q.absmax_fp32(), restored), "") << "restored absmax";
  const torch::Tensor want = tensor_from_hex(c["dequant_nested_in_input_dtype_hex"], dtype, shape);
  for (auto isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (!cpu_supports(isa)) continue;
    torch::Tensor out = torch::empty(shape, torch::TensorOptions().dtype(dtype));
    detail::dequantize_cpu_into(q, out, isa);
    EXPECT_EQ(bit_diff(out, want), "") << isa_name(isa);
  }
  EXPECT_EQ(bit_diff(detail::dequantize_ops(q, dtype), want), "") << "ops path";
  EXPECT_EQ(bit_diff(dequantize_4bit(q, dtype), want), "");
  EXPECT_EQ(bit_diff(dequantize_4bit(golden_parts(c, type, dtype, shape, bs, true), dtype), want), "")
      << "golden bytes";
}

INSTANTIATE_TEST_SUITE_P(Nf4Golden, GoldenCase, ::testing::Range(0, static_cast<int>(golden()["cases"].size())));

TEST(Nf4Golden, HasAllSevenCases) {
  EXPECT_EQ(nf4_golden()["cases"].size(), 7u);
}

}  // namespace
}  // namespace qlora::quant
