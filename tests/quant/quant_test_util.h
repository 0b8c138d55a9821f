// Helpers for the quant tests: golden-file loading, hex <-> bytes, bitwise tensor comparison.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_util.h"

namespace qlora::test {

inline const nlohmann::json& nf4_golden() {
  static const nlohmann::json j = [] {
    std::ifstream f(fixtures_dir() / "nf4_vectors.json");
    EXPECT_TRUE(f.good()) << "missing " << (fixtures_dir() / "nf4_vectors.json");
    return nlohmann::json::parse(f);
  }();
  return j;
}

inline std::vector<uint8_t> from_hex(const std::string& hex) {
  std::vector<uint8_t> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return out;
}

inline std::string to_hex(const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous().to(torch::kCPU);
  const auto* p = static_cast<const uint8_t*>(c.data_ptr());
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < c.nbytes(); ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

// Tensor of `dtype` and `shape` whose little-endian bytes are `hex`.
inline torch::Tensor tensor_from_hex(const std::string& hex, torch::ScalarType dtype, std::vector<int64_t> shape) {
  const std::vector<uint8_t> bytes = from_hex(hex);
  torch::Tensor t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
  EXPECT_EQ(t.nbytes(), bytes.size());
  std::memcpy(t.data_ptr(), bytes.data(), std::min(t.nbytes(), bytes.size()));
  return t;
}

// fp32 values from a JSON array (the file stores each fp32 exactly as a double).
inline torch::Tensor f32_from_json(const nlohmann::json& arr) {
  std::vector<float> v;
  for (const auto& x : arr) v.push_back(static_cast<float>(x.get<double>()));
  return torch::from_blob(v.data(), {static_cast<int64_t>(v.size())}, torch::kFloat32).clone();
}

inline torch::ScalarType golden_dtype(const std::string& s) {
  if (s == "F32") return torch::kFloat32;
  if (s == "BF16") return torch::kBFloat16;
  if (s == "F16") return torch::kHalf;
  ADD_FAILURE() << "unknown dtype " << s;
  return torch::kFloat32;
}

// Same bytes (bit-exact, so -0 != +0 and NaN payloads count).
inline bool bits_equal(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.numel() != b.numel()) return false;
  const torch::Tensor ca = a.contiguous().cpu(), cb = b.contiguous().cpu();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

// Index of the first differing element (for messages), or -1.
inline int64_t first_bit_mismatch(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor ca = a.contiguous().cpu(), cb = b.contiguous().cpu();
  const int64_t es = static_cast<int64_t>(ca.element_size());
  const auto* pa = static_cast<const uint8_t*>(ca.data_ptr());
  const auto* pb = static_cast<const uint8_t*>(cb.data_ptr());
  for (int64_t i = 0; i < std::min(ca.numel(), cb.numel()); ++i) {
    if (std::memcmp(pa + i * es, pb + i * es, static_cast<size_t>(es)) != 0) return i;
  }
  return ca.numel() == cb.numel() ? -1 : std::min(ca.numel(), cb.numel());
}

}  // namespace qlora::test
