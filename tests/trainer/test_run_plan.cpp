// The memory plan of a training config: the same accounting as the run (frozen bytes and LoRA parameters equal
// those of the really loaded tiny model with adapters attached), the plan against the measured peak RSS of short
// real runs of qlora-train (its own process; generous bound here, the 10% comparison on the ~100M bench model is
// bench/bench_memory_plan), and `qlora-train --plan` on the 70B config from configs/models/ alone.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/atomic_file.h"
#include "common/error.h"
#include "lora/lora_model.h"
#include "model/llama.h"
#include "test_util.h"
#include "trainer/run_plan.h"

namespace qlora::trainer {
namespace {

// Plan vs measured peak RSS of a whole qlora-train process on the tiny model. Generous: the tiny model's numbers
// are small next to the runtime's own RSS; the bench model is held to 10% (bench/RESULTS.md).
constexpr double kTinyRssTolerance = 0.25;

std::string tiny_config_yaml(const fs::path& dir, bool checkpointing) {
  std::ostringstream y;
  y << "model:\n  path: " << test::tiny_model_dir().string() << "\n  compute_dtype: bf16\n"
    << "  quant: {type: nf4, blocksize: 64, double_quant: true}\n"
    << "  gradient_checkpointing: " << (checkpointing ? "true" : "false") << "\n"
    << "lora: {r: 16, alpha: 32, dropout: 0.05, targets: all-linear}\n"
    << "data:\n  train: " << (test::source_dir() / "data/demo/train.jsonl").string() << "\n"
    << "  format: alpaca\n  max_seq_len: 512\n  packing: true\n  pad_to_max_seq_len: true\n"
    << "train: {seed: 1, max_steps: 1, micro_batch_size: 8, grad_accum: 1, lr: 1.0e-4, threads: 2}\n"
    << "eval: {every: 0, at_end: false}\n"
    << "checkpoint: {dir: " << (dir / "ckpt").string() << ", every: 0, resume: none}\n"
    << "output_dir: " << (dir / "out").string() << "\n"
    << "log: {every: 1, metrics: " << (dir / "metrics.jsonl").string() << "}\n";
  return y.str();
}

TEST(RunPlan, SameAccountingAsTheLoadedTinyModel) {
  const fs::path dir = test::temp_dir();
  const TrainConfig cfg = parse_config(tiny_config_yaml(dir, true), (dir / "c.yaml").string());
  const plan::MemoryPlan plan = plan_run(cfg);
  model::LoadOptions lo = load_options(cfg);  // what Trainer::setup loads
  lo.show_progress = false;
  auto m = model::load_model(test::tiny_model_dir(), lo);
  int64_t quantized = 0, dense = 0;
  for (const auto& [name, lin] : m->named_linears()) {
    auto f = lin->frozen_base();
    ASSERT_TRUE(f);
    if (f->is_quantized()) {
      quantized += f->quantized_weight().nbytes();
    } else {
      dense += f->dense_weight_ref().numel() * static_cast<int64_t>(f->dense_weight_ref().element_size());
    }
  }
  for (const auto& [name, t] : m->named_dense_tensors()) {
    if (name != "lm_head.weight") dense += t.numel() * static_cast<int64_t>(t.element_size());
  }
  EXPECT_EQ(plan.frozen_quantized_bytes, quantized);
  EXPECT_EQ(plan.frozen_dense_bytes, dense);
  auto adapters = lora::attach_lora(m, lora_config(cfg), /*seed=*/1);
  EXPECT_EQ(plan.lora_params, adapters.num_parameters());
  EXPECT_EQ(plan.inputs.lora.size(), adapters.modules.size());
}

class PlanVsRss : public ::testing::TestWithParam<bool> {};

TEST_P(PlanVsRss, TinyRunPeakRssWithinBound) {
  ASSERT_TRUE(fs::exists(test::tiny_model_dir() / "config.json")) << "run through ctest (fixture make_tiny_model)";
  const bool checkpointing = GetParam();
  const fs::path dir = test::temp_dir();
  write_file_atomic(dir / "c.yaml", tiny_config_yaml(dir, checkpointing));
  const auto r = test::run_command("QLORA_MALLOC_TUNING=rss " + (test::bin_dir() / "qlora-train").string() + " " +
                                   (dir / "c.yaml").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("memory plan:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("vs planned"), std::string::npos) << r.output;
  const auto j = nlohmann::json::parse(read_file(dir / "out/training_summary.json"));
  const double measured = j.at("peak_rss_bytes").get<double>();
  const double planned = j.at("planned_peak_bytes").get<double>();
  std::printf("checkpointing %s: measured peak RSS %.1f MiB, planned %.1f MiB (%+.1f%%)\n",
              checkpointing ? "on" : "off", measured / 1048576, planned / 1048576, 100 * (measured / planned - 1));
  if (test::kUnderAddressSanitizer) GTEST_SKIP() << "RSS vs plan not asserted under ASan (quarantine, shadow memory)";
  EXPECT_NEAR(measured / planned, 1.0, kTinyRssTolerance);
}

INSTANTIATE_TEST_SUITE_P(Checkpointing, PlanVsRss, ::testing::Bool());

TEST(RunPlan, Llama2_70bPlanFromConfigsModelsAlone) {
  const fs::path src = test::source_dir();
  const std::string args = (src / "configs/llama2-70b.yaml").string() + " --plan --plan-config " +
                           (src / "configs/models/llama-2-70b.json").string() +
                           " --set data.max_seq_len=2048 --device-memory 46GB";
  const std::string train = "QLORA_MALLOC_TUNING=rss " + (test::bin_dir() / "qlora-train").string() + " ";
  // As shipped (bf16 adapters, AdamW states offloaded, one GPU): fits 46 GB, exit 0.
  const auto r = test::run_command(train + args);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("68.45 G params x 4 bit"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("fits in 42.84 GiB"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("offloaded: host memory"), std::string::npos) << r.output;
  // With fp32 adapters and the states on the GPU: frozen 36.4 GB + LoRA 13.3 GB: exit 3, with the changes that fit.
  const auto f = test::run_command(train + args + " --set lora.dtype=fp32 --set train.optimizer_offload=false");
  EXPECT_EQ(f.exit_code, 3) << f.output;
  EXPECT_NE(f.output.find("does NOT fit"), std::string::npos) << f.output;
  EXPECT_NE(f.output.find("would fit: --set lora.dtype=bf16 --set train.optimizer_offload=true"), std::string::npos)
      << f.output;
  // Without --plan-config and without weights: a clear error naming configs/models.
  const auto e = test::run_app("qlora-train", (src / "configs/llama2-70b.yaml").string() + " --plan");
  EXPECT_EQ(e.exit_code, 2) << e.output;
  EXPECT_NE(e.output.find("--plan-config configs/models/"), std::string::npos) << e.output;
}

// configs/llama70b.yaml names its config.json (model.plan_config), so `--plan` works before the weights are there,
// and gives the same plan as passing that file with --plan-config.
TEST(RunPlan, ModelPlanConfigStandsInWhileTheWeightsAreAbsent) {
  // Relative paths in a config resolve against the working directory: run from the source tree, as a user would.
  const std::string train = "cd " + test::source_dir().string() + " && " + (test::bin_dir() / "qlora-train").string() +
                            " configs/llama70b.yaml --plan";
  const auto own = test::run_command(train);
  ASSERT_EQ(own.exit_code, 0) << own.output;
  const auto given = test::run_command(train + " --plan-config configs/models/llama-3.1-70b.json");
  ASSERT_EQ(given.exit_code, 0) << given.output;
  const auto total = [](const std::string& out) {
    const size_t at = out.find("per device");
    return at == std::string::npos ? std::string() : out.substr(at, out.find('\n', at) - at);
  };
  EXPECT_FALSE(total(own.output).empty()) << own.output;
  EXPECT_EQ(total(own.output), total(given.output));
  EXPECT_NE(own.output.find("80 layers"), std::string::npos) << own.output;
  // A plan_config that does not exist is a clear error naming the key.
  const auto bad = test::run_command(train + " --set model.plan_config=configs/models/none.json");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("model.plan_config"), std::string::npos) << bad.output;
}

// --plan ends with the time plan: at a given rate the step time is the step's FLOPs over it; on the CPU without a rate
// it measures the matmul rate; a rate that is not one is a clear error.
TEST(RunPlan, PlanPrintsTheTimeOfAStepAndOfTheRun) {
  const std::string train = "cd " + test::source_dir().string() + " && " + (test::bin_dir() / "qlora-train").string() +
                            " configs/llama3-8b.yaml --plan --plan-config configs/models/llama-3.1-8b.json";
  const auto given = test::run_command(train + " --plan-flops 40T");
  ASSERT_EQ(given.exit_code, 0) << given.output;
  EXPECT_NE(given.output.find("time plan"), std::string::npos) << given.output;
  EXPECT_NE(given.output.find("40 TFLOP/s (--plan-flops)"), std::string::npos) << given.output;
  EXPECT_NE(given.output.find("for the run's 1875 steps"), std::string::npos) << given.output;
  EXPECT_NE(given.output.find("16384 tokens"), std::string::npos) << given.output;  // 1 x 1024 x grad_accum 16
  const auto measured = test::run_command(train);
  ASSERT_EQ(measured.exit_code, 0) << measured.output;
  EXPECT_NE(measured.output.find("of the bf16 matmul rate measured now"), std::string::npos) << measured.output;
  const auto bad = test::run_command(train + " --plan-flops fast");
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find("FLOP rate 'fast'"), std::string::npos) << bad.output;
}

}  // namespace
}  // namespace qlora::trainer
