#include "trainer/tensorboard.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "trainer/checkpoint_manifest.h"

namespace qlora::trainer {

namespace tensorboard_detail {

namespace {

constexpr uint32_t kCrcMaskDelta = 0xa282ead8u;
constexpr const char* kFileVersion = "brain.Event:2";
constexpr int kSessionStart = 1;  // tensorboard.SessionLog.SessionStatus.START

// Protobuf wire types.
constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kLengthDelimited = 2;
constexpr int kFixed32 = 5;

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

void put_key(std::string& out, int field, int wire_type) {
  put_varint(out, static_cast<uint64_t>(field) << 3 | static_cast<uint64_t>(wire_type));
}

template <class T>
void put_little_endian(std::string& out, T v) {  // x86 and ARM Linux are little-endian, as protobuf's fixed types
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}

void put_bytes(std::string& out, int field, const std::string& bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out += bytes;
}

// Event's wall_time (1, double) and step (2, int64; a negative step would be 10 varint bytes, never written).
std::string event_head(double wall_time, int64_t step) {
  std::string e;
  put_key(e, 1, kFixed64);
  put_little_endian(e, wall_time);
  if (step != 0) {
    put_key(e, 2, kVarint);
    put_varint(e, static_cast<uint64_t>(step));
  }
  return e;
}

}  // namespace

uint32_t masked_crc32c(const std::string& bytes) {
  const uint32_t c = crc32c(bytes.data(), bytes.size());
  return ((c >> 15) | (c << 17)) + kCrcMaskDelta;
}

std::string tfrecord(const std::string& data) {
  std::string len;
  put_little_endian(len, static_cast<uint64_t>(data.size()));
  std::string r = len;
  put_little_endian(r, masked_crc32c(len));
  r += data;
  put_little_endian(r, masked_crc32c(data));
  return r;
}

std::string file_version_event(double wall_time) {
  std::string e = event_head(wall_time, 0);
  put_bytes(e, 3, kFileVersion);
  return e;
}

std::string session_start_event(double wall_time, int64_t step) {
  std::string log;
  put_key(log, 1, kVarint);
  put_varint(log, kSessionStart);
  std::string e = event_head(wall_time, step);
  put_bytes(e, 7, log);
  return e;
}

std::string scalars_event(double wall_time, int64_t step, const ScalarValues& values) {
  std::string summary;
  for (const auto& [tag, v] : values) {
    std::string value;
    put_bytes(value, 1, tag);
    put_key(value, 2, kFixed32);
    put_little_endian(value, v);
    put_bytes(summary, 1, value);
  }
  std::string e = event_head(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

}  // namespace tensorboard_detail

namespace {

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// events.out.tfevents.<10-digit unix seconds>.<host>, with .1, .2, ... when a file of that name exists (a
// resumed run started in the same second), so the names sort in the order the files were written.
fs::path new_events_file(const fs::path& dir) {
  char host[256] = "localhost";
  if (gethostname(host, sizeof(host) - 1) != 0) std::strcpy(host, "localhost");
  char name[400];
  std::snprintf(name, sizeof(name), "events.out.tfevents.%010lld.%s", static_cast<long long>(unix_seconds()), host);
  fs::path p = dir / name;
  for (int n = 1; fs::exists(p); ++n) p = dir / (std::string(name) + "." + std::to_string(n));
  return p;
}

}  // namespace

std::optional<std::pair<int64_t, ScalarValues>> tensorboard_scalars(const nlohmann::json& record) {
  if (!record.is_object() || !record.contains("step") || !record["step"].is_number_integer()) return std::nullopt;
  ScalarValues values;
  for (const TensorBoardTag& t : kTensorBoardTags) {
    const auto it = record.find(t.key);
    if (it == record.end() || !it->is_number()) continue;
    const double v = it->get<double>() * t.scale;
    if (std::isfinite(v)) values.emplace_back(t.tag, static_cast<float>(v));
  }
  return std::make_pair(record["step"].get<int64_t>(), std::move(values));
}

TensorBoardWriter::TensorBoardWriter(const fs::path& dir, int64_t start_step) : dir_(dir) {
  if (dir_.empty()) return;
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) {
    throw_file_error(dir_.string(), "cannot create the TensorBoard folder (" + ec.message() + ")",
                     "set log.tensorboard to a writable folder, or to off");
  }
  file_ = new_events_file(dir_);
  out_.open(file_, std::ios::binary | std::ios::trunc);
  if (!out_) throw_file_error(file_.string(), "cannot open the TensorBoard events file for writing");
  const double now = unix_seconds();
  write_event(tensorboard_detail::file_version_event(now));
  write_event(tensorboard_detail::session_start_event(now, start_step + 1));
}

void TensorBoardWriter::write_record(const nlohmann::json& metrics_record) {
  if (!enabled()) return;
  const auto scalars = tensorboard_scalars(metrics_record);
  if (scalars && !scalars->second.empty()) write_scalars(scalars->first, scalars->second);
}

void TensorBoardWriter::write_scalars(int64_t step, const ScalarValues& values) {
  if (!enabled()) return;
  write_event(tensorboard_detail::scalars_event(unix_seconds(), step, values));
}

void TensorBoardWriter::write_event(const std::string& event) {
  const std::string r = tensorboard_detail::tfrecord(event);
  out_.write(r.data(), static_cast<std::streamsize>(r.size()));
  out_.flush();
  if (!out_) throw_file_error(file_.string(), "cannot write the TensorBoard events file (disk full?)");
}

}  // namespace qlora::trainer
