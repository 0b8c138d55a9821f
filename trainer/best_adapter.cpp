// eval.keep_best and eval.early_stopping_patience (HF's load_best_model_at_end and EarlyStoppingCallback).
//
// After every evaluation (all ranks hold the same all-reduced loss): a loss below the best so far becomes the best,
// and with keep_best rank 0 writes that adapter to <checkpoint.dir>/best/ (one atomic folder swap, beside the
// checkpoints, under the same lock); an evaluation that does not beat the best by more than
// early_stopping_threshold counts towards early_stopping_patience, and reaching it ends the run after this step.
// The best loss, its step, the count and the stop are trainer state, so a resumed run continues them exactly.
// At the end the best adapter is copied into <output_dir>/best/ with the final outputs, if it is the one this
// run's state names (a best/ left by an abandoned branch of the same folder is not).
#include <spdlog/spdlog.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/atomic_file.h"
#include "common/json_read.h"
#include "lora/peft_io.h"
#include "trainer/trainer_impl.h"

namespace qlora::trainer {

namespace {

constexpr const char* kBestDir = "best";
constexpr const char* kBestFile = "best.json";  // {"step", "eval_loss", "config_hash"} of the adapter beside it

// Whether <dir>/best.json names this step and run.
bool best_matches(const fs::path& dir, int64_t step, const std::string& config_hash) {
  const fs::path f = dir / kBestFile;
  if (!fs::is_regular_file(f)) return false;
  std::string why;
  const auto j = try_parse_json(read_file(f), &why);
  return j && j->is_object() && j->value("step", int64_t{-1}) == step &&
         j->value("config_hash", std::string()) == config_hash;
}

}  // namespace

void Trainer::track_best(double eval_loss) {
  const EvalSection& e = cfg_.eval;
  if (!e.keep_best && e.early_stopping_patience == 0) return;
  const bool first = state_.best_step < 0;
  const bool finite = std::isfinite(eval_loss);
  // The patience counter resets only on an improvement larger than the threshold; the best moves on any.
  const bool improved_enough = finite && (first || eval_loss < state_.best_eval_loss - e.early_stopping_threshold);
  if (finite && (first || eval_loss < state_.best_eval_loss)) {
    state_.best_eval_loss = eval_loss;
    state_.best_step = state_.step;
    if (e.keep_best && impl_->dp.rank() == 0) {
      AtomicDir out(cfg_.checkpoint.dir / kBestDir, /*overwrite=*/true);
      lora::SaveAdapterOptions so;
      so.base_model_name_or_path = cfg_.model.path.string();
      lora::write_adapter_files(out.path(), impl_->adapters, so);
      const nlohmann::json j = {{"step", state_.step}, {"eval_loss", eval_loss}, {"config_hash", impl_->config_hash}};
      write_file_atomic(out.path() / kBestFile, j.dump(2) + "\n");
      out.commit();
      spdlog::info("best eval loss so far ({:.4f} at step {}): adapter saved to {}", eval_loss, state_.step,
                   out.final_path().string());
    }
  }
  state_.evals_since_best = improved_enough ? 0 : state_.evals_since_best + 1;
  if (e.early_stopping_patience > 0 && state_.evals_since_best >= e.early_stopping_patience &&
      state_.step < state_.total_steps) {
    state_.stopped_early = true;
    spdlog::info(
        "early stopping at step {} of {}: eval loss has not improved by more than {} for {} evaluations "
        "(eval.early_stopping_patience); best {:.4f} at step {}",
        state_.step, state_.total_steps, e.early_stopping_threshold, state_.evals_since_best, state_.best_eval_loss,
        state_.best_step);
  }
}

// Rank 0, inside the final output folder being built (`out_dir`, before it is committed).
void Trainer::write_best_outputs(const fs::path& out_dir, TrainSummary& summary) const {
  if (state_.best_step < 0 || !cfg_.eval.keep_best) return;
  const fs::path best = cfg_.checkpoint.dir / kBestDir;
  if (!best_matches(best, state_.best_step, impl_->config_hash)) {
    spdlog::warn("{}: not the adapter of this run's best eval loss (step {}); <output_dir>/best is not written",
                 best.string(), state_.best_step);
    return;
  }
  fs::create_directory(out_dir / kBestDir);
  for (const auto& f : fs::directory_iterator(best)) {
    if (f.is_regular_file()) fs::copy_file(f.path(), out_dir / kBestDir / f.path().filename());
  }
  summary.best_adapter_dir = cfg_.output_dir / kBestDir;
}

void clean_best_dir(const fs::path& checkpoint_dir, bool fresh) {
  // The folder is locked by this run, so any best.tmp-<pid> or best.old-<pid> is a leftover of a killed writer (an
  // old one is put back when the new one never arrived: install_dir's fallback without renameat2).
  std::error_code ec;
  if (!fs::is_directory(checkpoint_dir, ec)) return;
  const fs::path best = checkpoint_dir / kBestDir;
  const std::string tmp_prefix = std::string(kBestDir) + ".tmp-";
  const std::string old_prefix = std::string(kBestDir) + ".old-";
  std::vector<fs::path> leftovers;
  for (const auto& f : fs::directory_iterator(checkpoint_dir, ec)) {
    const std::string name = f.path().filename().string();
    if (name.rfind(tmp_prefix, 0) == 0 || name.rfind(old_prefix, 0) == 0) leftovers.push_back(f.path());
  }
  for (const fs::path& p : leftovers) {
    if (p.filename().string().rfind(old_prefix, 0) == 0 && !fs::exists(best, ec)) {
      fs::rename(p, best, ec);
      if (!ec) continue;
    }
    fs::remove_all(p, ec);
  }
  if (fresh) fs::remove_all(best, ec);
}

}  // namespace qlora::trainer
