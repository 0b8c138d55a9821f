// quantize_4bit against independent references: nearest-code property in float64, padding and packing by
// hand, byte accounting, block sizes, FP4 hand-computed codes, error ordering NF4 < FP4 / INT4, double quant.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "common/error.h"
#include "quant/absmax_int.h"
#include "quant/dequant_kernels.h"
#include "quant/quantized_tensor.h"
#include "quant_test_util.h"

namespace qlora::quant {
namespace {

using namespace qlora::test;

constexpr double kTieSlack = 1e-6;  // |x/absmax - code| comparisons in float64 vs the fp32 decision

// Unpacks the 4-bit codes by hand: byte i = code[2i] << 4 | code[2i+1].
std::vector<int> unpack_codes(const QuantizedTensor& q) {
  const torch::Tensor p = q.packed.contiguous().cpu();
  std::vector<int> codes;
  for (int64_t i = 0; i < p.numel(); ++i) {
    const uint8_t b = p.data_ptr<uint8_t>()[i];
    codes.push_back(b >> 4);
    codes.push_back(b & 15);
  }
  return codes;
}

// Checks every code is a nearest codebook entry of x/absmax (computed in float64) and absmax is max|x|.
void expect_nearest_codes(const torch::Tensor& w, const QuantizedTensor& q, const std::vector<float>& code) {
  const torch::Tensor x = w.to(torch::kFloat64).contiguous().view({-1});
  const double* xs = x.data_ptr<double>();
  const int64_t n = x.numel();
  const std::vector<int> codes = unpack_codes(q);
  ASSERT_EQ(static_cast<int64_t>(codes.size()), 2 * ((n + 1) / 2));
  const torch::Tensor am = q.absmax_fp32();
  const torch::Tensor plain_am = quantize_4bit(w, q.type, q.blocksize, false).absmax;
  int bad = 0;
  for (int64_t b = 0; b < q.num_blocks(); ++b) {
    double m = 0;
    for (int64_t e = b * q.blocksize; e < std::min(n, (b + 1) * q.blocksize); ++e) m = std::max(m, std::fabs(xs[e]));
    ASSERT_EQ(plain_am.data_ptr<float>()[b], static_cast<float>(m)) << "block " << b;
    for (int64_t e = b * q.blocksize; e < std::min(n, (b + 1) * q.blocksize); ++e) {
      const double s = m > 0 ? xs[e] / m : 0.0;
      const double got = std::fabs(s - code[static_cast<size_t>(codes[static_cast<size_t>(e)])]);
      for (float c : code) {
        if (std::fabs(s - c) + kTieSlack < got && ++bad < 5) ADD_FAILURE() << "element " << e << " not nearest";
      }
    }
  }
  if (n % 2) {
    EXPECT_EQ(std::fabs(code[static_cast<size_t>(codes.back())]), 0.0f) << "pad nibble must encode 0.0";
  }
}

TEST(QuantizeBlocksize, PowersOfTwo32To4096Work) {
  torch::manual_seed(1);
  const torch::Tensor w = torch::randn({5000});
  for (int64_t bs = 32; bs <= 4096; bs *= 2) {
    const QuantizedTensor q = quantize_4bit(w, QuantType::kNF4, bs, true);
    EXPECT_EQ(q.num_blocks(), (5000 + bs - 1) / bs);
    EXPECT_EQ(q.absmax.numel(), q.num_blocks());
    expect_nearest_codes(w, q, nf4_code());
  }
}

TEST(QuantizeBlocksize, OthersRejectedWithError) {
  const torch::Tensor w = torch::randn({256});
  for (int64_t bs : {0, 16, 48, 100, 8192, -64}) {
    EXPECT_THROW(quantize_4bit(w, QuantType::kNF4, bs, false), qlora::Error) << bs;
  }
  EXPECT_THROW(quantize_4bit(w.to(torch::kFloat64)), qlora::Error);
  EXPECT_THROW(parse_quant_type("int4"), qlora::Error);
  EXPECT_EQ(parse_quant_type("fp4"), QuantType::kFP4);
  EXPECT_EQ(quant_type_name(QuantType::kNF4), "nf4");
}

TEST(QuantizeShapes, NonDivisibleShapesAndDtypes) {
  torch::manual_seed(2);
  for (auto shape : std::vector<std::vector<int64_t>>{{7, 13}, {3, 1000}, {1}, {2, 3, 33}, {129}}) {
    for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kHalf}) {
      const torch::Tensor w = (torch::randn(shape) * 3).to(dt);
      const QuantizedTensor q = quantize_4bit(w, QuantType::kNF4, 64, true);
      EXPECT_EQ(q.shape, shape);
      EXPECT_EQ(q.dtype, dt);
      EXPECT_EQ(q.packed.numel(), (w.numel() + 1) / 2);
      expect_nearest_codes(w, q, nf4_code());
      const torch::Tensor d = dequantize_4bit(q, dt);
      EXPECT_EQ(d.sizes().vec(), shape);
      EXPECT_EQ(d.scalar_type(), dt);
    }
  }
}

TEST(Fp4Quantize, HandComputedCodes) {
  // absmax 1 (first element), so normalized values equal the inputs.
  const float tie = (fp4_code()[7] + fp4_code()[4]) / 2.0f;  // exact fp32 midpoint of 0.25 and 1/3
  const std::vector<float> in = {1.0f, -1.0f, 0.5f, 0.3f, 0.2f, -0.7f, 0.0f, -0.001f, 0.001f, tie, 0.004f, -0.27f};
  // 1.0 -> idx 3; -1 -> 11; 0.5 -> 5; 0.3 -> 1/3 (4); 0.2 -> 1/6 (6); -0.7 -> -2/3 (10); 0 -> +0 (0);
  // -0.001 -> +0 (0); 0.001 -> -0 (8: bnb's default backend bucketizes the stably sorted table, where -0
  // follows +0); exact tie -> lower value 0.25 (7); 0.004 -> 0.0625/12 (1); -0.27 -> -0.25 (15).
  const std::vector<int> want = {3, 11, 5, 4, 6, 10, 0, 0, 8, 7, 1, 15};
  const torch::Tensor w = torch::from_blob(const_cast<float*>(in.data()), {12}, torch::kFloat32).clone();
  const QuantizedTensor q = quantize_4bit(w, QuantType::kFP4, 64, false);
  std::vector<int> got = unpack_codes(q);
  got.resize(want.size());
  EXPECT_EQ(got, want);
  EXPECT_TRUE(bits_equal(q.code, torch::from_blob(const_cast<float*>(fp4_code().data()), {16}, torch::kFloat32)));
  expect_nearest_codes(w, q, fp4_code());
}

TEST(Fp4Quantize, AllZeroBlockAndOddPadEncodePlusZero) {
  const QuantizedTensor q = quantize_4bit(torch::zeros({65}), QuantType::kFP4, 64, false);
  for (int c : unpack_codes(q)) EXPECT_EQ(c, 0);
  const QuantizedTensor n = quantize_4bit(torch::zeros({65}), QuantType::kNF4, 64, false);
  for (int c : unpack_codes(n)) EXPECT_EQ(c, 7);
  EXPECT_EQ(dequantize_4bit(n, torch::kFloat32).abs().sum().item<float>(), 0.0f);
}

TEST(Fp4Quantize, RandomNearestAndRoundTrip) {
  torch::manual_seed(3);
  const torch::Tensor w = torch::randn({4, 77});
  const QuantizedTensor q = quantize_4bit(w, QuantType::kFP4, 32, true);
  expect_nearest_codes(w, q, fp4_code());
}

double mse(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).pow(2).mean().item<double>();
}

TEST(QuantError, Nf4BeatsFp4AndInt4OnGaussianData) {
  torch::manual_seed(4);
  const torch::Tensor w = torch::randn({1 << 20});
  const double e_nf4 = mse(dequantize_4bit(quantize_4bit(w, QuantType::kNF4, 64, false), torch::kFloat32), w);
  const double e_fp4 = mse(dequantize_4bit(quantize_4bit(w, QuantType::kFP4, 64, false), torch::kFloat32), w);
  const double e_int4 = mse(dequantize_absmax_int(quantize_int4_absmax(w, 64)), w);
  const double e_int8 = mse(dequantize_absmax_int(quantize_int8_absmax(w, 64)), w);
  RecordProperty("mse_nf4", std::to_string(e_nf4));
  RecordProperty("mse_fp4", std::to_string(e_fp4));
  RecordProperty("mse_int4", std::to_string(e_int4));
  EXPECT_LT(e_nf4, e_fp4);
  EXPECT_LT(e_nf4, e_int4);
  EXPECT_LT(e_int8, e_nf4);  // sanity: 8 bits beat any 4-bit scheme
  EXPECT_LT(e_nf4, 0.02);    // ~0.0095 for blocksize 64 on N(0,1)
}

TEST(AbsmaxInt, RoundTripWithinHalfStep) {
  torch::manual_seed(5);
  const torch::Tensor w = torch::randn({3, 50});
  for (int bits : {4, 8}) {
    const auto q = bits == 4 ? quantize_int4_absmax(w, 32) : quantize_int8_absmax(w, 32);
    const torch::Tensor d = dequantize_absmax_int(q);
    const double qmax = bits == 4 ? 7 : 127;
    const torch::Tensor flat = w.view({-1});
    for (int64_t i = 0; i < flat.numel(); ++i) {
      const double step = q.scales[i / 32].item<double>() / qmax;
      EXPECT_LE(std::fabs(d.view({-1})[i].item<double>() - flat[i].item<double>()), 0.5 * step * (1 + 1e-5));
    }
  }
}

TEST(DoubleQuant, RestoresAbsmaxWithinDynamicMapError) {
  torch::manual_seed(6);
  const torch::Tensor w = torch::randn({600, 64}) * torch::rand({600, 1}) * 2;  // 600 blocks, 3 nested blocks
  const QuantizedTensor plain = quantize_4bit(w, QuantType::kNF4, 64, false);
  const QuantizedTensor q = quantize_4bit(w, QuantType::kNF4, 64, true);
  ASSERT_EQ(q.absmax2.numel(), 3);
  const torch::Tensor truth = plain.absmax.to(torch::kFloat64);
  const torch::Tensor got = q.absmax_fp32().to(torch::kFloat64);
  // Largest gap between neighbouring dynamic-map values: the 8-bit error is at most half of it (x absmax2).
  const auto& map = dynamic_map_signed();
  double gap = 0;
  for (size_t i = 0; i + 1 < map.size(); ++i) gap = std::max(gap, double(map[i + 1]) - double(map[i]));
  double offset = truth.mean().item<double>();
  EXPECT_NEAR(q.offset, offset, 1e-6 * std::fabs(offset));
  for (int64_t b = 0; b < 600; ++b) {
    const double a2 = q.absmax2[b / 256].item<double>();
    EXPECT_LE(std::fabs(got[b].item<double>() - truth[b].item<double>()), 0.5 * gap * a2 * (1 + 1e-5) + 1e-6) << b;
  }
  // Same 4-bit codes as without double quant.
  EXPECT_TRUE(bits_equal(q.packed, plain.packed));
}

TEST(MemoryAccounting, ExactBytesFor4096x4096) {
  const int64_t n = 4096LL * 4096;
  const int64_t tables = 16 * 4;  // the 16-entry fp32 codebook
  const int64_t plain = n / 2 + tables + 4 * (n / 64);
  const int64_t dq = n / 2 + tables + (n / 64) + 4 * (n / 64 / 256) + 256 * 4;
  EXPECT_EQ(QuantizedTensor::nbytes_for(n, 64, false), plain);
  EXPECT_EQ(QuantizedTensor::nbytes_for(n, 64, true), dq);
  EXPECT_DOUBLE_EQ(8.0 * double(plain - tables) / double(n), 4.5);
  EXPECT_DOUBLE_EQ(8.0 * double(dq - tables - 1024) / double(n), 4.0 + 8.0 / 64 + 32.0 / (64 * 256));  // 4.127
  torch::manual_seed(7);
  const torch::Tensor w = torch::randn({4096, 4096});
  EXPECT_EQ(quantize_4bit(w, QuantType::kNF4, 64, true).nbytes(), dq);
  EXPECT_EQ(quantize_4bit(w, QuantType::kNF4, 64, false).nbytes(), plain);
}

TEST(MemoryAccounting, NbytesMatchesNbytesForOnOddShapes) {
  for (int64_t n : {1, 77, 64 * 256 + 3, 100000}) {
    for (bool dq : {false, true}) {
      for (int64_t bs : {32, 64, 4096}) {
        const QuantizedTensor q = quantize_4bit(torch::randn({n}), QuantType::kNF4, bs, dq);
        EXPECT_EQ(q.nbytes(), QuantizedTensor::nbytes_for(n, bs, dq)) << n << " " << dq << " " << bs;
      }
    }
  }
}

TEST(QuantizedTensorTo, MovesEveryPartAndKeepsValues) {
  const QuantizedTensor q = quantize_4bit(torch::randn({3, 70}), QuantType::kNF4, 32, true);
  const QuantizedTensor m = q.to(torch::kCPU);
  EXPECT_EQ(m.device(), torch::Device(torch::kCPU));
  EXPECT_TRUE(bits_equal(dequantize_4bit(m, torch::kFloat32), dequantize_4bit(q, torch::kFloat32)));
}

TEST(TorchMean, MatchesFloat64MeanClosely) {
  torch::manual_seed(8);
  for (int64_t n : {1, 3, 7, 8, 9, 31, 64, 300, 1000, 70001}) {
    const torch::Tensor x = torch::rand({n});
    const double want = x.to(torch::kFloat64).mean().item<double>();
    EXPECT_NEAR(detail::torch_mean_f32(x.data_ptr<float>(), n), want, 1e-6 * want) << n;
  }
}

}  // namespace
}  // namespace qlora::quant
