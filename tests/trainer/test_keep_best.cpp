// eval.keep_best and eval.early_stopping_patience on the tiny model: the adapter kept in <output_dir>/best/ is the
// one of the lowest eval loss that metrics.jsonl records (compared with that step's checkpoint), early stopping
// ends the run after `patience` evaluations without an improvement beyond the threshold, and a run interrupted
// and resumed keeps the same best and stops at the same step as an uninterrupted one.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "lora/peft_io.h"
#include "test_util.h"
#include "trainer/trainer.h"

namespace qlora::trainer {
namespace {

struct BestSpec {
  int64_t max_steps = 12;
  int64_t eval_every = 2;
  bool keep_best = true;
  int64_t patience = 0;
  double threshold = 0.0;
  double lr = 2e-2;
};

void write_dataset(const fs::path& file, int repeats, int shift) {
  const std::vector<std::pair<std::string, std::string>> qa = {
      {"What color is the sky?", "The sky is blue."},  {"What is two plus two?", "Two plus two is four."},
      {"Name a fruit.", "An apple is a fruit."},       {"What do cats say?", "Cats say meow."},
      {"Where is the sun?", "The sun is in the sky."}, {"What is ice?", "Ice is frozen water."},
  };
  std::ofstream out(file);
  for (int r = 0; r < repeats; ++r) {
    for (size_t i = 0; i < qa.size(); ++i) {
      // The eval split pairs the questions with other answers: training first helps it, then overfits.
      const auto& q = qa[i].first;
      const auto& a = qa[(i + static_cast<size_t>(shift)) % qa.size()].second;
      out << R"({"instruction": ")" << q << R"(", "input": "", "output": ")" << a << "\"}\n";
    }
  }
}

TrainConfig config_in(const fs::path& dir, const BestSpec& s) {
  fs::create_directories(dir);
  write_dataset(dir / "train.jsonl", 10, 0);
  write_dataset(dir / "eval.jsonl", 1, 1);
  std::ostringstream y;
  y << "model: {path: " << test::tiny_model_dir().string() << ", compute_dtype: fp32, quant: nf4}\n"
    << "lora: {r: 8, alpha: 16, dropout: 0.0, targets: all-linear}\n"
    << "data: {train: " << (dir / "train.jsonl").string() << ", eval: " << (dir / "eval.jsonl").string()
    << ", format: alpaca, max_seq_len: 64, packing: true, shuffle_buffer: 16}\n"
    << "train: {seed: 7, max_steps: " << s.max_steps << ", micro_batch_size: 4, grad_accum: 1, lr: " << s.lr
    << ", schedule: constant, threads: 2}\n"
    << "eval: {every: " << s.eval_every << ", max_batches: 2, keep_best: " << (s.keep_best ? "true" : "false")
    << ", early_stopping_patience: " << s.patience << ", early_stopping_threshold: " << s.threshold << "}\n"
    << "checkpoint: {dir: " << (dir / "ckpt").string() << ", every: 2, keep: 0, resume: auto}\n"
    << "output_dir: " << (dir / "out").string() << "\n"
    << "log: {every: 1, metrics: " << (dir / "metrics.jsonl").string() << "}\n";
  write_file_atomic(dir / "config.yaml", y.str());
  return parse_config(y.str(), (dir / "config.yaml").string());
}

// (step, eval_loss) of every evaluation in metrics.jsonl.
std::vector<std::pair<int64_t, double>> eval_losses(const fs::path& metrics) {
  std::vector<std::pair<int64_t, double>> out;
  std::istringstream in(read_file(metrics));
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    if (j.contains("eval_loss")) out.emplace_back(j.at("step").get<int64_t>(), j.at("eval_loss").get<double>());
  }
  return out;
}

void expect_same_weights(const fs::path& a, const fs::path& b) {
  EXPECT_EQ(read_file(a / lora::kAdapterWeightsFile), read_file(b / lora::kAdapterWeightsFile)) << a << " vs " << b;
}

nlohmann::json summary_of(const fs::path& out) {
  return nlohmann::json::parse(read_file(out / "training_summary.json"));
}

class KeepBest : public test::TinyModelTest {};

TEST_F(KeepBest, BestFolderHoldsTheAdapterOfTheLowestEvalLoss) {
  const fs::path dir = test::temp_dir();
  const TrainSummary sum = run_training(config_in(dir, BestSpec{}), {});
  const auto evals = eval_losses(dir / "metrics.jsonl");
  ASSERT_EQ(evals.size(), 6u);  // steps 2, 4, ..., 12
  auto best = evals.front();
  for (const auto& e : evals) {
    if (e.second < best.second) best = e;
  }
  ASSERT_TRUE(sum.best_eval_loss.has_value());
  EXPECT_EQ(sum.best_step, best.first);
  EXPECT_EQ(*sum.best_eval_loss, best.second);
  EXPECT_FALSE(sum.stopped_early);
  EXPECT_EQ(sum.steps, 12);
  // The kept adapter is the one the checkpoint of that step holds (checkpoint.every 2, keep all).
  expect_same_weights(dir / "out" / "best", dir / "ckpt" / ("checkpoint-" + std::to_string(best.first)));
  EXPECT_TRUE(fs::exists(dir / "out" / "best" / lora::kAdapterConfigFile));
  const auto j = summary_of(dir / "out");
  EXPECT_EQ(j.at("best_step").get<int64_t>(), best.first);
  EXPECT_EQ(j.at("best_adapter_dir").get<std::string>(), (dir / "out" / "best").string());
  // The final adapter is still the last step's.
  expect_same_weights(dir / "out", dir / "ckpt" / "checkpoint-12");
}

TEST_F(KeepBest, EarlyStoppingEndsAfterPatienceEvaluationsWithoutEnoughImprovement) {
  const fs::path dir = test::temp_dir();
  BestSpec s;
  s.patience = 2;
  s.threshold = 1e6;  // no evaluation improves by this much: the 2nd and 3rd evaluations (steps 4, 6) count
  const TrainSummary sum = run_training(config_in(dir, s), {});
  EXPECT_TRUE(sum.stopped_early);
  EXPECT_EQ(sum.steps, 6);
  EXPECT_EQ(sum.total_steps, 12);
  const auto evals = eval_losses(dir / "metrics.jsonl");
  ASSERT_EQ(evals.size(), 3u);
  auto best = evals.front();
  for (const auto& e : evals) {
    if (e.second < best.second) best = e;
  }
  EXPECT_EQ(sum.best_step, best.first);
  EXPECT_TRUE(summary_of(dir / "out").at("stopped_early").get<bool>());
  expect_same_weights(dir / "out" / "best", dir / "ckpt" / ("checkpoint-" + std::to_string(best.first)));
  // Started again, the run stays stopped: nothing more is trained.
  TrainerOptions again;
  again.overwrite = false;
  const TrainSummary sum2 = run_training(config_in(dir, s), again);
  EXPECT_EQ(sum2.steps, 6);
  EXPECT_TRUE(sum2.stopped_early);
}

TEST_F(KeepBest, ResumedRunKeepsTheSameBestAndStopsAtTheSameStep) {
  BestSpec s;
  s.patience = 2;
  s.threshold = 0.05;
  s.lr = 5e-2;
  const fs::path whole = test::temp_dir();
  const TrainSummary a = run_training(config_in(whole, s), {});

  const fs::path parts = test::temp_dir();
  TrainerOptions first;
  first.stop_after_steps = 4;
  EXPECT_THROW(run_training(config_in(parts, s), first), Interrupted);
  const TrainSummary b = run_training(config_in(parts, s), {});

  EXPECT_EQ(b.steps, a.steps);
  EXPECT_EQ(b.stopped_early, a.stopped_early);
  EXPECT_EQ(b.best_step, a.best_step);
  ASSERT_TRUE(a.best_eval_loss && b.best_eval_loss);
  EXPECT_EQ(*b.best_eval_loss, *a.best_eval_loss);
  expect_same_weights(parts / "out" / "best", whole / "out" / "best");
  expect_same_weights(parts / "out", whole / "out");
}

TEST_F(KeepBest, PatienceWithoutPeriodicEvalIsAConfigError) {
  const fs::path dir = test::temp_dir();
  BestSpec s;
  s.eval_every = 0;
  s.patience = 3;
  const std::string e = test::error_of([&] { config_in(dir, s); });
  EXPECT_NE(e.find("eval.early_stopping_patience"), std::string::npos) << e;
  EXPECT_NE(e.find("eval.every"), std::string::npos) << e;
}

}  // namespace
}  // namespace qlora::trainer
