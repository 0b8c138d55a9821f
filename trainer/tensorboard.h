// TensorBoard event files for the training metrics (log.tensorboard), written by hand: no protobuf dependency.
//
// An events file is a sequence of TFRecords (uint64 length, masked CRC32C of the length, data, masked CRC32C of
// the data; mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8), each holding one serialized tensorboard.Event
// (tensorboard/compat/proto/event.proto, summary.proto):
//
//   Event      { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
//                SessionLog session_log = 7; }
//   Summary    { repeated Value value = 1; }      Value { string tag = 1; float simple_value = 2; }
//   SessionLog { SessionStatus status = 1; }      START = 1
//
// The first record is Event{file_version: "brain.Event:2"}; then one SessionLog START at the step this process
// starts from; then one Event per metrics.jsonl record with its scalars (tags in kTensorBoardTags). Every record is
// flushed, so a killed run still shows its curve.
//
// Resume: each process writes a new file (events.out.tfevents.<10-digit unix seconds>.<host>[.N], so names sort in
// the order they were written). Its START event is at the first step it will log: resume step + 1 (1 for a fresh
// run). TensorBoard's readers (EventAccumulator and the server's plugin accumulator) take a START after the first as
// a restart and drop every earlier event at or after its step: the steps an interrupted segment logged after its
// last checkpoint, which the resumed run redoes, show once, as the resumed run logged them (as metrics.jsonl,
// which drops those records on resume). A fresh run in a folder with old event files hides their steps the same way.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace qlora::trainer {

namespace fs = std::filesystem;

// A metrics.jsonl key, the TensorBoard tag it becomes, and the factor applied to its value.
struct TensorBoardTag {
  const char* key;
  const char* tag;
  double scale;
};
inline constexpr TensorBoardTag kTensorBoardTags[] = {
    {"loss", "train/loss", 1.0},
    {"lr", "train/lr", 1.0},
    {"grad_norm", "train/grad_norm", 1.0},
    {"tokens_per_s", "train/tokens_per_s", 1.0},
    {"tokens", "train/tokens", 1.0},
    {"eval_loss", "eval/loss", 1.0},
    {"eval_ppl", "eval/perplexity", 1.0},
    {"rss_bytes", "memory/rss_mib", 1.0 / (1 << 20)},
    {"device_peak_bytes", "memory/device_peak_mib", 1.0 / (1 << 20)},
};

using ScalarValues = std::vector<std::pair<std::string, float>>;

// The protobuf and TFRecord encodings (exposed for the tests).
namespace tensorboard_detail {
uint32_t masked_crc32c(const std::string& bytes);
std::string tfrecord(const std::string& data);  // the framed record
std::string file_version_event(double wall_time);
std::string session_start_event(double wall_time, int64_t step);
std::string scalars_event(double wall_time, int64_t step, const ScalarValues& values);
}  // namespace tensorboard_detail

// The scalars of one metrics.jsonl record (its numeric keys that have a tag; nulls, i.e. non-finite values, are
// left out) and its step; nullopt for a record without a step.
std::optional<std::pair<int64_t, ScalarValues>> tensorboard_scalars(const nlohmann::json& record);

class TensorBoardWriter {
 public:
  TensorBoardWriter() = default;  // disabled
  // A new events file in `dir` (created); start_step: the step the run starts from (0, or the resumed step).
  TensorBoardWriter(const fs::path& dir, int64_t start_step);
  void write_record(const nlohmann::json& metrics_record);  // no-op when disabled or the record has no scalars
  void write_scalars(int64_t step, const ScalarValues& values);
  bool enabled() const { return out_.is_open(); }
  const fs::path& dir() const { return dir_; }
  const fs::path& file() const { return file_; }

 private:
  void write_event(const std::string& event);
  fs::path dir_;
  fs::path file_;
  std::ofstream out_;
};

}  // namespace qlora::trainer
