// ggml codecs: half/bfloat16 rounding against c10's conversions, Q8_0/Q4_0 blocks against hand-computed bytes,
// and their reconstruction error against the bounds the formats guarantee.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "gguf/ggml_quants.h"

namespace qlora::gguf {
namespace {

// Unit roundoff of fp16 (10 mantissa bits): |fp16(d) - d| <= d * 2^-11 for normal d.
constexpr double kFp16RelErr = 1.0 / 2048.0;

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<float> special_floats() {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -1.0f,
                          65504.0f,
                          65519.99f,
                          65520.0f,
                          -65520.0f,
                          1e9f,
                          6.1035156e-05f,
                          5.9604645e-08f,
                          2.9802322e-08f,
                          2.9802326e-08f,
                          1e-10f,
                          0.1f,
                          1.0f / 3.0f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::max()};
  // exact halfway cases between adjacent halfs (ties to even): 1 + 2^-11, 1 + 3 * 2^-11
  v.push_back(1.0f + std::ldexp(1.0f, -11));
  v.push_back(1.0f + 3 * std::ldexp(1.0f, -11));
  v.push_back(std::ldexp(1.0f, -25));      // halfway between 0 and the smallest subnormal half
  v.push_back(3 * std::ldexp(1.0f, -25));  // halfway between subnormals 1 and 2
  return v;
}

TEST(GgmlConvert, Fp16MatchesC10RoundToNearestEven) {
  std::vector<float> xs = special_floats();
  std::mt19937 rng(1);
  for (int i = 0; i < 200000; ++i) xs.push_back(from_bits(rng()));
  for (float x : xs) {
    const uint16_t ours = fp32_to_fp16(x);
    const uint16_t ref = c10::Half(x).x;
    if (std::isnan(x)) {
      EXPECT_EQ(ours & 0x7c00, 0x7c00);
      EXPECT_NE(ours & 0x3ff, 0) << "NaN must stay NaN";
      continue;
    }
    ASSERT_EQ(ours, ref) << "x=" << x;
    ASSERT_EQ(fp16_to_fp32(ours), static_cast<float>(c10::Half(ref, c10::Half::from_bits()))) << x;
  }
  // hand-checked values
  EXPECT_EQ(fp32_to_fp16(1.0f), 0x3C00);
  EXPECT_EQ(fp32_to_fp16(-2.0f), 0xC000);
  EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7BFF);
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7C00);                          // rounds up to inf
  EXPECT_EQ(fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);      // tie -> even (down)
  EXPECT_EQ(fp32_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);  // tie -> even (up)
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -24)), 0x0001);             // smallest subnormal
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -25)), 0x0000);             // tie -> even (0)
}

TEST(GgmlConvert, Bf16MatchesC10RoundToNearestEven) {
  std::vector<float> xs = special_floats();
  std::mt19937 rng(2);
  for (int i = 0; i < 200000; ++i) xs.push_back(from_bits(rng()));
  for (float x : xs) {
    const uint16_t ours = fp32_to_bf16(x);
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(bf16_to_fp32(ours)));
      continue;
    }
    ASSERT_EQ(ours, c10::BFloat16(x).x) << "x=" << x;
    ASSERT_EQ(bf16_to_fp32(ours), static_cast<float>(c10::BFloat16(x)));
  }
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(fp32_to_bf16(from_bits(0x3F808000)), 0x3F80);  // tie -> even (down)
  EXPECT_EQ(fp32_to_bf16(from_bits(0x3F818000)), 0x3F82);  // tie -> even (up)
}

TEST(GgmlQuants, BlockSizesAndBitsPerWeight) {
  EXPECT_EQ(sizeof(BlockQ8_0), 34u);
  EXPECT_EQ(sizeof(BlockQ4_0), 18u);
  EXPECT_DOUBLE_EQ(8.0 * sizeof(BlockQ8_0) / 32, 8.5);
  EXPECT_DOUBLE_EQ(8.0 * sizeof(BlockQ4_0) / 32, 4.5);
  EXPECT_EQ(ggml_nbytes(GgmlType::kQ8_0, 64), 68u);
  EXPECT_EQ(ggml_nbytes(GgmlType::kQ4_0, 64), 36u);
  EXPECT_EQ(ggml_nbytes(GgmlType::kBF16, 3), 6u);
}

// amax = 127 makes d = 1 exactly (fp16 0x3C00) and q = round-half-away(x).
TEST(GgmlQuants, Q8_0HandBuiltBlock) {
  std::vector<float> x(32, 0.0f);
  const float in[] = {127.0f, -3.4f, 2.5f, -2.5f, 0.49f, -0.5f, 100.6f, -126.5f};
  const int8_t want[] = {127, -3, 3, -3, 0, -1, 101, -127};
  for (int j = 0; j < 8; ++j) x[j] = in[j];
  for (int j = 8; j < 32; ++j) x[j] = static_cast<float>(j) - 20.0f;  // integers: q = x
  BlockQ8_0 b;
  quantize_row_q8_0_ref(x.data(), &b, 32);
  EXPECT_EQ(b.d, 0x3C00);
  for (int j = 0; j < 8; ++j) EXPECT_EQ(b.qs[j], want[j]) << j;
  for (int j = 8; j < 32; ++j) EXPECT_EQ(b.qs[j], j - 20) << j;
  uint8_t bytes[34];
  std::memcpy(bytes, &b, 34);
  EXPECT_EQ(bytes[0], 0x00);  // little-endian fp16 first
  EXPECT_EQ(bytes[1], 0x3C);
  EXPECT_EQ(bytes[2], 127);
  EXPECT_EQ(bytes[3], static_cast<uint8_t>(-3));
  std::vector<float> y(32);
  dequantize_row_q8_0(&b, y.data(), 32);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], static_cast<float>(b.qs[j]));
}

// Largest magnitude -8 makes d = -8 / -8 = 1 (fp16 0x3C00): q = min(15, trunc(x + 8.5)); byte j = q[j] | q[j+16] << 4.
TEST(GgmlQuants, Q4_0HandBuiltBlock) {
  std::vector<float> x(32, 0.0f);
  x[0] = -8.0f;   // q 0
  x[1] = 7.0f;    // q 15
  x[2] = 7.4f;    // trunc(15.9) = 15
  x[3] = -0.5f;   // trunc(8.0) = 8
  x[4] = 0.6f;    // trunc(9.1) = 9
  x[5] = -0.6f;   // trunc(7.9) = 7
  x[16] = 3.0f;   // q 11, high nibble of byte 0
  x[17] = -7.9f;  // trunc(0.6) = 0, high nibble of byte 1
  x[31] = 1.2f;   // trunc(9.7) = 9, high nibble of byte 15
  BlockQ4_0 b;
  quantize_row_q4_0_ref(x.data(), &b, 32);
  EXPECT_EQ(b.d, 0x3C00);
  EXPECT_EQ(b.qs[0], 0x00 | (11 << 4));
  EXPECT_EQ(b.qs[1], 15 | (0 << 4));
  EXPECT_EQ(b.qs[2], 15 | (8 << 4));  // x[18] = 0 -> trunc(8.5) = 8
  EXPECT_EQ(b.qs[3], 8 | (8 << 4));
  EXPECT_EQ(b.qs[4], 9 | (8 << 4));
  EXPECT_EQ(b.qs[5], 7 | (8 << 4));
  EXPECT_EQ(b.qs[15], 8 | (9 << 4));
  std::vector<float> y(32);
  dequantize_row_q4_0(&b, y.data(), 32);
  EXPECT_EQ(y[0], -8.0f);
  EXPECT_EQ(y[1], 7.0f);
  EXPECT_EQ(y[16], 3.0f);
  EXPECT_EQ(y[17], -8.0f);
  EXPECT_EQ(y[31], 1.0f);

  // Positive extreme: d = 8 / -8 = -1, and -7.6 / d + 8.5 = 16.1 is clamped to 15 -> dequant -7.
  std::vector<float> z(32, 0.0f);
  z[0] = 8.0f;
  z[1] = -7.6f;
  quantize_row_q4_0_ref(z.data(), &b, 32);
  EXPECT_EQ(b.d, 0xBC00);
  EXPECT_EQ(b.qs[0] & 15, 0);
  EXPECT_EQ(b.qs[1] & 15, 15);
  dequantize_row_q4_0(&b, y.data(), 32);
  EXPECT_EQ(y[0], 8.0f);
  EXPECT_EQ(y[1], -7.0f);
}

TEST(GgmlQuants, AllZeroBlocksStayZero) {
  std::vector<float> x(64, 0.0f), y(64, 1.0f);
  BlockQ8_0 b8[2];
  quantize_row_q8_0_ref(x.data(), b8, 64);
  dequantize_row_q8_0(b8, y.data(), 64);
  for (float v : y) EXPECT_EQ(v, 0.0f);
  BlockQ4_0 b4[2];
  quantize_row_q4_0_ref(x.data(), b4, 64);
  EXPECT_EQ(b4[0].qs[0], 0x88);  // q = 8 for zero (dequant (8-8)*0)
  dequantize_row_q4_0(b4, y.data(), 64);
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

// Q8_0: |x - x'| <= d/2 + 127 * |d - fp16(d)| <= d * (1/2 + 127 * 2^-11), d = amax / 127.
TEST(GgmlQuants, Q8_0ErrorWithinBound) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  const int64_t n = 32 * 512;
  std::vector<float> x(n), y(n);
  for (auto& v : x) v = nd(rng);
  std::vector<BlockQ8_0> b(n / 32);
  quantize_row_q8_0_ref(x.data(), b.data(), n);
  dequantize_row_q8_0(b.data(), y.data(), n);
  for (int64_t blk = 0; blk < n / 32; ++blk) {
    double amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(static_cast<double>(x[blk * 32 + j])));
    const double d = amax / 127.0;
    const double bound = d * (0.5 + 127 * kFp16RelErr) + 1e-12;
    for (int j = 0; j < 32; ++j) ASSERT_LE(std::fabs(x[blk * 32 + j] - y[blk * 32 + j]), bound) << blk << "," << j;
  }
}

// Q4_0: with d = m / -8 (m the signed value of largest magnitude), x / d lies in [-8, 8]. Codes 0..15 cover x/d in
// [-8, 7]: |x - x'| <= |d|/2 + 8 * |d - fp16(d)| when x/d <= 7.5; the clamp of 16 to 15 allows up to
// |d| + 8 * |d - fp16(d)| when x/d is in (7.5, 8] (only values of magnitude close to |m| with the opposite sign).
TEST(GgmlQuants, Q4_0ErrorWithinBound) {
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.0f, 0.05f);
  const int64_t n = 32 * 512;
  std::vector<float> x(n), y(n);
  for (auto& v : x) v = nd(rng);
  std::vector<BlockQ4_0> b(n / 32);
  quantize_row_q4_0_ref(x.data(), b.data(), n);
  dequantize_row_q4_0(b.data(), y.data(), n);
  for (int64_t blk = 0; blk < n / 32; ++blk) {
    double amax = 0, m = 0;
    for (int j = 0; j < 32; ++j) {
      const double v = x[blk * 32 + j];
      if (std::fabs(v) > amax) amax = std::fabs(v), m = v;
    }
    const double d = m / -8.0;
    for (int j = 0; j < 32; ++j) {
      const double v = x[blk * 32 + j];
      const double ratio = d != 0 ? v / d : 0;
      const double bound = std::fabs(d) * ((ratio <= 7.5 ? 0.5 : 1.0) + 8 * kFp16RelErr) + 1e-12;
      ASSERT_LE(std::fabs(v - y[blk * 32 + j]), bound) << blk << "," << j;
    }
  }
}

}  // namespace
}  // namespace qlora::gguf
