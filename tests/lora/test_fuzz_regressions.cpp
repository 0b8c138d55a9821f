// Inputs the fuzz target fuzz/fuzz_adapter_config.cpp found to crash the PEFT adapter reader (UBSan), kept as
// regression tests; the inputs are in tests/fixtures/fuzz_regressions/adapter_config/ (replayed by ctest
// fuzz_smoke_adapter_config too). Reference: PEFT writes rank_pattern values as JSON integers (ranks), and an
// out-of-range float-to-int conversion is undefined in C++.
#include <gtest/gtest.h>

#include "common/error.h"
#include "lora/peft_io.h"
#include "test_util.h"

namespace qlora::lora {
namespace {

// fuzz_adapter_config, 2026-12-03: "q_proj": 49223372036854775807 (past uint64, so nlohmann holds it as a float)
// went through get<int64_t>().
TEST(FuzzRegressions, RankPatternValuesMustBeIntegers) {
  const fs::path dir = test::temp_dir();
  fs::copy_file(test::fixtures_dir() / "lora_peft_fixture" / kAdapterWeightsFile, dir / kAdapterWeightsFile);
  fs::copy_file(test::fixtures_dir() / "fuzz_regressions" / "adapter_config" / "float_rank_pattern.json",
                dir / kAdapterConfigFile);
  const std::string e = test::error_of([&] { load_adapter(dir); });
  EXPECT_NE(e.find("rank_pattern['q_proj'] must be an integer"), std::string::npos) << e;
}

}  // namespace
}  // namespace qlora::lora
