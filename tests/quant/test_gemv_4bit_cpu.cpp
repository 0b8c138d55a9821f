// The CPU 4-bit GEMV kernels (quant/gemv_4bit.h, gemv_4bit_cpu): every SIMD variant the CPU has (_avx512, _avx2)
// and the thread-split reference give gemv_4bit_ref's bits on random weights of awkward shapes (odd row counts,
// rows that end inside a superchunk or a quantization block, blocksizes 32..4096, double quantization with more than
// 256 blocks); the reference is within the float error bound of a float64 product of the dequantized weight; and
// Linear4bit takes the GEMV path on the CPU only under InferenceMode.
#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <tuple>
#include <vector>

#include "quant/dequant_kernels.h"
#include "quant/gemv_4bit.h"
#include "quant/gemv_q8.h"
#include "quant/linear_4bit.h"
#include "quant/quantized_tensor.h"
#include "quant_test_util.h"

namespace qlora::quant {
namespace {

using namespace qlora::test;
using qlora::Isa;

constexpr double kFp32Unit = 0x1p-24;  // unit roundoff of fp32 (round to nearest)
constexpr double kBf16Unit = 0x1p-8;   // of bf16 (8 significant bits): a rounding moves a value by at most 2^-8 of it

struct Shape {
  int64_t out, in, blocksize;
};

// Odd row counts; in at, below and past a superchunk (1024) and a quantization block; blocks that straddle rows;
// rows whose last 16-chunk group holds 1-8 chunks (the AVX-512 kernel pairs two rows there: 32, 160, 640, 736, 768,
// 1056, 1280, 2080, 11008) or 9-15 (352).
const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {
      {1, 32, 32},     {3, 32, 64},     {7, 96, 32},    {5, 352, 64},     {33, 1024, 64},  {9, 1056, 128},
      {17, 4096, 64},  {129, 4096, 64}, {3, 2080, 256}, {11, 3072, 1024}, {6, 8192, 4096}, {2, 4096, 4096},
      {13, 640, 2048}, {31, 160, 512},  {4, 11008, 64}, {65, 768, 64},    {12, 736, 64},   {10, 1280, 32}};
  return s;
}

// Weights with a wide dynamic range across blocks (the absmax scaling matters) and bf16 activations.
QuantizedTensor random_weight(const Shape& s, QuantType type, bool dq) {
  const torch::Tensor w = torch::randn({s.out, s.in}) * torch::exp(torch::randn({s.out, s.in}) * 1.5);
  return quantize_4bit(w.to(torch::kBFloat16), type, s.blocksize, dq);
}

torch::Tensor random_x(int64_t in) {
  return (torch::randn({in}) * torch::exp(torch::randn({in}))).to(torch::kBFloat16);
}

// y = W x through the raw kernel interface, as bf16 bits or fp32.
torch::Tensor run_gemv(const QuantizedTensor& q, const torch::Tensor& x, bool out_bf16, Isa isa, bool ref) {
  torch::Tensor y = torch::full({q.shape[0]}, 7.0, out_bf16 ? torch::kBFloat16 : torch::kFloat32);
  const Gemv4bitArgs a = detail::gemv_args(q, x.data_ptr(), y.data_ptr(), out_bf16);
  if (ref) {
    gemv_4bit_ref(a);
  } else {
    gemv_4bit_cpu(a, isa);
  }
  return y;
}

TEST(Gemv4bitCpu, EveryPathEqualsTheReferenceBitForBit) {
  torch::manual_seed(41);
  int checked = 0;
  for (const Shape& s : shapes()) {
    for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
      for (bool dq : {true, false}) {
        const QuantizedTensor q = random_weight(s, type, dq);
        const torch::Tensor x = random_x(s.in);
        for (bool out_bf16 : {true, false}) {
          const torch::Tensor ref = run_gemv(q, x, out_bf16, Isa::kScalar, /*ref=*/true);
          for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
            if (!cpu_supports(isa)) continue;
            const torch::Tensor got = run_gemv(q, x, out_bf16, isa, /*ref=*/false);
            EXPECT_EQ(first_bit_mismatch(got, ref), -1)
                << isa_name(isa) << " " << quant_type_name(type) << " dq=" << dq << " " << s.out << "x" << s.in
                << " bs=" << s.blocksize << (out_bf16 ? " bf16" : " fp32");
            ++checked;
          }
        }
      }
    }
  }
  RecordProperty("paths_checked", checked);
}

TEST(Gemv4bitCpu, SignedZerosAndExactCancellationKeepTheReferenceBits) {
  // Rows whose products cancel exactly (x = +v, -v pairs against equal weights) end in +0 or -0 partial sums, where
  // a lane that skipped or added a spurious +0 would differ in the sign bit.
  for (int64_t in : {32, 352, 1056}) {
    const QuantizedTensor q = quantize_4bit(torch::ones({5, in}, torch::kBFloat16), QuantType::kNF4, 32, true);
    torch::Tensor x = torch::empty({in}, torch::kBFloat16);
    for (int64_t i = 0; i < in; ++i) x[i] = (i % 2 == 0 ? 1.0 : -1.0) * static_cast<double>(1 + i % 7);
    for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
      if (!cpu_supports(isa)) continue;
      for (bool out_bf16 : {true, false}) {
        EXPECT_EQ(first_bit_mismatch(run_gemv(q, x, out_bf16, isa, false), run_gemv(q, x, out_bf16, isa, true)), -1)
            << isa_name(isa) << " in=" << in;
      }
      const torch::Tensor neg = -torch::ones({in}, torch::kBFloat16) * 0.0;  // -0 everywhere
      EXPECT_EQ(first_bit_mismatch(run_gemv(q, neg, false, isa, false), run_gemv(q, neg, false, isa, true)), -1)
          << isa_name(isa) << " x = -0, in=" << in;
    }
  }
}

TEST(Gemv4bitCpu, ReferenceIsWithinTheFloatErrorBoundOfAFloat64Product) {
  // Per chunk 32 fma-rounded code * x terms, then one fma by the absmax into the lane (one chunk per superchunk),
  // then 5 butterfly additions; the fp32 dequantized weight the float64 product uses is code * absmax rounded once
  // (the kernel never rounds that product): every term passes at most 34 * ceil(in / 1024) + 5 roundings, so the
  // fp32 result is within gamma(that) * sum |w x| of the exact sum.
  torch::manual_seed(42);
  for (const Shape& s : shapes()) {
    for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
      const QuantizedTensor q = random_weight(s, type, /*dq=*/true);
      const torch::Tensor x = random_x(s.in);
      const torch::Tensor wd = dequantize_4bit(q, torch::kFloat32).to(torch::kFloat64);
      const torch::Tensor xd = x.to(torch::kFloat64);
      const torch::Tensor exact = wd.matmul(xd), scale = wd.abs().matmul(xd.abs());
      const double m = static_cast<double>(34 * ((s.in + 1023) / 1024) + 5);
      const double gamma = m * kFp32Unit / (1 - m * kFp32Unit);
      const torch::Tensor y32 = run_gemv(q, x, false, Isa::kScalar, true).to(torch::kFloat64);
      EXPECT_TRUE(((y32 - exact).abs() <= scale * gamma).all().item<bool>())
          << quant_type_name(type) << " " << s.out << "x" << s.in << " bs=" << s.blocksize;
      // bf16 output: that bound plus one rounding to bf16.
      const torch::Tensor y16 = run_gemv(q, x, true, Isa::kScalar, true).to(torch::kFloat64);
      const torch::Tensor bound16 = scale * gamma + (exact.abs() + scale * gamma) * kBf16Unit;
      EXPECT_TRUE(((y16 - exact).abs() <= bound16).all().item<bool>())
          << quant_type_name(type) << " " << s.out << "x" << s.in << " bs=" << s.blocksize << " (bf16 out)";
    }
  }
}

TEST(Gemv4bitCpu, RejectsRowsThatAreNotAMultipleOf32) {
  const QuantizedTensor q = quantize_4bit(torch::randn({4, 48}), QuantType::kNF4, 64, true);
  const torch::Tensor x = torch::randn({48}).to(torch::kBFloat16);
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    EXPECT_THROW(run_gemv(q, x, true, isa, false), std::invalid_argument) << isa_name(isa);
  }
}

TEST(Gemv4bitCpu, Linear4bitTakesTheGemvPathOnlyUnderInferenceMode) {
  torch::manual_seed(43);
  const QuantizedTensor q = quantize_4bit(torch::randn({96, 352}, torch::kBFloat16), QuantType::kNF4, 64, true);
  const torch::Tensor bias = torch::randn({96}).to(torch::kBFloat16);
  const torch::Tensor x = torch::randn({1, 1, 352}).to(torch::kBFloat16);
  // What training computes (and computed before the CPU GEMV existed): dequantize to bf16, then torch::linear.
  const torch::Tensor dense = torch::linear(x, dequantize_4bit(q, torch::kBFloat16), bias);
  {
    torch::NoGradGuard no_grad;  // no-grad alone (e.g. a checkpointed layer's first forward) keeps the dense path
    EXPECT_FALSE(gemv_4bit_applies(q, x));
    EXPECT_TRUE(bits_equal(linear_4bit(x, q, bias), dense));
  }
  EXPECT_FALSE(gemv_4bit_applies(q, x));
  {
    c10::InferenceMode inference;
    ASSERT_TRUE(gemv_4bit_applies(q, x));
    EXPECT_FALSE(gemv_4bit_applies(q, torch::randn({2, 352}).to(torch::kBFloat16)));  // two rows: dequant + matmul
    EXPECT_TRUE(gemv_4bit_applies(q, torch::randn({1, 352})));  // fp32: the default q8 kernel takes it
    for (CpuGemv g : {CpuGemv::kQ8, CpuGemv::kExact}) {
      const CpuGemvScope scope(g);
      if (g == CpuGemv::kExact) {
        EXPECT_FALSE(gemv_4bit_applies(q, torch::randn({1, 352})));  // fp32: dequant + matmul
      }
      const torch::Tensor y = linear_4bit(x, q, bias);
      EXPECT_EQ(y.sizes(), torch::IntArrayRef({1, 1, 96}));
      EXPECT_TRUE(bits_equal(y, (gemv_4bit(q, x.view({352})) + bias).view({1, 1, 96}))) << cpu_gemv_name(g);
      // Close to the dense path: each differs from the exact product by bf16 roundings, element by element; q8's
      // 8-bit activations add ~1% of the result's norm (test_gemv_q8.cpp), spread over the elements.
      const torch::Tensor yf = y.to(torch::kFloat32), df = dense.to(torch::kFloat32);
      if (g == CpuGemv::kExact) {
        EXPECT_TRUE(torch::allclose(yf, df, /*rtol=*/2e-2, /*atol=*/5e-2));
      } else {
        EXPECT_LT(((yf - df).norm() / df.norm()).item<double>(), 0.03);
      }
    }
    // The exact kernel's bits are gemv_4bit_ref's; the q8 kernel's gemv_q8_ref's.
    const torch::Tensor xv = x.view({352});
    torch::Tensor ref_exact = torch::empty({96}, torch::kBFloat16), ref_q8 = torch::empty({96}, torch::kBFloat16);
    gemv_4bit_ref(detail::gemv_args(q, xv.data_ptr(), ref_exact.data_ptr(), true));
    gemv_q8_ref(detail::gemv_q8_args(q, xv.data_ptr(), true, ref_q8.data_ptr(), true));
    EXPECT_TRUE(bits_equal(gemv_4bit(q, xv), ref_q8));
    const CpuGemvScope exact(CpuGemv::kExact);
    EXPECT_TRUE(bits_equal(gemv_4bit(q, xv), ref_exact));
  }
  // Training: x requires grad, the autograd function runs and gives dequant + matmul numerics and a gradient.
  const torch::Tensor xg = x.detach().clone().set_requires_grad(true);
  const torch::Tensor yg = linear_4bit(xg, q, bias);
  EXPECT_TRUE(bits_equal(yg.detach(), dense));
  yg.sum().backward();
  ASSERT_TRUE(xg.grad().defined());
  EXPECT_EQ(xg.grad().sizes(), x.sizes());
}

}  // namespace
}  // namespace qlora::quant
