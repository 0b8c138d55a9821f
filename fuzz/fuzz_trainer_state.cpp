// Fuzz target: a checkpoint's trainer_state.json (counters, run hash fields, model fingerprint and the data
// cursor), as a resume reads it: trainer_state_from_json, the compatibility checks (with force: they describe what
// changed and go on; the data files read are hashed again), then the cursor restored into a DataLoader over a fixed
// data file and two batches read from it. In "data_state" "files" and "data_files" paths, the string "@TRAIN@" stands
// for that file's path (the cursor names its files by path).
#include <string>

#include "common/json_read.h"
#include "fuzz/records_util.h"
#include "trainer/checkpoint.h"

namespace {

constexpr const char* kTrainPlaceholder = "@TRAIN@";

// The data section the seed cursor was saved with (tests/trainer TrainerRun.ResumeIsBitwiseExact).
qlora::data::DataConfig loader_config(const std::string& train_file) {
  return qlora::data::parse_data_config(
      YAML::Load("train: " + train_file + "\nformat: alpaca\nmax_seq_len: 64\npacking: true\nshuffle_buffer: 16\n"),
      "fuzz.yaml");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qlora;
  static const fuzz::fs::path kTrain = [] {
    const fuzz::fs::path p = fuzz::work_dir() / "train.jsonl";
    fuzz::write_file(p, fuzz::read_file_bytes(fuzz::source_dir() / "fuzz" / "data" / "train.jsonl"));
    return p;
  }();
  static const nlohmann::json kTrajectory = {{"train.lr", 0.005}, {"lora.r", 8}, {"data.max_seq_len", 64}};
  fuzz::run_reader([&] {
    const nlohmann::json j = parse_json(fuzz::as_view(data, size), "trainer_state.json");
    trainer::TrainerState s = trainer::trainer_state_from_json(j, "trainer_state.json");
    if (s.data_files) {
      for (auto& f : *s.data_files) {
        if (f.path == kTrainPlaceholder) f.path = kTrain.string();
      }
    }
    (void)trainer::in_lineage(s.lineage, s.lineage, s.step);  // what prune() asks of every checkpoint
    trainer::check_resume_compatible(s, "0123456789abcdef", kTrajectory, "fedcba9876543210", fuzz::work_dir(),
                                     /*force=*/true);
    trainer::check_resume_world_size(s.world_size, 1, fuzz::work_dir(), /*force=*/true);
    if (s.data_state.is_object() && s.data_state.contains("files") && s.data_state["files"].is_array()) {
      for (auto& f : s.data_state["files"]) {
        if (f == kTrainPlaceholder) f = kTrain.string();
      }
    }
    data::DataLoader loader(loader_config(kTrain.string()), fuzz::records_tokenizer(), data::Split::kTrain,
                            /*micro_batch_size=*/2, /*seed=*/7, /*max_epochs=*/0);
    loader.restore(s.data_state);
    for (int i = 0; i < 2; ++i) {
      if (!loader.next()) break;
    }
  });
  return 0;
}
