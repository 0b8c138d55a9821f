// CUDA 4-bit dequant kernel (quant/dequant_cuda.cu) against dequantize_blocks_ref (CPU), byte for byte: NF4 and FP4,
// with and without double quantization, blocksizes 64-4096, odd sizes, fp32/bf16/fp16 outputs, random and
// edge-case values; the 4-bit GEMV against its CPU specification, bit for bit. Label `cuda`: on a machine without a
// CUDA device every test here is reported as skipped.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <string>
#include <vector>

#include "quant/dequant_kernels.h"
#include "quant/linear_4bit.h"
#include "quant/quantized_tensor.h"

namespace qlora::quant {
namespace {

class CudaDequant : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device: the CUDA kernels are compiled but not run here";
    torch::manual_seed(1234);
  }
};

// Normal values with a sprinkle of the cases the format must survive: +-0, huge, tiny (subnormal) and exact codes.
torch::Tensor awkward_values(int64_t n, torch::ScalarType dtype) {
  torch::Tensor x = torch::randn({n}, torch::kFloat32) * 3.0;
  const std::vector<float> edge = {0.0f, -0.0f, 1e30f, -1e30f, 1e-40f, -1e-40f, 1.0f, -1.0f, 0.5f, 65504.0f};
  for (int64_t i = 0; i < n; i += 37) x[i] = edge[static_cast<size_t>((i / 37) % edge.size())];
  return x.to(dtype);
}

bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor ca = a.contiguous().cpu(), cb = b.contiguous().cpu();
  return ca.nbytes() == cb.nbytes() && std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

TEST_F(CudaDequant, MatchesCpuScalarReferenceByteForByte) {
  const torch::Device cuda(torch::kCUDA, 0);
  for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
    for (bool dq : {true, false}) {
      for (int64_t bs : {64, 128, 256, 512, 1024, 2048, 4096}) {
        for (int64_t n :
             {int64_t{1}, int64_t{7}, int64_t{63}, int64_t{4097}, int64_t{123457}, int64_t{4096 * 33 + 5}}) {
          const QuantizedTensor q = quantize_4bit(awkward_values(n, torch::kBFloat16), type, bs, dq);
          const QuantizedTensor qc = q.to(cuda);
          for (torch::ScalarType out : {torch::kFloat32, torch::kBFloat16, torch::kHalf}) {
            torch::Tensor ref = torch::empty({n}, torch::TensorOptions().dtype(out));
            detail::dequantize_cpu_into(q, ref, Isa::kScalar);
            torch::Tensor got = torch::empty({n}, torch::TensorOptions().dtype(out).device(cuda));
            dequantize_4bit_into(qc, got);
            EXPECT_TRUE(same_bytes(got, ref))
                << quant_type_name(type) << " dq=" << dq << " blocksize=" << bs << " n=" << n << " out=" << out;
          }
        }
      }
    }
  }
}

TEST_F(CudaDequant, AllocatingDequantHasTheWeightShape) {
  const torch::Device cuda(torch::kCUDA, 0);
  const QuantizedTensor q = quantize_4bit(awkward_values(96 * 130, torch::kFloat32).view({96, 130}));
  const torch::Tensor got = dequantize_4bit(q.to(cuda), torch::kBFloat16);
  EXPECT_EQ(got.sizes(), torch::IntArrayRef({96, 130}));
  EXPECT_TRUE(same_bytes(got, dequantize_4bit(q, torch::kBFloat16)));
}

}  // namespace
}  // namespace qlora::quant

namespace qlora::quant {
namespace {

TEST_F(CudaDequant, GemvMatchesTheCpuSpecificationBitForBit) {
  const torch::Device cuda(torch::kCUDA, 0);
  const CpuGemvScope exact(CpuGemv::kExact);  // the CPU twin of the CUDA kernel (the default CPU GEMV is q8)
  for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
    for (bool dq : {true, false}) {
      for (auto [out, in, bs] : {std::tuple<int64_t, int64_t, int64_t>{7, 32, 64},
                                 {33, 96, 32},
                                 {129, 4096, 64},
                                 {5, 8192, 4096},
                                 {1000, 640, 128}}) {
        const QuantizedTensor q =
            quantize_4bit(awkward_values(out * in, torch::kBFloat16).view({out, in}), type, bs, dq);
        const torch::Tensor x = torch::randn({in}, torch::kBFloat16);
        const torch::Tensor ref = gemv_4bit(q, x);
        const torch::Tensor got = gemv_4bit(q.to(cuda), x.to(cuda));
        EXPECT_TRUE(same_bytes(got, ref))
            << quant_type_name(type) << " dq=" << dq << " " << out << "x" << in << " bs=" << bs;
      }
    }
  }
}

TEST_F(CudaDequant, Linear4bitOnOneBf16RowUsesGemvAndAgreesWithDequantMatmul) {
  const torch::Device cuda(torch::kCUDA, 0);
  const QuantizedTensor q = quantize_4bit(torch::randn({512, 1024}, torch::kBFloat16)).to(cuda);
  const torch::Tensor x = torch::randn({1, 1, 1024}, torch::kBFloat16).to(cuda);
  ASSERT_TRUE(gemv_4bit_applies(q, x));
  const torch::Tensor y = linear_4bit(x, q);
  const torch::Tensor ref = torch::linear(x.to(torch::kFloat32), dequantize_4bit(q, torch::kFloat32));
  EXPECT_EQ(y.sizes(), torch::IntArrayRef({1, 1, 512}));
  EXPECT_TRUE(torch::allclose(y.to(torch::kFloat32), ref, /*rtol=*/1e-2, /*atol=*/1e-1));
}

}  // namespace
}  // namespace qlora::quant
