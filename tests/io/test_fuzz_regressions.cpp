// Inputs the fuzz targets fuzz/fuzz_hf_config.cpp and fuzz_bnb_quant_state.cpp found to crash an io reader (UBSan:
// undefined behaviour), kept as regression tests; the inputs are in tests/fixtures/fuzz_regressions/<target>/ and
// replay in ctest fuzz_smoke_<target> too. Reference: the formats (transformers writes these sizes and bitsandbytes
// these quant-state fields as JSON integers) and C++'s rules (signed overflow and out-of-range float-to-int
// conversion are undefined), so each is now a qlora::Error.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <string>

#include "common/error.h"
#include "common/json_read.h"
#include "io/bnb_format.h"
#include "io/hf_config.h"
#include "quant/quantized_tensor.h"
#include "test_util.h"

namespace qlora::io {
namespace {

std::string read_regression(const std::string& target, const std::string& name) {
  std::ifstream in(test::fixtures_dir() / "fuzz_regressions" / target / name, std::ios::binary);
  EXPECT_TRUE(in) << name;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// fuzz_hf_config, 2026-12-03: head_dim 1.18e18 passed each size check, then q_dim() = heads x head_dim overflowed.
TEST(FuzzRegressions, HeadsTimesHeadDimOverflowIsAnError) {
  const std::string e = test::error_of([] {
    parse_llama_config(parse_json(read_regression("hf_config", "q_dim_overflow.json"), "config.json"), "config.json");
  });
  // Since the sane maxima: refused earlier, by the size bound.
  EXPECT_NE(e.find("head_dim"), std::string::npos) << e;
  EXPECT_NE(e.find("is beyond any real model"), std::string::npos) << e;
}

// fuzz_hf_config, 2026-12-03 (session 7): a Gemma 2 head_dim of 2.4e17 passed the overflow check on heads x head_dim,
// then num_parameters() overflowed multiplying it by hidden_size. Sizes are now bounded (and the count saturates).
TEST(FuzzRegressions, ParameterCountOfHugeSizesIsRefusedAtParse) {
  const std::string e = test::error_of([] {
    parse_llama_config(parse_json(read_regression("hf_config", "num_parameters_overflow.json"), "config.json"),
                       "config.json");
  });
  EXPECT_NE(e.find("key 'head_dim': 236893488147418254 is beyond any real model"), std::string::npos) << e;
}

// fuzz_bnb_quant_state, 2026-12-03: "nested_blocksize": 2E56 (a JSON float) went through get<int64_t>(), an
// out-of-range float-to-int conversion. The input's first byte is the target's variant (bit 0: fp4 key); the rest
// is the quant state.
TEST(FuzzRegressions, BnbQuantStateIntegersMustBeJsonIntegers) {
  const std::string input = read_regression("bnb_quant_state", "float_shape.bin");
  ASSERT_FALSE(input.empty());
  const std::string qs = input.substr(1);
  const torch::Tensor w = torch::sin(torch::arange(2048, torch::kFloat32) * 0.37f).reshape({32, 64});
  NamedTensors tensors;
  for (auto& [name, t] : bnb_tensors("p", quant::quantize_4bit(w, quant::QuantType::kFP4, 64, true))) {
    if (name.find(".quant_state.") == std::string::npos) tensors.emplace_back(name, t);
  }
  tensors.emplace_back(
      "p.weight.quant_state.bitsandbytes__fp4",
      torch::from_blob(const_cast<char*>(qs.data()), {static_cast<int64_t>(qs.size())}, torch::kUInt8).clone());
  const fs::path dir = test::temp_dir();
  save_safetensors(dir / "model.safetensors", tensors);
  const Checkpoint ckpt = Checkpoint::open(dir);
  const std::string e = test::error_of([&] { bnb_read(ckpt, "p"); });
  EXPECT_NE(e.find("nested_blocksize must be an integer"), std::string::npos) << e;
}

}  // namespace
}  // namespace qlora::io
