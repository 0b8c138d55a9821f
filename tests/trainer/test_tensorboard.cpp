// TensorBoard events (trainer/tensorboard.h) against bytes written out by hand from the protobuf wire format and
// the TFRecord framing; tests/interop_tb reads real runs' files back with TensorBoard's own reader.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "test_util.h"
#include "trainer/checkpoint_manifest.h"
#include "trainer/tensorboard.h"

namespace qlora::trainer {
namespace {

namespace tb = tensorboard_detail;

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int v : b) s += static_cast<char>(v);
  return s;
}

// TFRecord's mask, written out again from the format's description.
uint32_t mask(uint32_t crc) {
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string le32(uint32_t v) {
  return bytes({int(v & 0xff), int(v >> 8 & 0xff), int(v >> 16 & 0xff), int(v >> 24 & 0xff)});
}

TEST(TensorBoard, Crc32cOfTheCheckVector) {
  // The CRC-32C check value (RFC 3720 B.4; "123456789" -> 0xE3069283), and the empty string's masked CRC.
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(tb::masked_crc32c(""), 0xa282ead8u);
  EXPECT_EQ(tb::masked_crc32c("123456789"), mask(0xE3069283u));
}

TEST(TensorBoard, ScalarEventBytesByHand) {
  // Event { wall_time: 1.5 (field 1, fixed64), step: 300 (field 2, varint 0xAC 0x02),
  //         summary (field 5) { value (field 1) { tag (field 1): "a", simple_value (field 2, fixed32): 0.5 } } }
  const std::string want = bytes({0x09, 0,    0,    0,    0,    0,    0,    0xF8, 0x3F,  // 1.5 = 0x3FF8000000000000
                                  0x10, 0xAC, 0x02,                                      // step 300
                                  0x2A, 0x0A,                                            // summary, 10 bytes
                                  0x0A, 0x08,                                            // value, 8 bytes
                                  0x0A, 0x01, 'a',  0x15, 0x00, 0x00, 0x00, 0x3F});      // tag "a", 0.5f = 0x3F000000
  EXPECT_EQ(tb::scalars_event(1.5, 300, {{"a", 0.5f}}), want);
}

TEST(TensorBoard, FileVersionAndSessionStartBytesByHand) {
  // Event { wall_time: 2.0, file_version (field 3): "brain.Event:2" }; step 0 is not written (proto3 default).
  const std::string version = bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x1A, 13}) + "brain.Event:2";
  EXPECT_EQ(tb::file_version_event(2.0), version);
  // Event { wall_time: 2.0, step: 5, session_log (field 7) { status (field 1): START = 1 } }
  const std::string start = bytes({0x09, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x10, 5, 0x3A, 2, 0x08, 1});
  EXPECT_EQ(tb::session_start_event(2.0, 5), start);
}

TEST(TensorBoard, RecordFraming) {
  // uint64 length, masked CRC32C of those 8 bytes, the data, masked CRC32C of the data (all little-endian).
  const std::string data = "123456789";
  const std::string len = bytes({9, 0, 0, 0, 0, 0, 0, 0});
  const std::string want = len + le32(mask(crc32c(len.data(), 8))) + data + le32(mask(0xE3069283u));
  EXPECT_EQ(tb::tfrecord(data), want);
}

TEST(TensorBoard, ScalarsOfAMetricsRecord) {
  const nlohmann::json rec = {{"step", 20},    {"loss", 2.5},          {"lr", 1e-3},     {"grad_norm", nullptr},
                              {"tokens", 640}, {"rss_bytes", 3 << 20}, {"elapsed", 1.0}, {"skipped", true}};
  const auto s = tensorboard_scalars(rec);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->first, 20);
  const ScalarValues want = {{"train/loss", 2.5f},
                             {"train/lr", 1e-3f},
                             {"train/tokens", 640.0f},
                             {"memory/rss_mib", 3.0f}};  // null grad norm (non-finite) left out; elapsed has no tag
  EXPECT_EQ(s->second, want);
  EXPECT_FALSE(tensorboard_scalars({{"loss", 1.0}}));  // no step
}

// The records of an events file, unframed; checks each record's two CRCs.
std::vector<std::string> read_records(const fs::path& file) {
  const std::string f = read_file(file);
  std::vector<std::string> out;
  for (size_t p = 0; p < f.size();) {
    EXPECT_LE(p + 12, f.size());
    uint64_t n = 0;
    std::memcpy(&n, f.data() + p, 8);
    EXPECT_EQ(f.substr(p + 8, 4), le32(mask(crc32c(f.data() + p, 8))));
    const std::string data = f.substr(p + 12, n);
    EXPECT_EQ(f.substr(p + 12 + n, 4), le32(mask(crc32c(data.data(), data.size()))));
    out.push_back(data);
    p += 16 + n;
  }
  return out;
}

TEST(TensorBoard, WriterFilesAndResume) {
  const fs::path dir = test::temp_dir() / "tb";
  fs::path first;
  {
    TensorBoardWriter w(dir, /*start_step=*/0);
    first = w.file();
    w.write_record({{"step", 1}, {"loss", 3.0}});
    w.write_record({{"step", 2}, {"elapsed", 1.0}});  // no tagged value: nothing written
    const auto recs = read_records(first);            // flushed per record: readable while open
    ASSERT_EQ(recs.size(), 3u);
    EXPECT_EQ(recs[0].substr(9), bytes({0x1A, 13}) + "brain.Event:2");
    EXPECT_EQ(recs[1].substr(9), bytes({0x10, 1, 0x3A, 2, 0x08, 1}));  // START at step 1
    EXPECT_EQ(recs[2].substr(9), bytes({0x10, 1, 0x2A, 0x13, 0x0A, 0x11, 0x0A, 0x0A}) + "train/loss" +
                                     bytes({0x15, 0, 0, 0x40, 0x40}));  // 3.0f = 0x40400000
  }
  EXPECT_EQ(first.filename().string().rfind("events.out.tfevents.", 0), 0u) << first;
  TensorBoardWriter resumed(dir, /*start_step=*/40);
  EXPECT_NE(resumed.file(), first);
  EXPECT_GT(resumed.file().filename().string(), first.filename().string());  // sorts after: read after
  const auto recs = read_records(resumed.file());
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[1].substr(9), bytes({0x10, 41, 0x3A, 2, 0x08, 1}));  // START at the first redone step
}

}  // namespace
}  // namespace qlora::trainer
