// qlora-eval through the trainer's data pipeline: with the adapter qlora-train wrote, on the run's config, the loss
// is the eval_loss qlora-train itself reported at the end of the run (the independent path: the trainer's own eval
// with the adapter still in memory); without the adapter it differs; a JSON array of the same records gives the same.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "test_util.h"

namespace qlora::test {
namespace {

constexpr double kLossTolerance = 2e-6;  // qlora-eval prints 6 decimals

// The number after "loss " on qlora-eval's last line.
double eval_loss(const CommandResult& r) {
  const size_t at = r.output.rfind("\nloss ");
  EXPECT_NE(at, std::string::npos) << r.output;
  return at == std::string::npos ? 0.0 : std::stod(r.output.substr(at + 6));
}

TEST(EvalApp, AdapterLossEqualsTheTrainersEvalLoss) {
  const auto dir = temp_dir();
  const auto demo = source_dir() / "data" / "demo";
  std::ofstream(dir / "cfg.yaml")
      << "model: {path: " << tiny_model_dir().string() << ", compute_dtype: fp32, quant: {type: nf4}}\n"
      << "lora: {r: 8, alpha: 16, dropout: 0.0, targets: all-linear}\n"
      << "data: {train: " << (demo / "train.jsonl").string() << ", eval: " << (demo / "eval.jsonl").string()
      << ", format: alpaca, max_seq_len: 128, packing: true}\n"
      << "train: {seed: 1, max_steps: 12, micro_batch_size: 4, lr: 1.0e-2, warmup_steps: 0}\n"
      << "eval: {every: 0, at_end: true}\n"
      << "checkpoint: {dir: " << (dir / "ckpt").string() << ", every: 0}\n"
      << "output_dir: " << (dir / "out").string() << "\n"
      << "log: {every: 4, metrics: " << (dir / "metrics.jsonl").string() << "}\n";
  const auto train = run_app("qlora-train", (dir / "cfg.yaml").string());
  ASSERT_EQ(train.exit_code, 0) << train.output;
  std::ifstream summary_file(dir / "out" / "training_summary.json");
  const auto summary = nlohmann::json::parse(summary_file);
  ASSERT_TRUE(summary.contains("final_eval_loss")) << summary.dump();
  const double trainer_loss = summary["final_eval_loss"].get<double>();

  const std::string common = "--model " + tiny_model_dir().string() + " --dtype fp32 --quant nf4 ";
  const auto with = run_app(
      "qlora-eval", common + "--adapter " + (dir / "out").string() + " --config " + (dir / "cfg.yaml").string());
  ASSERT_EQ(with.exit_code, 0) << with.output;
  EXPECT_NEAR(eval_loss(with), trainer_loss, kLossTolerance);
  EXPECT_CONTAINS(with.output, "format alpaca template alpaca records 100 examples 100");

  const auto without = run_app("qlora-eval", common + "--config " + (dir / "cfg.yaml").string());
  ASSERT_EQ(without.exit_code, 0) << without.output;
  EXPECT_GT(std::abs(eval_loss(without) - trainer_loss), 0.1);

  // The same records as one JSON array, with the format given as flags (unpacked batches: the same loss).
  std::ifstream lines(demo / "eval.jsonl");
  std::string text = "[\n", line;
  for (bool first = true; std::getline(lines, line); first = false) text += (first ? "  " : ",\n  ") + line;
  std::ofstream(dir / "eval.json") << text << "\n]\n";
  const auto array = run_app("qlora-eval", common + "--adapter " + (dir / "out").string() + " --data " +
                                               (dir / "eval.json").string() + " --format alpaca --max-seq-len 128");
  ASSERT_EQ(array.exit_code, 0) << array.output;
  EXPECT_NEAR(eval_loss(array), trainer_loss, 1e-4);  // padded instead of packed rows: float sums in another order
}

}  // namespace
}  // namespace qlora::test
