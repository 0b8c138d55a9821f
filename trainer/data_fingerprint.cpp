#include "trainer/data_fingerprint.h"

#include <cstdio>
#include <unordered_map>

#include "common/error.h"
#include "common/json_read.h"

namespace qlora::trainer {

namespace {

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

bool parse_hex64(const std::string& s, uint64_t* out) {
  if (s.size() != 16) return false;
  uint64_t v = 0;
  for (char c : s) {
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  *out = v;
  return true;
}

std::string plural_bytes(int64_t n) {
  return std::to_string(n) + (n == 1 ? " byte" : " bytes");
}

}  // namespace

nlohmann::json data_files_to_json(const std::vector<DataFileRead>& files) {
  nlohmann::json out = nlohmann::json::array();
  for (const DataFileRead& f : files) {
    out.push_back({{"path", f.path}, {"size", f.size}, {"read_bytes", f.read_bytes}, {"fnv1a64", hex64(f.fnv1a64)}});
  }
  return out;
}

std::vector<DataFileRead> data_files_from_json(const nlohmann::json& j, const std::string& source) {
  std::vector<DataFileRead> out;
  for (const nlohmann::json& e : j.get_ref<const nlohmann::json::array_t&>()) {
    DataFileRead f;
    f.path = e.at("path").get<std::string>();
    f.size = json_int64(e.at("size"));
    f.read_bytes = json_int64(e.at("read_bytes"));
    if (f.size < 0 || f.read_bytes < 0 || !parse_hex64(e.at("fnv1a64").get<std::string>(), &f.fnv1a64)) {
      throw_file_error(source, "data_files: bad entry for " + f.path + " (negative size, or fnv1a64 not 16 hex digits)",
                       "the checkpoint is damaged; resume from an older one (checkpoint.resume: <path>)");
    }
    out.push_back(std::move(f));
  }
  return out;
}

void merge_data_reads(std::vector<DataFileRead>& into, const std::vector<fs::path>& files,
                      const std::vector<data::ReadDigest>& read) {
  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < into.size(); ++i) index.emplace(into[i].path, i);
  for (size_t i = 0; i < files.size() && i < read.size(); ++i) {
    if (read[i].bytes <= 0) continue;
    const std::string path = files[i].string();
    auto [it, added] = index.emplace(path, into.size());
    if (added) into.push_back(DataFileRead{path, 0, -1, 0});
    DataFileRead& f = into[it->second];
    if (read[i].bytes >= f.read_bytes) {
      f.read_bytes = read[i].bytes;
      f.fnv1a64 = read[i].fnv1a64;
    }
  }
  for (DataFileRead& f : into) {
    std::error_code ec;
    const auto size = fs::file_size(f.path, ec);
    if (!ec) f.size = static_cast<int64_t>(size);
  }
}

std::vector<std::string> describe_data_file_changes(const std::vector<DataFileRead>& saved) {
  std::vector<std::string> out;
  for (const DataFileRead& f : saved) {
    if (f.read_bytes == 0) continue;
    std::error_code ec;
    const bool exists = fs::is_regular_file(f.path, ec);
    const int64_t size = exists ? static_cast<int64_t>(fs::file_size(f.path, ec)) : 0;
    if (!exists || ec) {
      out.push_back("data file " + f.path + " is missing (the run had read " + plural_bytes(f.read_bytes) + " of it)");
    } else if (size < f.read_bytes) {
      out.push_back("data file " + f.path + " is now " + plural_bytes(size) + ", shorter than the " +
                    plural_bytes(f.read_bytes) + " the run had read (" + std::to_string(f.size) + " then)");
    } else if (const auto now = data::hash_file_prefix(f.path, f.read_bytes); !now || *now != f.fnv1a64) {
      out.push_back("data file " + f.path + " changed: its first " + plural_bytes(f.read_bytes) +
                    ", which the run had read, differ (FNV-1a " + hex64(f.fnv1a64) + " then, " +
                    (now ? hex64(*now) : std::string("unreadable")) + " now)");
    }
  }
  return out;
}

std::vector<DataFileRead> redigest_data_files(const std::vector<DataFileRead>& saved) {
  std::vector<DataFileRead> out;
  for (const DataFileRead& f : saved) {
    const auto now = data::hash_file_prefix(f.path, f.read_bytes);
    if (!now) continue;
    DataFileRead g = f;
    g.fnv1a64 = *now;
    std::error_code ec;
    const auto size = fs::file_size(f.path, ec);
    if (!ec) g.size = static_cast<int64_t>(size);
    out.push_back(std::move(g));
  }
  return out;
}

}  // namespace qlora::trainer
