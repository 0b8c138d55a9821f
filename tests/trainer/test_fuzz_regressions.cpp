// Inputs the fuzz target fuzz/fuzz_train_config.cpp found to crash the training-config reader, kept as regression
// tests (the inputs are in tests/fixtures/fuzz_regressions/train_config/, replayed by ctest fuzz_smoke_train_config
// too). Reference: the YAML spec (a YAML stream is Unicode text) and nlohmann::json, which refuses to write
// strings that are not UTF-8.
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"
#include "test_util.h"
#include "trainer/config.h"

namespace qlora::trainer {
namespace {

std::string read_regression(const std::string& name) {
  std::ifstream in(test::fixtures_dir() / "fuzz_regressions" / "train_config" / name, std::ios::binary);
  EXPECT_TRUE(in) << name;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// fuzz_smoke_train_config, 2026-12-03: a data path with bytes that are not UTF-8 parsed, then config_hash() threw
// nlohmann's type_error 316 (not a qlora::Error) when it wrote the run's fields as JSON; trainer_state.json would
// have failed the same way. Now the reader refuses the text up front, naming the line.
TEST(FuzzRegressions, ConfigThatIsNotUtf8IsRefusedNamingTheLine) {
  const std::string text = read_regression("non_utf8_path.yaml");
  EXPECT_THROW((void)nlohmann::json(text).dump(), nlohmann::json::type_error);  // what used to escape
  EXPECT_EQ(test::error_of([&] { parse_config(text, "fuzz.yaml"); }).rfind("fuzz.yaml:19: not UTF-8 text", 0), 0u);
  EXPECT_EQ(test::error_of([&] {
              parse_config(read_regression("non_utf8_min.yaml"), "m.yaml");
            }).rfind("m.yaml:2: not UTF-8 text", 0),
            0u);
  EXPECT_EQ(test::error_of([&] {
              parse_config("", "e.yaml", {"data.train=/tmp/\xD3.jsonl"});
            }).rfind("--set:1: not UTF-8 text", 0),
            0u);
}

// The same config with the path in valid UTF-8 (non-ASCII) parses and hashes.
TEST(FuzzRegressions, NonAsciiUtf8ConfigStillParsesAndHashes) {
  std::string text = read_regression("non_utf8_path.yaml");
  const size_t at = text.find("\xF4\xD3");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 2, "\xC3\xA9");  // "é"
  const TrainConfig cfg = parse_config(text, "fuzz.yaml");
  EXPECT_EQ(config_hash(cfg).size(), 16u);
  EXPECT_NE(cfg.data_config.train.at(0).find("t\xC3\xA9mp"), std::string::npos);
}

}  // namespace
}  // namespace qlora::trainer
