#include "trainer/checkpoint_manifest.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/json_read.h"
#include "trainer/checkpoint.h"

namespace qlora::trainer {

namespace {

constexpr uint32_t kCrc32cPolyReflected = 0x82F63B78u;
constexpr size_t kDigestChunkBytes = size_t{1} << 20;
constexpr const char* kManifestFormat = "qlora.cpp checkpoint manifest v1";

constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kCrc32cPolyReflected : c >> 1;
    t[i] = c;
  }
  return t;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

#if defined(__x86_64__)
// Eight bytes per instruction; the same reflected CRC as the table (crc32 implements exactly CRC32C).
__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(const unsigned char* p, size_t n, uint32_t crc) {
  uint64_t c = ~crc;
  for (; n >= 8; p += 8, n -= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  for (; n > 0; ++p, --n) c32 = __builtin_ia32_crc32qi(c32, *p);
  return ~c32;
}

bool has_sse42() {
  static const bool yes = __builtin_cpu_supports("sse4.2");
  return yes;
}
#endif

std::string hex32(uint32_t v) {
  return fmt::format("{:08x}", v);
}

}  // namespace

namespace detail {

uint32_t crc32c_ref(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;
  for (size_t i = 0; i < n; ++i) c = kCrc32cTable[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
  return ~c;
}

}  // namespace detail

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
#if defined(__x86_64__)
  if (has_sse42()) return crc32c_sse42(static_cast<const unsigned char*>(data), n, crc);
#endif
  return detail::crc32c_ref(data, n, crc);
}

FileDigest digest_file(const fs::path& file) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_file_error(file.string(), std::string("cannot open: ") + std::strerror(errno));
  FileDigest d;
  std::vector<unsigned char> buf(kDigestChunkBytes);
  for (;;) {
    const ssize_t got = ::read(fd, buf.data(), buf.size());
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      const int err = errno;
      ::close(fd);
      throw_file_error(file.string(), std::string("read error: ") + std::strerror(err));
    }
    if (got == 0) break;
    d.crc32c = crc32c(buf.data(), static_cast<size_t>(got), d.crc32c);
    d.size += static_cast<uint64_t>(got);
  }
  ::close(fd);
  return d;
}

void write_manifest(const fs::path& dir) {
  nlohmann::json files = nlohmann::json::object();
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (!e.is_regular_file() || name == kManifestFile) continue;
    const FileDigest d = digest_file(e.path());
    files[name] = {{"size", d.size}, {"crc32c", hex32(d.crc32c)}};
  }
  const nlohmann::json m = {{"format", kManifestFormat}, {"checksum", "crc32c"}, {"files", files}};
  write_file_atomic(dir / kManifestFile, m.dump(2) + "\n");
}

ManifestCheck verify_manifest(const fs::path& dir, std::string* why) {
  const fs::path mf = dir / kManifestFile;
  if (!fs::exists(mf)) return ManifestCheck::kNoManifest;
  const auto corrupt = [&](const std::string& what) {
    *why = what;
    return ManifestCheck::kCorrupt;
  };
  std::string parse_why;
  const auto m = try_parse_json(read_file(mf), &parse_why);
  if (!m) return corrupt(mf.string() + ": " + parse_why);
  // (json::value() throws on a "format" that is not a string: compared as a JSON value instead.)
  if (!m->is_object() || !m->contains("format") || m->at("format") != kManifestFormat || !m->contains("files") ||
      !m->at("files").is_object()) {
    return corrupt(mf.string() + ": not a checkpoint manifest (" + json_excerpt(*m, 60) + ")");
  }
  const nlohmann::json& files = m->at("files");
  if (!files.contains(kTrainerStateFile)) return corrupt(mf.string() + ": does not list " + kTrainerStateFile);
  for (const auto& [name, entry] : files.items()) {
    const fs::path f = dir / name;
    // NAME_MAX is 255 bytes: a longer name cannot be a file we wrote (and fs::status would throw on it).
    if (name.empty() || name.size() > 255 || name.find('/') != std::string::npos ||
        name.find('\0') != std::string::npos || name == "." || name == "..") {
      return corrupt(mf.string() + ": invalid file name '" + json_excerpt(nlohmann::json(name), 60) + "'");
    }
    if (!entry.is_object() || !entry.contains("size") || !entry["size"].is_number_unsigned() ||
        !entry.contains("crc32c") || !entry["crc32c"].is_string()) {
      return corrupt(mf.string() + ": bad entry for " + name);
    }
    std::error_code ec;
    if (!fs::is_regular_file(f, ec)) return corrupt(f.string() + ": listed in the manifest but missing");
    const FileDigest d = digest_file(f);
    const uint64_t want_size = entry["size"].get<uint64_t>();
    if (d.size != want_size) {
      return corrupt(fmt::format("{}: {} bytes, the manifest says {}", f.string(), d.size, want_size));
    }
    if (hex32(d.crc32c) != entry["crc32c"].get<std::string>()) {
      return corrupt(fmt::format("{}: CRC32C {} differs from the manifest's {}", f.string(), hex32(d.crc32c),
                                 entry["crc32c"].get<std::string>()));
    }
  }
  return ManifestCheck::kVerified;
}

}  // namespace qlora::trainer
