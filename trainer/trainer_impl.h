// Private to the trainer: the parts a Trainer owns, shared by its setup (trainer.cpp) and its loop
// (train_loop.cpp). Nothing outside trainer/ includes this; trainer.h keeps them behind a pointer so its users
// (apps, tests, benchmarks) do not compile the data loader, tokenizer, optimizer and data-parallel headers.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "data/data_loader.h"
#include "lora/lora_model.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "trainer/checkpoint.h"
#include "trainer/data_parallel.h"
#include "trainer/metrics.h"
#include "trainer/optimizer.h"
#include "trainer/schedule.h"
#include "trainer/trainer.h"

namespace qlora::trainer {

// The final adapter folder's (and checkpoint.dir's) summary of the run.
inline constexpr const char* kSummaryFile = "training_summary.json";

struct Trainer::Impl {
  torch::Device device = torch::kCPU;
  std::optional<torch::Device> cuda_device;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  std::optional<data::DataLoader> train_data;
  std::optional<data::DataLoader> eval_data;
  model::LlamaModel model{nullptr};
  lora::LoraAdapters adapters;
  std::unique_ptr<AdapterAdamW> optimizer;
  std::unique_ptr<CheckpointManager> checkpoints;
  MetricsWriter metrics;
  LrSchedule schedule;
  std::string config_hash;
  nlohmann::json trajectory;
  std::string fingerprint;
  // What the run has read of its data files (trainer/data_fingerprint.h): the resumed checkpoint's record, to which
  // each save adds what the loaders of this process have read (rank 0).
  std::vector<DataFileRead> data_files;
  std::string effective_config;
  int threads = 0;
  // Where this process sits in a data-parallel job (trainer/dist/distributed.h); rank 0 of 1 alone.
  dist::DistEnv env;
  // What the ranks do together (gradient and loss sums, the stop agreement); does nothing alone. Declared after
  // the adapters: its gradient hooks go first.
  DataParallel dp;
  int64_t planned_peak_bytes = 0;  // the memory plan's total (trainer/run_plan.h)
};

// eval.keep_best (trainer/best_adapter.cpp): removes leftovers of an interrupted best/ write in checkpoint.dir,
// and (`fresh`: a run that did not resume) an earlier run's best/.
void clean_best_dir(const fs::path& checkpoint_dir, bool fresh);

}  // namespace qlora::trainer
