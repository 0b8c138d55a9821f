// qlora::Error: the one exception type for user-facing problems (bad config key, bad input file, bad data line).
// Its message names the file / key path / line and says how to fix it. Apps turn it into exit code 2.
// Internal invariants use TORCH_CHECK instead (exit code 1).
#pragma once

#include <stdexcept>
#include <string>

namespace qlora {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "path: what[\nHINT: hint]" — the common shape of a file-related error.
[[noreturn]] void throw_file_error(const std::string& path, const std::string& what, const std::string& hint = "");

// Thrown when a run stops on SIGINT/SIGTERM after saving its state (exit code 130).
class Interrupted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace qlora
