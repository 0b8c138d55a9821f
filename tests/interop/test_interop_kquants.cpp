// K-quant GGUF exports against real llama.cpp (label `interop`): runs tests/interop/check_kquants.py with the
// project's .venv python (QLORA_PYTHON), which requires every tensor of our q4_k_m / q5_k_m / q6_k exports of six
// models (llama with rows of 256, tied embeddings, the tiny fixture's fallbacks, an F16 fallback, phi3, gemma2) to be
// byte-identical to llama_model_quantize's output on our f16 export, and llama.cpp to generate from our Q4_K_M file.
// Then gguf-py's dequantization of every Q4_K / Q5_K / Q6_K / Q5_0 / Q5_1 tensor the script dumped (an independent
// decoder, numpy) must equal our dequantize_row_*.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gguf/ggml_kquants.h"
#include "gguf/ggml_quants.h"
#include "test_util.h"

namespace qlora::gguf {
namespace {

namespace fs = std::filesystem;

// gguf-py computes in float32 numpy with its own operation order (e.g. (d * sc) * q vs d * (sc * q)): allow a few
// float32 roundings relative to the block's largest magnitude.
constexpr double kDecodeRelTol = 4.0 / (1 << 23);

std::vector<uint8_t> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Our decoder on raw blocks of ggml type `type` -> n floats.
std::vector<float> our_dequantize(const std::string& type, const std::vector<uint8_t>& raw, int64_t n) {
  std::vector<float> y(n);
  if (type == "Q4_K") {
    dequantize_row_q4_K(reinterpret_cast<const BlockQ4K*>(raw.data()), y.data(), n);
  } else if (type == "Q5_K") {
    dequantize_row_q5_K(reinterpret_cast<const BlockQ5K*>(raw.data()), y.data(), n);
  } else if (type == "Q6_K") {
    dequantize_row_q6_K(reinterpret_cast<const BlockQ6K*>(raw.data()), y.data(), n);
  } else if (type == "Q5_0") {
    dequantize_row_q5_0(reinterpret_cast<const BlockQ5_0*>(raw.data()), y.data(), n);
  } else if (type == "Q5_1") {
    dequantize_row_q5_1(reinterpret_cast<const BlockQ5_1*>(raw.data()), y.data(), n);
  } else {
    ADD_FAILURE() << "unexpected type " << type;
  }
  return y;
}

GgmlType type_of(const std::string& name) {
  for (GgmlType t : {GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K, GgmlType::kQ5_0, GgmlType::kQ5_1}) {
    if (ggml_type_name(t) == name) return t;
  }
  return GgmlType::kF32;
}

TEST(InteropKQuants, ByteIdenticalToLlamaQuantizeAndDecodedLikeGgufPy) {
  const fs::path root = fs::path(QLORA_TEST_WORK_DIR) / "interop_kquants";
  const fs::path dump = root / "dump";
  const fs::path script = fs::path(QLORA_SOURCE_DIR) / "tests" / "interop" / "check_kquants.py";
  const auto r = qlora::test::run_command(std::string(QLORA_PYTHON) + " " + script.string() + " --bin-dir " +
                                          QLORA_BIN_DIR + " --work-dir " + (root / "work").string() + " --tiny " +
                                          qlora::test::tiny_model_dir().string() + " --dump-dir " + dump.string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::cout << r.output.substr(r.output.rfind("check_kquants:")) << "\n";

  std::ifstream in(dump / "index.json");
  const auto index = nlohmann::json::parse(in);
  ASSERT_GT(index.size(), 0u);
  std::map<std::string, int> checked;
  for (const auto& e : index) {
    const std::string type = e["type"];
    const int64_t n = e["n"];
    const auto raw = read_bytes(dump / e["blocks"].get<std::string>());
    ASSERT_EQ(raw.size(), ggml_nbytes(type_of(type), n)) << e["name"];
    const auto vals = read_bytes(dump / e["values"].get<std::string>());
    ASSERT_EQ(vals.size(), static_cast<size_t>(n) * 4) << e["name"];
    const auto* theirs = reinterpret_cast<const float*>(vals.data());
    const auto ours = our_dequantize(type, raw, n);
    const int64_t block = ggml_block_size(type_of(type));
    for (int64_t b = 0; b < n / block; ++b) {
      double amax = 0;
      for (int64_t j = 0; j < block; ++j) amax = std::max(amax, std::fabs(static_cast<double>(theirs[b * block + j])));
      for (int64_t j = 0; j < block; ++j) {
        const int64_t i = b * block + j;
        ASSERT_NEAR(ours[i], theirs[i], kDecodeRelTol * amax) << e["name"] << " (" << type << ") weight " << i;
      }
    }
    ++checked[type];
  }
  for (const auto& [type, count] : checked) std::cout << type << ": " << count << " tensors decoded alike\n";
  EXPECT_EQ(checked.size(), 5u) << "expected Q4_K, Q5_K, Q6_K, Q5_0 and Q5_1 tensors";
}

}  // namespace
}  // namespace qlora::gguf
