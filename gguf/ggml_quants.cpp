// ggml's Q8_0 / Q4_0 codecs and the fp16 / bf16 conversions (scalar only). Naming (ggml's rule):
// `quantize_row_<type>_ref` is the scalar reference quantizer (ggml-quants.c keeps `_ref` for the version every SIMD
// quantizer is checked against), `dequantize_row_<type>` its inverse; a SIMD quantizer added here would be
// `quantize_row_<type>_avx2` / `_avx512` and tested against `_ref`.
#include "gguf/ggml_quants.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "gguf/ggml_kquants.h"

namespace qlora::gguf {

namespace {

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// Shifts m right by `shift` (1..31) rounding to nearest, ties to even.
uint32_t shift_round_even(uint32_t m, int shift) {
  const uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1);
  return (rem > half || (rem == half && (q & 1u))) ? q + 1 : q;
}

}  // namespace

std::string ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
      return "F32";
    case GgmlType::kF16:
      return "F16";
    case GgmlType::kQ4_0:
      return "Q4_0";
    case GgmlType::kQ5_0:
      return "Q5_0";
    case GgmlType::kQ5_1:
      return "Q5_1";
    case GgmlType::kQ8_0:
      return "Q8_0";
    case GgmlType::kQ4_K:
      return "Q4_K";
    case GgmlType::kQ5_K:
      return "Q5_K";
    case GgmlType::kQ6_K:
      return "Q6_K";
    case GgmlType::kBF16:
      return "BF16";
  }
  return "type" + std::to_string(static_cast<uint32_t>(t));
}

bool ggml_is_quantized(GgmlType t) {
  return ggml_block_size(t) > 1;
}

int64_t ggml_block_size(GgmlType t) {
  switch (t) {
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
      return 32;
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K:
      return kQK_K;
    default:
      return 1;
  }
}

int64_t ggml_block_bytes(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
      return 4;
    case GgmlType::kF16:
      return 2;
    case GgmlType::kBF16:
      return 2;
    case GgmlType::kQ4_0:
      return sizeof(BlockQ4_0);
    case GgmlType::kQ5_0:
      return sizeof(BlockQ5_0);
    case GgmlType::kQ5_1:
      return sizeof(BlockQ5_1);
    case GgmlType::kQ8_0:
      return sizeof(BlockQ8_0);
    case GgmlType::kQ4_K:
      return sizeof(BlockQ4K);
    case GgmlType::kQ5_K:
      return sizeof(BlockQ5K);
    case GgmlType::kQ6_K:
      return sizeof(BlockQ6K);
  }
  TORCH_CHECK(false, "unknown ggml type ", static_cast<uint32_t>(t));
}

uint64_t ggml_nbytes(GgmlType t, int64_t n) {
  const int64_t bs = ggml_block_size(t);
  TORCH_CHECK(n % bs == 0, ggml_type_name(t), ": ", n, " elements is not a multiple of the block size ", bs);
  return static_cast<uint64_t>(n / bs) * static_cast<uint64_t>(ggml_block_bytes(t));
}

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
uint16_t fp32_to_fp16(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((ax >> 13) & 0x3ffu);  // NaN (quiet)
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds past 65504: inf (inf stays inf)
  const int e = static_cast<int>(ax >> 23);      // biased fp32 exponent
  if (e < 113) {                                 // below 2^-14: half subnormal (or zero), unit 2^-24
    if (ax == 0) return sign;
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;  // value = m * 2^(e - 150)
    const int shift = 126 - e;                        // value / 2^-24 = m >> shift
    if (shift >= 32) return sign;
    return sign | static_cast<uint16_t>(shift_round_even(m, shift));  // may carry into the first normal
  }
  const uint32_t h = (static_cast<uint32_t>(e - 112) << 10) | ((ax & 0x7fffffu) >> 13);
  const uint32_t rem = ax & 0x1fffu;
  const uint32_t rounded = (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ? h + 1 : h;
  return sign | static_cast<uint16_t>(rounded);
}

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t m = h & 0x3ffu;
  if (e == 0x1f) return bits_float(sign | 0x7f800000u | (m << 13));
  if (e == 0) {
    const float v = std::ldexp(static_cast<float>(m), -24);
    return sign ? -v : v;
  }
  return bits_float(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t fp32_to_bf16(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>(shift_round_even(x, 16));  // the sign rides along in the top bits
}

float bf16_to_fp32(uint16_t b) {
  return bits_float(static_cast<uint32_t>(b) << 16);
}

void quantize_row_q8_0_ref(const float* x, BlockQ8_0* y, int64_t k) {
  TORCH_CHECK(k % kQK8_0 == 0, "Q8_0 row length ", k, " is not a multiple of 32");
  for (int64_t i = 0; i < k / kQK8_0; ++i) {
    const float* xb = x + i * kQK8_0;
    float amax = 0.0f;
    for (int64_t j = 0; j < kQK8_0; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int64_t j = 0; j < kQK8_0; ++j) y[i].qs[j] = static_cast<int8_t>(std::round(xb[j] * id));
  }
}

void dequantize_row_q8_0(const BlockQ8_0* x, float* y, int64_t k) {
  TORCH_CHECK(k % kQK8_0 == 0, "Q8_0 row length ", k, " is not a multiple of 32");
  for (int64_t i = 0; i < k / kQK8_0; ++i) {
    const float d = fp16_to_fp32(x[i].d);
    for (int64_t j = 0; j < kQK8_0; ++j) y[i * kQK8_0 + j] = static_cast<float>(x[i].qs[j]) * d;
  }
}

void quantize_row_q4_0_ref(const float* x, BlockQ4_0* y, int64_t k) {
  TORCH_CHECK(k % kQK4_0 == 0, "Q4_0 row length ", k, " is not a multiple of 32");
  constexpr int64_t kHalf = kQK4_0 / 2;
  for (int64_t i = 0; i < k / kQK4_0; ++i) {
    const float* xb = x + i * kQK4_0;
    float amax = 0.0f;  // largest magnitude
    float max = 0.0f;   // the signed value that has it (first one on ties)
    for (int64_t j = 0; j < kQK4_0; ++j) {
      if (amax < std::fabs(xb[j])) {
        amax = std::fabs(xb[j]);
        max = xb[j];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    for (int64_t j = 0; j < kHalf; ++j) {
      // x * id + 8.5 lies in [0.5, 16.5]; the int8 cast truncates, 16 is clamped to 15.
      const int lo = std::min(15, static_cast<int>(static_cast<int8_t>(xb[j] * id + 8.5f)));
      const int hi = std::min(15, static_cast<int>(static_cast<int8_t>(xb[j + kHalf] * id + 8.5f)));
      y[i].qs[j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

void dequantize_row_q4_0(const BlockQ4_0* x, float* y, int64_t k) {
  TORCH_CHECK(k % kQK4_0 == 0, "Q4_0 row length ", k, " is not a multiple of 32");
  constexpr int64_t kHalf = kQK4_0 / 2;
  for (int64_t i = 0; i < k / kQK4_0; ++i) {
    const float d = fp16_to_fp32(x[i].d);
    for (int64_t j = 0; j < kHalf; ++j) {
      y[i * kQK4_0 + j] = static_cast<float>((x[i].qs[j] & 0x0f) - 8) * d;
      y[i * kQK4_0 + j + kHalf] = static_cast<float>((x[i].qs[j] >> 4) - 8) * d;
    }
  }
}

namespace {

// The low nibbles of q[0..31] into qs (q[j] low, q[j + 16] high) and their fifth bits into qh (bit j of a
// little-endian u32), the Q5_0 / Q5_1 layout.
void pack_q5(const uint8_t* q, uint8_t* qs, uint8_t* qh) {
  uint32_t high = 0;
  for (int j = 0; j < 16; ++j) {
    qs[j] = static_cast<uint8_t>((q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4));
    high |= static_cast<uint32_t>((q[j] >> 4) & 1) << j;
    high |= static_cast<uint32_t>((q[j + 16] >> 4) & 1) << (j + 16);
  }
  for (int b = 0; b < 4; ++b) qh[b] = static_cast<uint8_t>(high >> (8 * b));
}

// The 5-bit level of weight j (0..31) of a Q5_0 / Q5_1 block.
int unpack_q5(const uint8_t* qs, const uint8_t* qh, int j) {
  const int low = j < 16 ? (qs[j] & 0x0f) : (qs[j - 16] >> 4);
  return low | (((qh[j / 8] >> (j % 8)) & 1) << 4);
}

}  // namespace

void quantize_row_q5_0_ref(const float* x, BlockQ5_0* y, int64_t k) {
  TORCH_CHECK(k % kQK5_0 == 0, "Q5_0 row length ", k, " is not a multiple of 32");
  for (int64_t i = 0; i < k / kQK5_0; ++i) {
    const float* xb = x + i * kQK5_0;
    float amax = 0.0f;  // largest magnitude
    float max = 0.0f;   // the signed value that has it (first one on ties)
    for (int64_t j = 0; j < kQK5_0; ++j) {
      if (amax < std::fabs(xb[j])) {
        amax = std::fabs(xb[j]);
        max = xb[j];
      }
    }
    const float d = max / -16.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    uint8_t q[kQK5_0];
    // x * id + 16.5 lies in [0.5, 32.5]; the int8 cast truncates, 32 is clamped to 31.
    for (int64_t j = 0; j < kQK5_0; ++j)
      q[j] = static_cast<uint8_t>(std::min(31, static_cast<int>(static_cast<int8_t>(xb[j] * id + 16.5f))));
    pack_q5(q, y[i].qs, y[i].qh);
  }
}

void dequantize_row_q5_0(const BlockQ5_0* x, float* y, int64_t k) {
  TORCH_CHECK(k % kQK5_0 == 0, "Q5_0 row length ", k, " is not a multiple of 32");
  for (int64_t i = 0; i < k / kQK5_0; ++i) {
    const float d = fp16_to_fp32(x[i].d);
    for (int j = 0; j < kQK5_0; ++j) y[i * kQK5_0 + j] = static_cast<float>(unpack_q5(x[i].qs, x[i].qh, j) - 16) * d;
  }
}

void quantize_row_q5_1_ref(const float* x, BlockQ5_1* y, int64_t k) {
  TORCH_CHECK(k % kQK5_1 == 0, "Q5_1 row length ", k, " is not a multiple of 32");
  for (int64_t i = 0; i < k / kQK5_1; ++i) {
    const float* xb = x + i * kQK5_1;
    float min = FLT_MAX;
    float max = -FLT_MAX;
    for (int64_t j = 0; j < kQK5_1; ++j) {
      if (xb[j] < min) min = xb[j];
      if (xb[j] > max) max = xb[j];
    }
    const float d = (max - min) / 31.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = fp32_to_fp16(d);
    y[i].m = fp32_to_fp16(min);
    uint8_t q[kQK5_1];
    // (x - min) * id + 0.5 lies in [0.5, 31.5]: truncated to a byte.
    for (int64_t j = 0; j < kQK5_1; ++j) q[j] = static_cast<uint8_t>((xb[j] - min) * id + 0.5f);
    pack_q5(q, y[i].qs, y[i].qh);
  }
}

void dequantize_row_q5_1(const BlockQ5_1* x, float* y, int64_t k) {
  TORCH_CHECK(k % kQK5_1 == 0, "Q5_1 row length ", k, " is not a multiple of 32");
  for (int64_t i = 0; i < k / kQK5_1; ++i) {
    const float d = fp16_to_fp32(x[i].d);
    const float m = fp16_to_fp32(x[i].m);
    for (int j = 0; j < kQK5_1; ++j) y[i * kQK5_1 + j] = static_cast<float>(unpack_q5(x[i].qs, x[i].qh, j)) * d + m;
  }
}

}  // namespace qlora::gguf
