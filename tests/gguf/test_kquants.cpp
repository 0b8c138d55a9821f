// ggml K-quants (Q4_K, Q5_K, Q6_K) and the Q5_0 / Q5_1 fallbacks: block sizes, dequantization of hand-made and
// random blocks against a float64 decoder written here from the format description (ggml-common.h), round-trip
// error bounds on random data and edge cases, and the llama-quantize type mix. Byte identity with llama.cpp's own
// quantizer is checked by tests/interop/check_kquants.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/error.h"
#include "gguf/ggml_kquants.h"
#include "gguf/ggml_quants.h"
#include "gguf/gguf_export.h"
#include "gguf/gguf_llama.h"
#include "gguf/gguf_quant_mix.h"

namespace qlora::gguf {
namespace {

// Dequantized values are float32 products of at most three factors: relative error a few float32 ulps.
constexpr double kDecodeRelTol = 1e-6;
// Round trip, per weight, in units of the sub-block's quantization step (range / levels): half a step for the
// rounding, plus the 6-bit (K) or 8-bit (Q6_K) sub-block scale and min rounding (up to nmax/2 * d + dmin/2, d and
// dmin the super-block factors) and the fp16 rounding of d / dmin; the fit may also trade the extremes for a finer
// step. Measured worst cases on the inputs below: Q4_K 1.05, Q5_K 1.30, Q6_K 0.63, Q5_0 / Q5_1 0.55.
constexpr double kMaxErrSteps = 1.5;
// Root-mean-square error in steps (a uniform quantizer gives 1/sqrt(12) = 0.29; measured 0.25-0.28).
constexpr double kRmsErrSteps = 0.35;
// Smallest fp16 subnormal: the resolution of the super-block scale d for tiny weights (Q6_K's d = amax / 4096 is
// subnormal below amax = 0.25).
const double kFp16Quantum = std::ldexp(1.0, -24);

class KQuant : public ::testing::Test {
 protected:
  std::mt19937 rng{20240607};
  std::vector<float> gaussian(int64_t n, float sigma, float mean = 0.0f) {
    std::normal_distribution<float> nd(mean, sigma);
    std::vector<float> x(n);
    for (auto& v : x) v = nd(rng);
    return x;
  }
  // A random fp16 bit pattern of a positive normal number in [2^-10, 2^2).
  uint16_t random_scale() { return static_cast<uint16_t>(((5 + rng() % 12) << 10) | (rng() & 0x3ff)); }
};

// ---- float64 decoders from the format description ----

// Q4_K / Q5_K six-bit scale and min of sub-block s from the 12 packed bytes.
void ref_scale_min(const uint8_t* p, int s, double* sc, double* m) {
  if (s < 4) {
    *sc = p[s] & 0x3f;
    *m = p[4 + s] & 0x3f;
  } else {
    *sc = (p[8 + s - 4] & 0x0f) + 16 * (p[s - 4] >> 6);
    *m = (p[8 + s - 4] >> 4) + 16 * (p[s] >> 6);
  }
}

std::vector<double> ref_decode_q4k(const BlockQ4K& b) {
  std::vector<double> y(kQK_K);
  for (int i = 0; i < kQK_K; ++i) {
    const int s = i / 32, g = s / 2;
    const uint8_t byte = b.qs[32 * g + i % 32];
    const int q = s % 2 == 0 ? byte & 0x0f : byte >> 4;
    double sc, m;
    ref_scale_min(b.scales, s, &sc, &m);
    y[i] = fp16_to_fp32(b.d) * sc * q - fp16_to_fp32(b.dmin) * m;
  }
  return y;
}

std::vector<double> ref_decode_q5k(const BlockQ5K& b) {
  std::vector<double> y(kQK_K);
  for (int i = 0; i < kQK_K; ++i) {
    const int s = i / 32, g = s / 2;
    const uint8_t byte = b.qs[32 * g + i % 32];
    const int low = s % 2 == 0 ? byte & 0x0f : byte >> 4;
    const int high = (b.qh[i % 32] >> s) & 1;  // bit s of qh[j] is the fifth bit of weight 32 s + j
    double sc, m;
    ref_scale_min(b.scales, s, &sc, &m);
    y[i] = fp16_to_fp32(b.d) * sc * (low + 16 * high) - fp16_to_fp32(b.dmin) * m;
  }
  return y;
}

std::vector<double> ref_decode_q6k(const BlockQ6K& b) {
  std::vector<double> y(kQK_K);
  for (int i = 0; i < kQK_K; ++i) {
    const int half = i / 128, r = i % 128, quarter = r / 32, l = r % 32;
    const uint8_t lo_byte = b.ql[64 * half + (quarter == 1 || quarter == 3 ? 32 : 0) + l];
    const int low = quarter < 2 ? lo_byte & 0x0f : lo_byte >> 4;
    const int high = (b.qh[32 * half + l] >> (2 * quarter)) & 3;
    y[i] = static_cast<double>(fp16_to_fp32(b.d)) * b.scales[i / 16] * (low + 16 * high - 32);
  }
  return y;
}

void expect_close(const std::vector<float>& got, const std::vector<double>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], kDecodeRelTol * std::max(1.0, std::fabs(want[i]))) << what << " weight " << i;
  }
}

template <typename Block>
Block random_bytes(std::mt19937& rng) {
  Block b;
  auto* p = reinterpret_cast<uint8_t*>(&b);
  for (size_t i = 0; i < sizeof(Block); ++i) p[i] = static_cast<uint8_t>(rng());
  return b;
}

// Quantizes x with a row codec, dequantizes, and returns the reconstruction.
template <typename Block>
std::vector<float> round_trip(const std::vector<float>& x, void (*quantize)(const float*, Block*, int64_t),
                              void (*dequantize)(const Block*, float*, int64_t), int64_t block) {
  std::vector<Block> b(x.size() / block);
  quantize(x.data(), b.data(), static_cast<int64_t>(x.size()));
  std::vector<float> y(x.size());
  dequantize(b.data(), y.data(), static_cast<int64_t>(x.size()));
  return y;
}

// Error of each sub-block of `sub` weights in units of its step: range / levels, with Q4_K/Q5_K's range
// max(x) - min(min(x), 0) and Q6_K's 2 max|x| over 63 levels.
void expect_error_in_steps(const std::vector<float>& x, const std::vector<float>& y, int sub, double levels,
                           bool symmetric, const char* what) {
  double sum_sq = 0;
  int64_t n = 0;
  for (size_t s = 0; s < x.size() / sub; ++s) {
    double lo = 0, hi = -1e300, amax = 0;
    for (int j = 0; j < sub; ++j) {
      const double v = x[s * sub + j];
      lo = std::min(lo, v);
      hi = std::max(hi, v);
      amax = std::max(amax, std::fabs(v));
    }
    const double step = symmetric ? 2 * amax / levels : (hi - lo) / levels;
    for (int j = 0; j < sub; ++j) {
      const double e = std::fabs(static_cast<double>(y[s * sub + j]) - x[s * sub + j]) / step;
      ASSERT_LE(e, kMaxErrSteps) << what << " weight " << s * sub + j << ": " << x[s * sub + j] << " -> "
                                 << y[s * sub + j] << " (step " << step << ")";
      sum_sq += e * e;
      ++n;
    }
  }
  EXPECT_LE(std::sqrt(sum_sq / static_cast<double>(n)), kRmsErrSteps) << what;
}

TEST_F(KQuant, BlockSizesAndBytes) {
  EXPECT_EQ(sizeof(BlockQ4K), 144u);
  EXPECT_EQ(sizeof(BlockQ5K), 176u);
  EXPECT_EQ(sizeof(BlockQ6K), 210u);
  EXPECT_EQ(sizeof(BlockQ5_0), 22u);
  EXPECT_EQ(sizeof(BlockQ5_1), 24u);
  EXPECT_DOUBLE_EQ(8.0 * sizeof(BlockQ4K) / 256, 4.5);
  EXPECT_DOUBLE_EQ(8.0 * sizeof(BlockQ5K) / 256, 5.5);
  EXPECT_DOUBLE_EQ(8.0 * sizeof(BlockQ6K) / 256, 6.5625);
  for (GgmlType t : {GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K}) {
    EXPECT_EQ(ggml_block_size(t), 256) << ggml_type_name(t);
    EXPECT_TRUE(ggml_is_quantized(t));
  }
  EXPECT_EQ(ggml_block_size(GgmlType::kQ5_0), 32);
  EXPECT_EQ(ggml_block_size(GgmlType::kQ5_1), 32);
  EXPECT_FALSE(ggml_is_quantized(GgmlType::kF16));
  EXPECT_EQ(ggml_nbytes(GgmlType::kQ4_K, 512), 288u);
  EXPECT_EQ(ggml_nbytes(GgmlType::kQ5_K, 768), 528u);
  EXPECT_EQ(ggml_nbytes(GgmlType::kQ6_K, 256), 210u);
  EXPECT_EQ(ggml_nbytes(GgmlType::kQ5_0, 64), 44u);
  EXPECT_EQ(ggml_nbytes(GgmlType::kQ5_1, 96), 72u);
  EXPECT_EQ(ggml_type_name(GgmlType::kQ4_K), "Q4_K");
  EXPECT_EQ(ggml_type_name(GgmlType::kQ5_1), "Q5_1");
  EXPECT_EQ(static_cast<uint32_t>(GgmlType::kQ6_K), 14u);
}

// Hand-made Q4_K block: d = 1, dmin = 0.5, scale/min bytes chosen so sub-block 5 takes the packed high bits.
TEST_F(KQuant, Q4KHandMadeBlock) {
  BlockQ4K b{};
  b.d = fp32_to_fp16(1.0f);
  b.dmin = fp32_to_fp16(0.5f);
  b.scales[1] = 3 | (2 << 6);    // sub-block 1 scale 3; top bits of sub-block 5's scale = 2
  b.scales[5] = 7 | (1 << 6);    // sub-block 1 min 7; top bits of sub-block 5's min = 1
  b.scales[9] = 4 | (9 << 4);    // sub-block 5: scale low 4 bits 4 -> 36, min low 4 bits 9 -> 25
  b.qs[0] = 0x00 | (0x0f << 4);  // weight 32 (sub-block 1, q 15)
  b.qs[64 + 1] = 0x0a << 4;      // weight 160 + 1 (sub-block 5, q 10)
  std::vector<float> y(kQK_K);
  dequantize_row_q4_K(&b, y.data(), kQK_K);
  EXPECT_EQ(y[32], 3.0f * 15 - 0.5f * 7);
  EXPECT_EQ(y[33], -0.5f * 7);
  EXPECT_EQ(y[161], 36.0f * 10 - 0.5f * 25);
  EXPECT_EQ(y[0], 0.0f);
  uint8_t sc, m;
  unpack_k_scale_min(5, b.scales, &sc, &m);
  EXPECT_EQ(sc, 36);
  EXPECT_EQ(m, 25);
}

TEST_F(KQuant, DequantizeRandomBlocksMatchesFloat64Decoder) {
  for (int it = 0; it < 200; ++it) {
    auto b4 = random_bytes<BlockQ4K>(rng);
    b4.d = random_scale();
    b4.dmin = random_scale();
    std::vector<float> y(kQK_K);
    dequantize_row_q4_K(&b4, y.data(), kQK_K);
    expect_close(y, ref_decode_q4k(b4), "Q4_K");
    auto b5 = random_bytes<BlockQ5K>(rng);
    b5.d = random_scale();
    b5.dmin = random_scale();
    dequantize_row_q5_K(&b5, y.data(), kQK_K);
    expect_close(y, ref_decode_q5k(b5), "Q5_K");
    auto b6 = random_bytes<BlockQ6K>(rng);
    b6.d = random_scale();
    dequantize_row_q6_K(&b6, y.data(), kQK_K);
    expect_close(y, ref_decode_q6k(b6), "Q6_K");
  }
}

TEST_F(KQuant, Q5FallbacksDecodeAndRoundTrip) {
  // Hand-made Q5_0: d = 0.25, weight 3 level 20 (fifth bit in qh bit 3), weight 17 level 1 (high nibble of byte 1).
  BlockQ5_0 b0{};
  b0.d = fp32_to_fp16(0.25f);
  b0.qs[3] = 4;
  b0.qh[0] = 1 << 3;
  b0.qs[1] = 1 << 4;
  std::vector<float> y(32);
  dequantize_row_q5_0(&b0, y.data(), 32);
  EXPECT_EQ(y[3], 0.25f * (20 - 16));
  EXPECT_EQ(y[17], 0.25f * (1 - 16));
  EXPECT_EQ(y[0], 0.25f * -16);
  // Hand-made Q5_1: d = 2, m = -1, weight 31 level 31 (fifth bit in qh[3] bit 7).
  BlockQ5_1 b1{};
  b1.d = fp32_to_fp16(2.0f);
  b1.m = fp32_to_fp16(-1.0f);
  b1.qs[15] = 0xf0;
  b1.qh[3] = 0x80;
  dequantize_row_q5_1(&b1, y.data(), 32);
  EXPECT_EQ(y[31], 2.0f * 31 - 1.0f);
  EXPECT_EQ(y[15], -1.0f);
  // Round trips: Q5_0 error <= d/2 + fp16(d) error (31 levels over 2 amax); Q5_1 <= step / 2 + fp16 errors.
  const auto x = gaussian(32 * 64, 0.1f);
  expect_error_in_steps(x, round_trip(x, quantize_row_q5_0_ref, dequantize_row_q5_0, 32), 32, 32, true, "Q5_0");
  expect_error_in_steps(x, round_trip(x, quantize_row_q5_1_ref, dequantize_row_q5_1, 32), 32, 31, false, "Q5_1");
}

TEST_F(KQuant, RoundTripErrorOnRandomData) {
  for (float mean : {0.0f, 0.03f, -0.05f}) {
    const auto x = gaussian(kQK_K * 64, 0.02f, mean);
    expect_error_in_steps(x, round_trip(x, quantize_row_q4_K_ref, dequantize_row_q4_K, kQK_K), 32, 15, false, "Q4_K");
    expect_error_in_steps(x, round_trip(x, quantize_row_q5_K_ref, dequantize_row_q5_K, kQK_K), 32, 31, false, "Q5_K");
    expect_error_in_steps(x, round_trip(x, quantize_row_q6_K_ref, dequantize_row_q6_K, kQK_K), 16, 63, true, "Q6_K");
  }
}

TEST_F(KQuant, NegativeOnlyRows) {
  std::uniform_real_distribution<float> ud(-3.0f, -1.0f);
  std::vector<float> x(kQK_K * 8);
  for (auto& v : x) v = ud(rng);
  expect_error_in_steps(x, round_trip(x, quantize_row_q4_K_ref, dequantize_row_q4_K, kQK_K), 32, 15, false, "Q4_K");
  expect_error_in_steps(x, round_trip(x, quantize_row_q5_K_ref, dequantize_row_q5_K, kQK_K), 32, 31, false, "Q5_K");
  expect_error_in_steps(x, round_trip(x, quantize_row_q6_K_ref, dequantize_row_q6_K, kQK_K), 16, 63, true, "Q6_K");
}

TEST_F(KQuant, AllZeroBlocksDecodeToZero) {
  const std::vector<float> x(kQK_K * 2, 0.0f);
  for (const auto& y : {round_trip(x, quantize_row_q4_K_ref, dequantize_row_q4_K, kQK_K),
                        round_trip(x, quantize_row_q5_K_ref, dequantize_row_q5_K, kQK_K),
                        round_trip(x, quantize_row_q6_K_ref, dequantize_row_q6_K, kQK_K)}) {
    for (float v : y) ASSERT_EQ(v, 0.0f);
  }
  BlockQ6K b6;
  std::memset(&b6, 0xab, sizeof(b6));
  quantize_row_q6_K_ref(x.data(), &b6, kQK_K);
  const auto* p = reinterpret_cast<const uint8_t*>(&b6);
  for (size_t i = 0; i < sizeof(b6); ++i) ASSERT_EQ(p[i], 0) << "Q6_K zero block byte " << i;
}

// A constant block is reproduced to fp16 precision (positive: scale * 15 = c; negative: the min alone).
TEST_F(KQuant, ConstantBlocks) {
  for (float c : {0.7f, -1.3f, 3e-3f}) {
    const std::vector<float> x(kQK_K, c);
    // fp16 rounding of the super-block scale, relative (normal) or absolute (subnormal, times up to 128 * 32).
    const double tol = std::fabs(c) * 2.0 / 2048.0 + 4096 * kFp16Quantum / 2;
    for (const auto& y : {round_trip(x, quantize_row_q4_K_ref, dequantize_row_q4_K, kQK_K),
                          round_trip(x, quantize_row_q5_K_ref, dequantize_row_q5_K, kQK_K),
                          round_trip(x, quantize_row_q6_K_ref, dequantize_row_q6_K, kQK_K)}) {
      for (float v : y) ASSERT_NEAR(v, c, tol) << "constant " << c;
    }
  }
}

// One huge outlier: it survives to a level of its own sub-block, and every other weight is off by at most its own
// sub-block step or, where the sub-block scale rounds to 0 against the outlier's, by its own magnitude.
TEST_F(KQuant, OneHugeOutlier) {
  auto x = gaussian(kQK_K, 0.01f);
  x[77] = 50.0f;
  struct Case {
    const char* name;
    std::vector<float> y;
    int levels;
  };
  const std::vector<Case> cases = {{"Q4_K", round_trip(x, quantize_row_q4_K_ref, dequantize_row_q4_K, kQK_K), 15},
                                   {"Q5_K", round_trip(x, quantize_row_q5_K_ref, dequantize_row_q5_K, kQK_K), 31},
                                   {"Q6_K", round_trip(x, quantize_row_q6_K_ref, dequantize_row_q6_K, kQK_K), 63}};
  for (const auto& c : cases) {
    EXPECT_NEAR(c.y[77], 50.0, 50.0 / c.levels) << c.name;
    double small_amax = 0;
    for (int i = 0; i < kQK_K; ++i) {
      if (i != 77) small_amax = std::max(small_amax, static_cast<double>(std::fabs(x[i])));
    }
    for (int i = 0; i < kQK_K; ++i) {
      if (i / 16 == 77 / 16) continue;  // the outlier's own (Q6_K) sub-block shares its coarse step
      if (i / 32 == 77 / 32 && c.levels != 63) continue;
      ASSERT_LE(std::fabs(c.y[i] - x[i]), 2.0 * small_amax + 1e-6) << c.name << " weight " << i;
    }
  }
}

TEST_F(KQuant, RowLengthMustBeAMultipleOf256) {
  std::vector<float> x(kQK_K + 32, 0.0f);
  std::vector<BlockQ4K> b(2);
  EXPECT_THROW(quantize_row_q4_K_ref(x.data(), b.data(), kQK_K + 32), c10::Error);
}

TEST(KQuantMix, UseMoreBitsLayers) {
  // n = 8: n/8 = 1, 7n/8 = 7 -> layers 0, 3, 6, 7; n = 32: 0-3, 6, 9, ..., 27 (every third after 4), 28-31.
  std::vector<int64_t> got;
  for (int64_t i = 0; i < 8; ++i) {
    if (kquant_use_more_bits(i, 8)) got.push_back(i);
  }
  EXPECT_EQ(got, (std::vector<int64_t>{0, 3, 6, 7}));
  got.clear();
  for (int64_t i = 0; i < 32; ++i) {
    if (kquant_use_more_bits(i, 32)) got.push_back(i);
  }
  EXPECT_EQ(got, (std::vector<int64_t>{0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31}));
}

TEST(KQuantMix, TypesPerTensor) {
  const KQuantModel m{/*n_layer=*/8, /*has_output=*/true};
  const auto q4 = [&](const char* name, std::vector<int64_t> shape) {
    return tensor_type_for(name, shape, OutType::kQ4_K_M, m);
  };
  EXPECT_EQ(q4("blk.0.attn_norm.weight", {256}), GgmlType::kF32);
  EXPECT_EQ(q4("blk.1.attn_q.weight", {256, 256}), GgmlType::kQ4_K);
  EXPECT_EQ(q4("blk.0.attn_v.weight", {128, 256}), GgmlType::kQ6_K);    // use_more_bits(0, 8)
  EXPECT_EQ(q4("blk.1.attn_v.weight", {128, 256}), GgmlType::kQ4_K);    // not picked
  EXPECT_EQ(q4("blk.6.ffn_down.weight", {256, 768}), GgmlType::kQ6_K);  // picked
  EXPECT_EQ(q4("blk.5.ffn_down.weight", {256, 768}), GgmlType::kQ4_K);
  EXPECT_EQ(q4("blk.2.attn_qkv.weight", {768, 256}), GgmlType::kQ4_K);
  EXPECT_EQ(q4("blk.3.attn_qkv.weight", {768, 256}), GgmlType::kQ6_K);
  EXPECT_EQ(q4("output.weight", {1024, 256}), GgmlType::kQ6_K);
  EXPECT_EQ(q4("token_embd.weight", {1024, 256}), GgmlType::kQ4_K);
  // Rows not a multiple of 256: Q4_K -> Q5_0, Q6_K -> Q8_0, output -> Q8_0; not even of 32: F16.
  EXPECT_EQ(q4("blk.1.ffn_down.weight", {128, 352}), GgmlType::kQ5_0);
  EXPECT_EQ(q4("blk.0.ffn_down.weight", {128, 352}), GgmlType::kQ8_0);
  EXPECT_EQ(q4("output.weight", {1024, 128}), GgmlType::kQ8_0);
  EXPECT_EQ(q4("blk.1.attn_q.weight", {80, 80}), GgmlType::kF16);
  // Tied embeddings: token_embd takes output.weight's rule.
  const KQuantModel tied{/*n_layer=*/8, /*has_output=*/false};
  EXPECT_EQ(tensor_type_for("token_embd.weight", {1024, 256}, OutType::kQ4_K_M, tied), GgmlType::kQ6_K);
  EXPECT_EQ(tensor_type_for("token_embd.weight", {1024, 64}, OutType::kQ5_K_M, tied), GgmlType::kQ8_0);
  // Q5_K_M: base Q5_K, fallback Q5_1; Q6_K: Q6_K everywhere, fallback Q8_0.
  EXPECT_EQ(tensor_type_for("blk.1.ffn_up.weight", {768, 256}, OutType::kQ5_K_M, m), GgmlType::kQ5_K);
  EXPECT_EQ(tensor_type_for("blk.7.attn_v.weight", {128, 256}, OutType::kQ5_K_M, m), GgmlType::kQ6_K);
  EXPECT_EQ(tensor_type_for("blk.1.ffn_up.weight", {352, 128}, OutType::kQ5_K_M, m), GgmlType::kQ5_1);
  EXPECT_EQ(tensor_type_for("blk.1.attn_v.weight", {128, 256}, OutType::kQ6_K, m), GgmlType::kQ6_K);
  EXPECT_EQ(tensor_type_for("token_embd.weight", {1024, 256}, OutType::kQ6_K, m), GgmlType::kQ6_K);
  EXPECT_EQ(tensor_type_for("blk.1.ffn_up.weight", {352, 128}, OutType::kQ6_K, m), GgmlType::kQ8_0);
}

TEST(KQuantMix, OutTypeNamesAndFileTypes) {
  EXPECT_EQ(parse_out_type("q4_k_m"), OutType::kQ4_K_M);
  EXPECT_EQ(parse_out_type("q5_k_m"), OutType::kQ5_K_M);
  EXPECT_EQ(parse_out_type("q6_k"), OutType::kQ6_K);
  EXPECT_EQ(out_type_name(OutType::kQ5_K_M), "q5_k_m");
  EXPECT_EQ(llama_file_type(OutType::kQ4_K_M), 15u);
  EXPECT_EQ(llama_file_type(OutType::kQ5_K_M), 17u);
  EXPECT_EQ(llama_file_type(OutType::kQ6_K), 18u);
  EXPECT_TRUE(is_kquant_mix(OutType::kQ6_K));
  EXPECT_FALSE(is_kquant_mix(OutType::kQ4_0));
}

// GGUF LoRA adapters stay F32 / F16 / BF16 / Q8_0: llama.cpp's converter writes no K-quant adapters.
TEST(KQuantMix, AdapterExportRefusesKQuants) {
  for (OutType t : {OutType::kQ4_K_M, OutType::kQ5_K_M, OutType::kQ6_K}) {
    AdapterExportOptions o;
    o.out_type = t;
    try {
      export_adapter_gguf("no-such-adapter", "", "unused.gguf", o);
      ADD_FAILURE() << "no error for " << out_type_name(t);
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("cannot be written as " + out_type_name(t)), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("HINT: use --outtype f32"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace qlora::gguf
