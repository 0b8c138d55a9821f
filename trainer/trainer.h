// The QLoRA training recipe: setup -> train -> save, driven by a TrainConfig (trainer/config.h).
//
//   Trainer t(load_config("configs/tiny.yaml"), {});
//   t.setup();                        // threads, resume point, data, 4-bit base, LoRA, AdamW
//   TrainSummary s = t.train();       // the loop; checkpoints; final adapter in output_dir
//
// One optimizer update ("step") consumes grad_accum micro-batches of micro_batch_size rows. The loss of an
// update is the mean token loss over ALL label tokens of its micro-batches: each micro-batch backpropagates
// sum_loss_i / N_total, where N_total counts the labels of the whole accumulated batch (read before the first
// forward). So every trained token weighs the same however the tokens fall into micro-batches (unlike averaging
// per-micro-batch means, which overweights short micro-batches).
//
// Non-finite loss or gradient norm: the update is skipped (gradients zeroed, step still counted) and counted;
// after train.max_nonfinite_steps in a row the run saves a checkpoint and stops with a qlora::Error.
// SIGINT/SIGTERM: the current update finishes, a checkpoint is saved, and qlora::Interrupted is thrown (exit 130).
//
// Output policy: output_dir must not exist unless --overwrite, or it holds the final adapter of this same run
// (same config hash: re-finishing a resumed run). With checkpoint.resume: none, existing checkpoints in
// checkpoint.dir are refused unless --overwrite (which deletes them). resume: auto continues from the newest
// complete checkpoint of a compatible run.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "model/evaluate.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/metrics.h"
#include "trainer/schedule.h"

namespace qlora::trainer {

struct TrainerOptions {
  bool overwrite = false;     // --overwrite
  bool force_resume = false;  // --force-resume
  // Stop (checkpoint + qlora::Interrupted) once this many updates are done; 0 = off. For time-sliced jobs
  // and tests: it does not change the config hash, so the rest of the run resumes exactly.
  int64_t stop_after_steps = 0;
  bool write_outputs = true;  // false: no final adapter / summary (benchmarks)
  // Called after every update with its metrics (tests, benchmarks).
  std::function<void(const StepMetrics&)> on_step;
  // Called after each file of a checkpoint is written into its temporary folder. Tests make it throw or
  // SIGKILL the process there (a failed or killed write); production runs leave it empty.
  CheckpointFileHook after_checkpoint_file;
};

struct TrainSummary {
  int64_t start_step = 0;  // > 0 when resumed
  int64_t steps = 0;       // updates done in total
  int64_t total_steps = 0;
  int64_t tokens = 0;                // tokens fed forward over the whole run
  int64_t tokens_this_run = 0;       // ... in this process
  double wall_s = 0.0;               // training time of this process
  double tokens_per_s = 0.0;         // this process
  double steady_tokens_per_s = 0.0;  // this process, excluding its first update (warm-up)
  size_t peak_rss_bytes = 0;
  int64_t planned_peak_bytes = 0;  // the memory plan's total for this run (printed at setup)
  double first_loss = 0.0;         // first update of this process
  double final_loss = 0.0;         // last update
  std::optional<double> final_eval_loss;
  std::optional<double> best_eval_loss;  // eval.keep_best / early stopping: the lowest eval loss and its step
  int64_t best_step = -1;
  bool stopped_early = false;  // eval.early_stopping_patience ended the run before total_steps
  fs::path best_adapter_dir;   // <output_dir>/best when eval.keep_best wrote it
  int64_t nonfinite_steps = 0;
  double allreduce_s_per_step = 0.0;  // data parallel: time blocked in the all-reduces per update (0 alone)
  fs::path adapter_dir;               // empty when outputs are off
  fs::path checkpoint_dir;
  fs::path metrics_file;
};

class Trainer {
 public:
  Trainer(TrainConfig config, TrainerOptions options);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  void setup();
  TrainSummary train();
  // Mean token loss over the eval split (eval.max_batches batches; NaN without eval data), all ranks together.
  model::EvalResult evaluate();
  fs::path save_checkpoint();

  const TrainConfig& config() const { return cfg_; }
  const TrainerState& state() const { return state_; }
  int64_t total_steps() const { return state_.total_steps; }
  int64_t num_trainable_parameters() const;
  int64_t num_model_parameters() const;

 private:
  struct Impl;
  // setup(), in the order it calls them (trainer.cpp).
  void setup_runtime();
  void setup_start_point();
  void resolve_resume_point();
  void check_output_dir();
  void setup_data();
  int64_t count_total_steps();
  void setup_model();
  void setup_optimizer();
  void restore_checkpoint(const fs::path& ck);
  void setup_outputs();
  void log_setup() const;
  void cleanup();

  // The loop (train_loop.cpp), in the order train() calls them.
  struct Update;      // the micro-batches of one optimizer update
  struct StepResult;  // what one update did
  struct LoopState;   // what this process tracks besides state_: throughput, last eval, last checkpoint
  void stop_if_requested();
  Update next_update();
  StepResult train_step(const Update& update);
  void count_step(const Update& update, const StepResult& result, LoopState& loop);
  void stop_if_diverged();
  std::optional<double> maybe_evaluate(LoopState& loop);
  void log_step(const StepResult& result, std::optional<double> eval_loss, LoopState& loop);
  void maybe_checkpoint(LoopState& loop);
  void evaluate_and_checkpoint_at_end(LoopState& loop);
  void track_best(double eval_loss);
  void write_best_outputs(const fs::path& out_dir, TrainSummary& summary) const;
  TrainSummary summarize(const LoopState& loop) const;
  void write_final_outputs(TrainSummary& summary);
  void log_summary(const TrainSummary& summary) const;

  TrainConfig cfg_;
  TrainerOptions opts_;
  TrainerState state_;
  std::optional<fs::path> resume_from_;
  bool output_overwrite_ = false;
  std::unique_ptr<Impl> impl_;
};

// setup() + train(): what qlora-train runs.
TrainSummary run_training(const TrainConfig& config, const TrainerOptions& options);

}  // namespace qlora::trainer
