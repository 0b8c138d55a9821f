// Every dequant path (_avx512, _avx2 where the CPU has them, LibTorch ops) equals dequantize_blocks_ref (Isa::kScalar)
// bit for bit on random data of awkward sizes; dequantize_4bit_into fills preallocated outputs.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "quant/dequant_kernels.h"
#include "quant/quantized_tensor.h"
#include "quant_test_util.h"

namespace qlora::quant {
namespace {

using namespace qlora::test;
using qlora::Isa;

struct PathCase {
  int64_t numel;
  int64_t blocksize;
};

TEST(DequantPaths, SimdAndOpsEqualScalarOnRandomData) {
  torch::manual_seed(11);
  const std::vector<PathCase> cases = {{1, 32},       {31, 32},     {33, 32},      {77, 64},      {1001, 64},
                                       {4097, 128},   {12345, 256}, {9999, 512},   {70001, 1024}, {20003, 2048},
                                       {40000, 4096}, {4096, 4096}, {64 * 300, 64}};
  int checked = 0;
  for (const auto& c : cases) {
    for (auto type : {QuantType::kNF4, QuantType::kFP4}) {
      for (bool dq : {false, true}) {
        // Wide dynamic range across blocks so the absmax scaling matters.
        const torch::Tensor w = torch::randn({c.numel}) * torch::exp(torch::randn({c.numel}) * 2);
        const QuantizedTensor q = quantize_4bit(w, type, c.blocksize, dq);
        for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kHalf}) {
          torch::Tensor ref = torch::empty({c.numel}, torch::TensorOptions().dtype(dt));
          detail::dequantize_cpu_into(q, ref, Isa::kScalar);
          for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
            if (!cpu_supports(isa)) continue;
            torch::Tensor out = torch::full({c.numel}, 7.0, torch::TensorOptions().dtype(dt));
            detail::dequantize_cpu_into(q, out, isa);
            EXPECT_EQ(first_bit_mismatch(out, ref), -1)
                << isa_name(isa) << " n=" << c.numel << " bs=" << c.blocksize << " dq=" << dq << " " << dt;
            ++checked;
          }
          EXPECT_EQ(first_bit_mismatch(detail::dequantize_ops(q, dt).view({-1}), ref), -1)
              << "ops n=" << c.numel << " bs=" << c.blocksize << " " << dt;
        }
      }
    }
  }
  RecordProperty("simd_paths_checked", checked);
}

TEST(DequantPaths, ScalarReferenceIsCodeTimesAbsmax) {
  // Independent of the kernels: decode nibbles by hand and multiply in fp32.
  torch::manual_seed(12);
  const torch::Tensor w = torch::randn({3, 45});
  const QuantizedTensor q = quantize_4bit(w, QuantType::kNF4, 32, true);
  const torch::Tensor am = q.absmax_fp32();
  torch::Tensor out = torch::empty({3, 45});
  detail::dequantize_cpu_into(q, out, Isa::kScalar);
  const uint8_t* p = q.packed.data_ptr<uint8_t>();
  for (int64_t e = 0; e < 135; ++e) {
    const int nib = (e % 2 == 0) ? p[e / 2] >> 4 : p[e / 2] & 15;
    const float want = nf4_code()[static_cast<size_t>(nib)] * am[e / 32].item<float>();
    EXPECT_EQ(out.view({-1})[e].item<float>(), want) << e;
  }
}

TEST(DequantPaths, Float64OutputIsExactFp32Values) {
  const QuantizedTensor q = quantize_4bit(torch::randn({5, 40}), QuantType::kNF4, 64, true);
  const torch::Tensor d64 = dequantize_4bit(q, torch::kFloat64);
  EXPECT_EQ(d64.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(bits_equal(d64.to(torch::kFloat32), dequantize_4bit(q, torch::kFloat32)));
}

TEST(DequantInto, WritesPreallocatedOutputOfAnyDtype) {
  const QuantizedTensor q = quantize_4bit(torch::randn({33, 65}), QuantType::kNF4, 64, true);
  for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kHalf, torch::kFloat64}) {
    torch::Tensor out = torch::empty({33 * 65}, torch::TensorOptions().dtype(dt));
    const void* before = out.data_ptr();
    dequantize_4bit_into(q, out);
    EXPECT_EQ(out.data_ptr(), before);
    EXPECT_TRUE(bits_equal(out.view({33, 65}), dequantize_4bit(q, dt))) << dt;
  }
  torch::Tensor wrong = torch::empty({10});
  EXPECT_THROW(dequantize_4bit_into(q, wrong), c10::Error);
}

TEST(DequantPaths, ActiveIsaIsSupported) {
  EXPECT_TRUE(cpu_supports(active_isa()));
  EXPECT_TRUE(cpu_supports(Isa::kScalar));
}

}  // namespace
}  // namespace qlora::quant
