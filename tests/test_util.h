// Helpers shared by the tests: paths, temp dirs, running the built apps.
#pragma once

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>

#include "common/error.h"
#include "common/sanitizer.h"

namespace qlora::test {

namespace fs = std::filesystem;

// True in an AddressSanitizer build (common/sanitizer.h). ASan's shadow memory and its quarantine of freed blocks are
// not in any of our memory bounds, so tests that bound RSS still run their work there but assert the bound only in
// the plain builds.
inline constexpr bool kUnderAddressSanitizer = kAddressSanitizer;

// The message of the qlora::Error thrown by f (fails the test when none is thrown).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no qlora::Error thrown";
  return "";
}

inline fs::path source_dir() {
  return QLORA_SOURCE_DIR;
}
inline fs::path bin_dir() {
  return QLORA_BIN_DIR;
}
// tests/fixtures: golden files and the scripts that made them.
inline fs::path fixtures_dir() {
  return QLORA_TEST_DATA_DIR;
}
// The tiny model made by the `make_tiny_model` ctest fixture (qlora-make-tiny --preset tiny --seed 1234).
inline fs::path tiny_model_dir() {
  return fs::path(QLORA_TEST_WORK_DIR) / "tiny";
}

// Base fixture of the tests that train or load the tiny model: fails clearly when it was not made.
class TinyModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(tiny_model_dir() / "config.json"))
        << "no tiny model at " << tiny_model_dir() << ": run through ctest (fixture make_tiny_model)";
  }
};

// A fresh, empty directory unique to the current test.
inline fs::path temp_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  fs::path p = fs::path(QLORA_TEST_WORK_DIR) / "tmp" / (std::string(info->test_suite_name()) + "." + info->name());
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

struct CommandResult {
  int exit_code;
  std::string output;  // stdout + stderr
};

// Runs a shell command, capturing stdout and stderr together.
inline CommandResult run_command(const std::string& cmd) {
  std::string out;
  FILE* pipe = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) out.append(buf, n);
  int status = ::pclose(pipe);
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return {code, out};
}

// Runs a built app from build/bin.
inline CommandResult run_app(const std::string& app, const std::string& args) {
  return run_command((bin_dir() / app).string() + " " + args);
}

// Collects what the logger prints while it lives (at `level` and above; the logger's level is put back after).
class LogCapture {
 public:
  explicit LogCapture(spdlog::level::level_enum level = spdlog::level::warn)
      : sink_(std::make_shared<spdlog::sinks::ostream_sink_mt>(out_)), saved_level_(spdlog::get_level()) {
    spdlog::default_logger()->sinks().push_back(sink_);
    if (level < saved_level_) spdlog::set_level(level);
  }
  ~LogCapture() {
    auto& sinks = spdlog::default_logger()->sinks();
    sinks.erase(std::remove(sinks.begin(), sinks.end(), sink_), sinks.end());
    spdlog::set_level(saved_level_);
  }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
  spdlog::level::level_enum saved_level_;
};

}  // namespace qlora::test

// EXPECT that `haystack` (a std::string) contains `needle`, printing the haystack when not.
#define EXPECT_CONTAINS(haystack, needle) EXPECT_NE((haystack).find(needle), std::string::npos) << (haystack)
