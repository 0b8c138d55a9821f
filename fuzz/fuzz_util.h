// What the fuzz targets share: the contract of a reader under fuzzing, and files for readers that take a path.
//
// A reader given hostile bytes may refuse them only with qlora::Error (common/error.h): run_reader() catches that
// and nothing else, so any other exception (std::bad_alloc: a size was not bounded; nlohmann::json's or c10's
// errors: a check a user would see as a crash), a crash, a hang or a sanitizer report is a finding.
//
// Each fuzz_<reader>.cpp defines LLVMFuzzerTestOneInput; libFuzzer (QLORA_FUZZ=ON) or smoke_main.cpp drives it.
#pragma once

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "common/error.h"

namespace qlora::fuzz {

namespace fs = std::filesystem;

// The readers log as they go (a skipped record, a chosen template): silent here, at millions of inputs.
inline const bool kQuietLogs = (spdlog::set_level(spdlog::level::off), true);

inline fs::path source_dir() {
  return QLORA_SOURCE_DIR;
}

// A folder of this process for the files of one input (/dev/shm when there is one: no disk writes per input).
inline const fs::path& work_dir() {
  static const fs::path dir = [] {
    const fs::path root = fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    fs::path d = root / ("qlora-fuzz-" + std::to_string(getpid()));
    fs::create_directories(d);
    return d;
  }();
  static const struct Cleanup {
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup;
  return dir;
}

inline void write_file(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::string read_file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline std::string_view as_view(const uint8_t* data, size_t size) {
  return std::string_view(reinterpret_cast<const char*>(data), size);
}

// Runs one read; a qlora::Error is the reader refusing the input (fine), everything else propagates (a finding).
template <typename F>
void run_reader(F&& f) {
  try {
    f();
  } catch (const Error&) {
  }
}

}  // namespace qlora::fuzz
