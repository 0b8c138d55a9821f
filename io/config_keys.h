// Typed reads of one config.json object with errors naming the file and the key (io/ internal).
#pragma once

#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"
#include "common/json_read.h"

namespace qlora::io::detail {

using nlohmann::json;

// A short description of a value for an error message (common/json_read.h: never a whole document).
inline std::string describe(const json& v) {
  return json_excerpt(v, 60);
}

// Reads typed keys of one JSON object, with errors "<source>: key '<path>': ...".
class KeyReader {
 public:
  KeyReader(const json& j, std::string source, std::string prefix = "")
      : j_(j), source_(std::move(source)), prefix_(std::move(prefix)) {}

  bool has(const std::string& key) const { return j_.contains(key) && !j_[key].is_null(); }
  bool contains_null(const std::string& key) const { return j_.contains(key) && j_[key].is_null(); }

  [[noreturn]] void fail(const std::string& key, const std::string& what, const std::string& hint = "") const {
    throw_file_error(source_, "key '" + prefix_ + key + "': " + what, hint);
  }

  int64_t get_int(const std::string& key, int64_t def) const {
    if (!has(key)) return def;
    const json& v = j_[key];
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float()) {
      const double d = v.get<double>();
      if (std::fabs(d) < 9e18 && d == std::floor(d)) return static_cast<int64_t>(d);
    }
    fail(key, "must be an integer (got " + describe(v) + ")");
  }

  int64_t get_positive(const std::string& key, int64_t def) const {
    const int64_t v = get_int(key, def);
    if (v <= 0) fail(key, "must be positive (got " + std::to_string(v) + ")");
    return v;
  }

  double get_double(const std::string& key, double def) const {
    if (!has(key)) return def;
    const json& v = j_[key];
    if (!v.is_number()) fail(key, "must be a number (got " + describe(v) + ")");
    return v.get<double>();
  }

  bool get_bool(const std::string& key, bool def) const {
    if (!has(key)) return def;
    const json& v = j_[key];
    if (!v.is_boolean()) fail(key, "must be true or false (got " + describe(v) + ")");
    return v.get<bool>();
  }

  std::string get_string(const std::string& key, const std::string& def) const {
    if (!has(key)) return def;
    const json& v = j_[key];
    if (!v.is_string()) fail(key, "must be a string (got " + describe(v) + ")");
    return v.get<std::string>();
  }

 private:
  const json& j_;
  std::string source_;
  std::string prefix_;
};

}  // namespace qlora::io::detail
