// The 4-bit GEMV with 8-bit activations (quant/gemv_q8.h): the AVX2 kernel and the thread-split reference give
// gemv_q8_ref's bits on awkward shapes (chunk counts that are not a multiple of 8, blocks straddling rows, blocksizes
// 32..4096, double quantization past 256 blocks, rows of a multiple of 256 elements, whose absmax the kernel reads per
// group, and others), bf16 and fp32 activations and outputs; the reference is within the rounding budget of a float64
// product of the dequantized weight; a case whose every rounding is known is
// exact; non-finite activations give NaN rows; rows that are not a multiple of 32 are refused.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "quant/dequant_kernels.h"
#include "quant/gemv_q8.h"
#include "quant/quantized_tensor.h"
#include "quant_test_util.h"

namespace qlora::quant {
namespace {

using namespace qlora::test;
using qlora::Isa;

constexpr double kFp32Unit = 0x1p-24;
constexpr double kBf16Unit = 0x1p-8;

struct Shape {
  int64_t out, in, blocksize;
};

// Chunk counts 1, 3, 11, 24 (768), 33, 64, 344 (11008): full groups of 8 and tails of 1-7 chunks; rows of a multiple
// of 256 with every blocksize from 32 to 4096 (blocks of 2048 straddling rows) and past 256 blocks.
const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {{1, 32, 32},     {3, 96, 64},     {7, 352, 32},    {5, 768, 64},
                                       {9, 1056, 128},  {33, 2048, 64},  {3, 2080, 256},  {11, 3072, 1024},
                                       {6, 8192, 4096}, {13, 640, 2048}, {4, 11008, 64},  {65, 768, 64},
                                       {10, 1280, 32},  {129, 256, 64},  {2, 4096, 4096}, {17, 160, 512},
                                       {9, 4096, 128},  {3, 1536, 256},  {5, 1024, 512},  {5, 2560, 2048}};
  return s;
}

QuantizedTensor random_weight(const Shape& s, QuantType type, bool dq) {
  const torch::Tensor w = torch::randn({s.out, s.in}) * torch::exp(torch::randn({s.out, s.in}) * 1.5);
  return quantize_4bit(w.to(torch::kBFloat16), type, s.blocksize, dq);
}

// Activations with a wide range across chunks and a few exact zeros (an all-zero chunk among them).
torch::Tensor random_x(int64_t in, torch::ScalarType dtype) {
  torch::Tensor x = torch::randn({in}) * torch::exp(torch::randn({in}));
  if (in >= 64) x.narrow(0, 32, 32).zero_();
  return x.to(dtype);
}

torch::Tensor run(const QuantizedTensor& q, const torch::Tensor& x, bool out_bf16, Isa isa, bool ref) {
  torch::Tensor y = torch::full({q.shape[0]}, 7.0, out_bf16 ? torch::kBFloat16 : torch::kFloat32);
  const GemvQ8Args a =
      detail::gemv_q8_args(q, x.data_ptr(), x.scalar_type() == torch::kBFloat16, y.data_ptr(), out_bf16);
  if (ref) {
    gemv_q8_ref(a);
  } else {
    gemv_q8_cpu(a, isa);
  }
  return y;
}

TEST(GemvQ8, EveryPathEqualsTheReferenceBitForBit) {
  torch::manual_seed(51);
  int checked = 0;
  for (const Shape& s : shapes()) {
    for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
      for (bool dq : {true, false}) {
        const QuantizedTensor q = random_weight(s, type, dq);
        for (auto xt : {torch::kBFloat16, torch::kFloat32}) {
          const torch::Tensor x = random_x(s.in, xt);
          for (bool out_bf16 : {true, false}) {
            const torch::Tensor ref = run(q, x, out_bf16, Isa::kScalar, /*ref=*/true);
            for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
              if (!cpu_supports(isa)) continue;
              EXPECT_EQ(first_bit_mismatch(run(q, x, out_bf16, isa, false), ref), -1)
                  << isa_name(isa) << " " << quant_type_name(type) << " dq=" << dq << " " << s.out << "x" << s.in
                  << " bs=" << s.blocksize << " x " << c10::toString(xt) << (out_bf16 ? " bf16 out" : " fp32 out");
              ++checked;
            }
          }
        }
      }
    }
  }
  RecordProperty("paths_checked", checked);
}

// The budget of the two roundings: with w_i = absmax * code_i and x's chunk maximum amax, the kernel multiplies
// absmax * cq_i / 63 (the 7-bit codebook: |cq_i / 63 - code_i| <= 1/126) by q_i * amax / 127 (|q_i amax / 127 - x_i|
// <= amax / 254, up to the fp32 roundings of 127 / amax and of x_i times it: 127 |x_i| / amax 2^-23 <= 2^-16 units of
// q), so per term
//   |w x - w~ x~| <= absmax (|x_i| / 126 + |code_i~| amax / 254) (1 + 2^-14),
// plus fp32 rounding of the scales and sums (every term passes at most ceil(chunks / 8) + 4 roundings after its exact
// integer dot: e, absmax * e, the fma, the lane adds) and, for a bf16 output, one rounding of the result.
TEST(GemvQ8, ReferenceIsWithinTheEightBitBudgetOfAFloat64Product) {
  torch::manual_seed(52);
  for (const Shape& s : shapes()) {
    for (QuantType type : {QuantType::kNF4, QuantType::kFP4}) {
      const QuantizedTensor q = random_weight(s, type, /*dq=*/true);
      const torch::Tensor x = random_x(s.in, torch::kBFloat16);
      const torch::Tensor wd = dequantize_4bit(q, torch::kFloat32).to(torch::kFloat64);  // (out, in)
      const torch::Tensor xd = x.to(torch::kFloat64);
      const torch::Tensor exact = wd.matmul(xd);
      // The absmax of each chunk's block.
      const int64_t blocks = (s.out * s.in + s.blocksize - 1) / s.blocksize;
      torch::Tensor am = torch::empty({blocks}, torch::kFloat32);
      detail::decode_absmax(q, 0, blocks, am.data_ptr<float>());
      const torch::Tensor absmax = am.to(torch::kFloat64)
                                       .repeat_interleave(s.blocksize)
                                       .narrow(0, 0, s.out * s.in)
                                       .view({s.out, s.in / 32, 32})
                                       .narrow(2, 0, 1);  // (out, chunks, 1)
      const torch::Tensor xa = xd.abs().view({s.in / 32, 32});
      const torch::Tensor amax = xa.amax(-1, true);  // (chunks, 1)
      // sum over chunks of absmax_c * (sum_i |x_i| / 126 + 32 * amax_c / 254): |code~| <= 1 + 1/126.
      const torch::Tensor per_chunk =
          (xa.sum(-1, true) / 126 + amax * 32 * (1 + 1.0 / 126) / 254).view({1, s.in / 32, 1});
      const torch::Tensor rounding8 = (absmax * per_chunk).sum({1, 2}) * (1 + 0x1p-14);
      const torch::Tensor scale = wd.abs().matmul(xd.abs()) + rounding8;
      const double m = static_cast<double>((s.in / 32 + 7) / 8 + 8);
      const double gamma = m * kFp32Unit / (1 - m * kFp32Unit);
      const torch::Tensor bound = rounding8 + scale * gamma;
      const torch::Tensor y32 = run(q, x, false, Isa::kScalar, true).to(torch::kFloat64);
      EXPECT_TRUE(((y32 - exact).abs() <= bound).all().item<bool>())
          << quant_type_name(type) << " " << s.out << "x" << s.in << " bs=" << s.blocksize << ": worst excess "
          << ((y32 - exact).abs() - bound).max().item<double>();
      const torch::Tensor y16 = run(q, x, true, Isa::kScalar, true).to(torch::kFloat64);
      EXPECT_TRUE(((y16 - exact).abs() <= bound + (exact.abs() + bound) * kBf16Unit).all().item<bool>())
          << quant_type_name(type) << " " << s.out << "x" << s.in << " bs=" << s.blocksize << " (bf16 out)";
    }
  }
}

// What the 8-bit roundings cost on Gaussian weights and activations (a normalised hidden state without its outlier
// channels), measured against what the 4-bit weights already cost: the relative L2 error of the result against the
// float64 product of the dequantized weight is a small fraction of the dequantized weight's own error against the
// original weight (NF4's error on Gaussian weights is ~10%; the activation step here is ~2.5 sigma / 127).
TEST(GemvQ8, EightBitRoundingCostsAFractionOfTheFourBitWeightError) {
  torch::manual_seed(54);
  double err8 = 0.0, err4 = 0.0, norm_exact = 0.0, norm_original = 0.0;  // squared L2, summed over the shapes
  for (const Shape& s : shapes()) {
    const torch::Tensor w = torch::randn({s.out, s.in}).to(torch::kBFloat16);
    const QuantizedTensor q = quantize_4bit(w, QuantType::kNF4, s.blocksize, /*dq=*/true);
    const torch::Tensor x = torch::randn({s.in});
    const torch::Tensor xd = x.to(torch::kFloat64);
    const torch::Tensor exact = dequantize_4bit(q, torch::kFloat32).to(torch::kFloat64).matmul(xd);
    const torch::Tensor original = w.to(torch::kFloat64).matmul(xd);
    const torch::Tensor y = run(q, x, false, Isa::kScalar, true).to(torch::kFloat64);
    err8 += (y - exact).pow(2).sum().item<double>();
    err4 += (exact - original).pow(2).sum().item<double>();
    norm_exact += exact.pow(2).sum().item<double>();
    norm_original += original.pow(2).sum().item<double>();
    EXPECT_LT(((y - exact).norm() / exact.norm()).item<double>(), 0.05) << s.out << "x" << s.in;
  }
  const double rel8 = std::sqrt(err8 / norm_exact), rel4 = std::sqrt(err4 / norm_original);
  std::printf("[ info ] relative L2 error: 8-bit activations %.4f, NF4 weights %.4f\n", rel8, rel4);
  EXPECT_LT(rel8, 0.25 * rel4);
  EXPECT_GT(rel8, 1e-4) << "the activations were not rounded to 8 bits";
}

// Weights of +-absmax (NF4 codes 15 and 0: +-1.0, in 7 bits +-63 exactly) against integer activations whose chunk
// maximum is 127 (127 / amax = 1: q = x exactly): every rounding to integers is exact, isum = 63 * sum(+-x), and the
// result is sum(+-x) * absmax * 63 * fl(127 / 8001) up to the fp32 rounding of that scale and of the lane sums.
TEST(GemvQ8, ExactCodesAndIntegerActivationsGiveTheIntegerSum) {
  const int64_t out = 6, in = 1056;  // 33 chunks: four full groups of 8 and a tail of 1
  torch::manual_seed(53);
  const torch::Tensor sign = torch::randint(0, 2, {out, in}).mul(2).sub(1).to(torch::kFloat32);
  const torch::Tensor w = sign * 0.5;  // absmax 0.5 in every block: the weights are +-0.5 exactly
  const QuantizedTensor q = quantize_4bit(w.to(torch::kBFloat16), QuantType::kNF4, 64, /*dq=*/false);
  torch::Tensor x = torch::randint(-127, 128, {in}).to(torch::kFloat32);
  for (int64_t c = 0; c < in / 32; ++c) x[c * 32 + (c % 32)] = (c % 2 == 0) ? 127.0 : -127.0;
  const torch::Tensor exact = (w.to(torch::kFloat64)).matmul(x.to(torch::kFloat64));  // integers / 2
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (!cpu_supports(isa)) continue;
    const torch::Tensor y = run(q, x, false, isa, isa == Isa::kScalar).to(torch::kFloat64);
    const double tol = 1e-5 * (w.abs().to(torch::kFloat64).matmul(x.abs().to(torch::kFloat64))).max().item<double>();
    EXPECT_LE((y - exact).abs().max().item<double>(), tol) << isa_name(isa) << "\n" << y << "\n" << exact;
  }
}

// Weights sharing x in one call (x quantized once, one parallel region: q, k, v of a decode step) give each the bits
// of its own call; weights that do not share x are refused.
TEST(GemvQ8, WeightsSharingXInOneCallGiveTheBitsOfSeparateCalls) {
  torch::manual_seed(55);
  for (int64_t in : {96, 768, 1056}) {
    std::vector<QuantizedTensor> qs;
    for (int64_t out : {int64_t{7}, int64_t{256}, int64_t{33}}) {
      qs.push_back(random_weight({out, in, 64}, QuantType::kNF4, /*dq=*/true));
    }
    qs.push_back(random_weight({5, in, 32}, QuantType::kFP4, /*dq=*/false));
    const torch::Tensor x = random_x(in, torch::kBFloat16);
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
      std::vector<torch::Tensor> ys;
      std::vector<GemvQ8Args> args;
      for (const auto& q : qs) {
        ys.push_back(torch::full({q.shape[0]}, 7.0, torch::kBFloat16));
        args.push_back(detail::gemv_q8_args(q, x.data_ptr(), true, ys.back().data_ptr(), true));
      }
      gemv_q8_cpu(args.data(), args.size(), isa);
      for (size_t i = 0; i < qs.size(); ++i) {
        EXPECT_EQ(first_bit_mismatch(ys[i], run(qs[i], x, true, Isa::kScalar, /*ref=*/true)), -1)
            << isa_name(isa) << " in=" << in << " weight " << i;
      }
    }
  }
  const QuantizedTensor a = random_weight({4, 64, 64}, QuantType::kNF4, true),
                        b = random_weight({4, 96, 32}, QuantType::kNF4, true);
  const torch::Tensor xa = random_x(64, torch::kBFloat16), xb = random_x(96, torch::kBFloat16);
  torch::Tensor ya = torch::empty({4}, torch::kBFloat16), yb = torch::empty({4}, torch::kBFloat16);
  const GemvQ8Args two[2] = {detail::gemv_q8_args(a, xa.data_ptr(), true, ya.data_ptr(), true),
                             detail::gemv_q8_args(b, xb.data_ptr(), true, yb.data_ptr(), true)};
  EXPECT_THROW(gemv_q8_cpu(two, 2), std::invalid_argument);
}

TEST(GemvQ8, NonFiniteActivationsGiveNaNRows) {
  const QuantizedTensor q = quantize_4bit(torch::randn({9, 256}), QuantType::kNF4, 64, true);
  for (double bad : {std::nan(""), double{INFINITY}, -double{INFINITY}}) {
    torch::Tensor x = torch::randn({256});
    x[100] = bad;
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
      for (bool out_bf16 : {true, false}) {
        const torch::Tensor y = run(q, x.to(torch::kBFloat16), out_bf16, isa, isa == Isa::kScalar);
        EXPECT_TRUE(y.isnan().all().item<bool>()) << bad << " " << isa_name(isa);
      }
    }
  }
}

TEST(GemvQ8, RejectsRowsThatAreNotAMultipleOf32) {
  const QuantizedTensor q = quantize_4bit(torch::randn({4, 48}), QuantType::kNF4, 64, true);
  const torch::Tensor x = torch::randn({48}).to(torch::kBFloat16);
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    EXPECT_THROW(run(q, x, true, isa, false), std::invalid_argument) << isa_name(isa);
  }
  EXPECT_THROW(run(q, x, true, Isa::kScalar, true), std::invalid_argument);
}

}  // namespace
}  // namespace qlora::quant
