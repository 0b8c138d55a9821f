// quant/codec_4bit.h: the per-element arithmetic that dequantize_blocks_ref (CPU) and the CUDA kernels share, checked
// on the CPU against independent references (c10's bf16 rounding, float64 arithmetic rounded twice).
#include <c10/util/BFloat16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "quant/codec_4bit.h"

namespace qlora::quant::codec {
namespace {

float from_bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

TEST(Codec4bit, NibbleOrderIsHighFirst) {
  const uint8_t packed[] = {0xA5, 0x3C};
  EXPECT_EQ(nibble_at(packed, 0), 0xA);
  EXPECT_EQ(nibble_at(packed, 1), 0x5);
  EXPECT_EQ(nibble_at(packed, 2), 0x3);
  EXPECT_EQ(nibble_at(packed, 3), 0xC);
}

TEST(Codec4bit, Bf16RoundingEqualsC10OnTiesSubnormalsInfAndNan) {
  std::vector<uint32_t> bits = {0x00000000u, 0x80000000u, 0x3F808000u, 0x3F818000u, 0x3F80FFFFu,
                                0x00000001u, 0x00008000u, 0x00018000u, 0x7F7FFFFFu, 0x7F800000u,
                                0xFF800000u, 0x7FC00000u, 0x7F800001u, 0xFFFFFFFFu, 0x477FE000u};
  std::mt19937 rng(7);
  for (int i = 0; i < 200000; ++i) bits.push_back(rng());
  for (uint32_t b : bits) {
    const float f = from_bits(b);
    EXPECT_EQ(bf16_bits_rne(f), c10::BFloat16(f).x) << std::hex << b;
  }
}

TEST(Codec4bit, DoubleQuantAbsmaxIsTwoSeparateRoundings) {
  std::vector<float> dyn(256);
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (float& d : dyn) d = u(rng);
  for (int i = 0; i < 10000; ++i) {
    const auto q = static_cast<uint8_t>(rng() & 0xFF);
    const float a2 = u(rng) * 3.0f, off = u(rng);
    const auto product = static_cast<float>(static_cast<double>(dyn[q]) * a2);   // exact product, rounded once
    const auto expect = static_cast<float>(static_cast<double>(product) + off);  // exact sum, rounded once
    EXPECT_EQ(absmax_from_dq(q, a2, off, dyn.data()), expect);
  }
}

TEST(Codec4bit, DequantValueIsCodeTimesAbsmax) {
  const uint8_t packed[] = {0x0F, 0x71};
  const float code[16] = {-1.0f, -0.5f, 0, 0, 0, 0, 0, 0.25f, 0, 0, 0, 0, 0, 0, 0, 1.0f};
  EXPECT_EQ(dequant_value(packed, 0, code, 2.0f), -2.0f);
  EXPECT_EQ(dequant_value(packed, 1, code, 2.0f), 2.0f);
  EXPECT_EQ(dequant_value(packed, 2, code, 2.0f), 0.5f);
  EXPECT_EQ(dequant_value(packed, 3, code, 2.0f), -1.0f);
}

}  // namespace
}  // namespace qlora::quant::codec
