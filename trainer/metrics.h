// Training metrics: the live progress line, metrics.jsonl (one JSON record per logged step) and the same records as
// TensorBoard scalars (trainer/tensorboard.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "trainer/tensorboard.h"

namespace qlora::trainer {

namespace fs = std::filesystem;

// What one logged step reports.
struct StepMetrics {
  int64_t step = 0;  // optimizer updates done (1-based after the first update)
  int64_t total_steps = 0;
  double loss = 0.0;       // mean token loss of this update (label-token weighted)
  double lr = 0.0;         // learning rate this update used
  double grad_norm = 0.0;  // global L2 norm of the adapter gradients before clipping
  int64_t tokens = 0;      // tokens seen so far (non-padding)
  double tokens_per_s = 0.0;
  double elapsed_s = 0.0;  // training wall time so far
  double eta_s = -1.0;     // < 0: unknown
  size_t rss_bytes = 0;
  std::optional<int64_t> device_peak_bytes;  // CUDA: the caching allocator's peak allocated bytes
  std::optional<double> eval_loss;
  bool skipped = false;  // non-finite step (no update)
};

// "step 20/200 | loss 2.3456 | lr 2.00e-04 | gnorm 0.512 | 1234 tok/s | ETA 3m05s | RSS 512.00 MiB"
std::string format_progress_line(const StepMetrics& m);
// {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed", ["eval_loss", "eval_ppl"], ...}
nlohmann::json metrics_record(const StepMetrics& m);

// Appends records to metrics.jsonl. A fresh run truncates the file; a resumed run keeps the records up to the
// resumed step and drops later ones (they belong to the interrupted segment that is being redone). With a
// tensorboard_dir, each record also goes to a new TensorBoard events file there (which hides those redone steps
// from TensorBoard the same way).
class MetricsWriter {
 public:
  MetricsWriter() = default;
  MetricsWriter(const fs::path& file, std::optional<int64_t> resume_step, const fs::path& tensorboard_dir = {});
  void write(const nlohmann::json& record);  // one line, flushed; and its TensorBoard scalars
  const fs::path& path() const { return path_; }
  bool enabled() const { return !path_.empty(); }
  const TensorBoardWriter& tensorboard() const { return tensorboard_; }

 private:
  fs::path path_;
  std::ofstream out_;
  TensorBoardWriter tensorboard_;
};

}  // namespace qlora::trainer
