// The time plan's FLOP accounting against hand counts from the public Llama-2-7B config (and its published parameter
// count), the recomputation and sliding-window rules, the step arithmetic, and the rate parser.
#include <gtest/gtest.h>

#include "common/error.h"
#include "io/hf_config.h"
#include "plan/time_plan.h"
#include "test_util.h"

namespace qlora::plan {
namespace {

// Llama-2-7B: hidden 4096, intermediate 11008, 32 layers, 32 heads (no GQA), vocab 32000.
constexpr double kH = 4096, kI = 11008, kL = 32, kV = 32000;

MemoryPlanInputs llama2_7b_inputs(int64_t r, int64_t seq, bool checkpointing) {
  MemoryPlanInputs in;
  in.config = io::load_llama_config(test::source_dir() / "configs/models/llama-2-7b.json");
  const int64_t h = 4096, i = 11008;
  const std::vector<std::tuple<std::string, int64_t, int64_t>> projs = {
      {"q_proj", h, h},    {"k_proj", h, h},  {"v_proj", h, h},   {"o_proj", h, h},
      {"gate_proj", h, i}, {"up_proj", h, i}, {"down_proj", i, h}};
  for (int64_t l = 0; l < 32; ++l) {
    for (const auto& [p, fan_in, fan_out] : projs) in.lora.push_back({l, p, fan_in, fan_out, r});
  }
  in.micro_batch = 2;
  in.grad_accum = 8;
  in.seq_len = seq;
  in.gradient_checkpointing = checkpointing;
  return in;
}

TEST(TimePlan, Llama2_7bTokenFlopsEqualTheHandCount) {
  const TokenFlops f = token_flops(llama2_7b_inputs(64, 2048, false));
  const double per_layer = 4 * kH * kH + 3 * kH * kI;
  EXPECT_DOUBLE_EQ(f.n_frozen, kL * per_layer + kV * kH);
  // With the embedding and the 2L+1 norms, the frozen matmul weights are the whole published model: 6.74 B.
  EXPECT_DOUBLE_EQ(f.n_frozen + kV * kH + (2 * kL + 1) * kH, 6738415616.0);
  const double lora = kL * 64 * (4 * (kH + kH) + 3 * (kH + kI));
  EXPECT_DOUBLE_EQ(f.n_lora, lora);
  EXPECT_DOUBLE_EQ(f.attention, 12 * kL * kH * 2048);
  EXPECT_DOUBLE_EQ(f.per_token, 4 * f.n_frozen + 6 * lora + 12 * kL * kH * 2048);
  EXPECT_EQ(f.recompute, 0.0);
}

TEST(TimePlan, CheckpointingAddsTheDecoderLayersForwardOnly) {
  const TokenFlops off = token_flops(llama2_7b_inputs(16, 1024, false));
  const TokenFlops on = token_flops(llama2_7b_inputs(16, 1024, true));
  EXPECT_DOUBLE_EQ(on.per_token, off.per_token);  // model FLOPs do not count recomputation
  // Forward again: the projections (not lm_head), their adapters, and 4 L q T of attention.
  const double layers = kL * (4 * kH * kH + 3 * kH * kI);
  const double lora = kL * 16 * (4 * (kH + kH) + 3 * (kH + kI));
  EXPECT_DOUBLE_EQ(on.recompute, 2 * layers + 2 * lora + 4 * kL * kH * 1024);
}

TEST(TimePlan, SlidingLayersAttendOverTheirWindowOnly) {
  MemoryPlanInputs in = llama2_7b_inputs(8, 4096, false);
  in.config.sliding_window = 1024;
  in.config.sliding_layers.assign(32, false);
  for (size_t l = 0; l < 32; l += 2) in.config.sliding_layers[l] = true;  // Gemma 2's pattern: every other layer
  EXPECT_DOUBLE_EQ(token_flops(in).attention, 12 * kH * (16 * 1024 + 16 * 4096));
}

TEST(TimePlan, StepAndRunTimesFollowFromTheRate) {
  MemoryPlan p;
  p.inputs = llama2_7b_inputs(64, 2048, true);
  const TimePlan t = plan_time(p, 1000, 40e12, "assumed");
  const TokenFlops f = token_flops(p.inputs);
  EXPECT_DOUBLE_EQ(t.tokens_per_step, 2 * 2048 * 8);
  EXPECT_DOUBLE_EQ(t.flops_per_step, (f.per_token + f.recompute) * 2 * 2048 * 8);
  EXPECT_DOUBLE_EQ(t.seconds_per_step, t.flops_per_step / 40e12);
  EXPECT_DOUBLE_EQ(t.total_seconds, 1000 * t.seconds_per_step);
  const std::string text = format_time_plan(t);
  EXPECT_NE(text.find("40 TFLOP/s (assumed)"), std::string::npos) << text;
  EXPECT_NE(text.find("for the run's 1000 steps"), std::string::npos) << text;
  // Without max_steps (epochs) only per-step figures.
  EXPECT_NE(format_time_plan(plan_time(p, 0, 40e12, "x")).find("depends on the dataset"), std::string::npos);
  EXPECT_THROW(plan_time(p, 10, 0.0, "x"), Error);
}

TEST(TimePlan, DurationsAreReadable) {
  EXPECT_EQ(format_duration(12.34), "12.3 s");
  EXPECT_EQ(format_duration(600), "10.0 min");
  EXPECT_EQ(format_duration(3 * 3600), "3.0 h");
  EXPECT_EQ(format_duration(10 * 86400), "10.0 days");
}

TEST(TimePlan, FlopRatesParseWithUnitsAndRejectTheRest) {
  EXPECT_DOUBLE_EQ(parse_flop_rate("40T"), 40e12);
  EXPECT_DOUBLE_EQ(parse_flop_rate("680 GFLOP/s"), 680e9);
  EXPECT_DOUBLE_EQ(parse_flop_rate("1.5pflops"), 1.5e15);
  EXPECT_DOUBLE_EQ(parse_flop_rate("6.8e11"), 6.8e11);
  for (const char* bad : {"fast", "-3T", "0", "40X", "40TB", ""}) {
    const std::string e = test::error_of([&] { parse_flop_rate(bad); });
    EXPECT_NE(e.find("FLOP rate '" + std::string(bad) + "'"), std::string::npos) << bad << ": " << e;
  }
}

}  // namespace
}  // namespace qlora::plan
