// Time plan of a QLoRA training run: the FLOPs of one optimizer step from config.json and the batch geometry alone,
// and how long a step and the run take at a stated rate.
//
// Model FLOPs per trained token (forward + backward), the accounting bench/bench_train.cpp reports MFU with:
//   4 N_frozen  the frozen matmuls (decoder projections and lm_head): 2 forward + 2 for the input gradient, no
//               weight gradient;
//   6 N_lora    the adapters: forward, input gradient and weight gradient;
//   12 L q T    attention scores and their use (QK^T and AV, 2 q T each per layer forward, x3 with backward), for
//               sequences of T tokens (causal masking not discounted, as the usual MFU conventions do).
// Gradient checkpointing recomputes each decoder layer's forward during backward: 2 N_layers + 2 N_lora_layers +
// 4 L q T more per token, which a step pays but MFU does not count.
#pragma once

#include <cstdint>
#include <string>

#include "plan/memory_plan.h"

namespace qlora::plan {

struct TokenFlops {
  double n_frozen = 0;   // frozen matmul parameters: decoder projections + lm_head (tied or not)
  double n_lora = 0;     // adapter parameters (A and B of every adapted module)
  double seq = 0;        // T
  double frozen = 0;     // 4 N_frozen
  double lora = 0;       // 6 N_lora
  double attention = 0;  // 12 L q T
  double per_token = 0;  // model FLOPs: frozen + lora + attention
  double recompute = 0;  // with gradient checkpointing: the second forward of every decoder layer; else 0
};
TokenFlops token_flops(const MemoryPlanInputs& in);

// The sustained rate of a training step relative to the bf16 matmul rate of the same machine, counting the
// recomputation: bench_train measured 50.6% MFU with checkpointing off and 36.3% with it on (~54% counting the
// recomputed forward) on the 2-core AVX-512 machine (bench/RESULTS.md).
constexpr double kCpuStepEfficiency = 0.5;

struct TimePlan {
  TokenFlops flops;
  double tokens_per_step = 0;  // micro_batch x seq_len x grad_accum (full rows: packing, or padding counted)
  double flops_per_step = 0;   // (per_token + recompute) x tokens_per_step
  double rate = 0;             // FLOP/s a step sustains (recomputation included)
  std::string rate_source;     // how `rate` was obtained, printed with it
  int64_t steps = 0;           // optimizer steps of the run; 0 when the dataset decides (train.epochs)
  double seconds_per_step = 0;
  double total_seconds = 0;  // steps x seconds_per_step (0 when steps is 0)
};
TimePlan plan_time(const MemoryPlan& plan, int64_t steps, double rate, std::string rate_source);

// The plan as text: FLOPs per token and per step, the rate and where it comes from, time per step, per 1000 steps
// and for the run.
std::string format_time_plan(const TimePlan& t);

// "40T", "40 TFLOP/s", "680G", "6.8e11" -> FLOP/s (k, M, G, T, P are powers of 1000). qlora::Error on anything else.
double parse_flop_rate(const std::string& text);

// The CPU matmul rate of this process's threads now: (m, k) x (k, n) in `dtype`, best of `reps` after a warm-up,
// FLOP/s. --plan takes bf16 at 1024^3 (~0.1 s); bench/machine_limits.h's limits call it with larger sizes.
double measure_cpu_matmul_flops(torch::ScalarType dtype, int64_t m = 1024, int64_t k = 1024, int64_t n = 1024,
                                int reps = 5);

// "45 s", "12.5 min", "3.2 h", "9.1 days".
std::string format_duration(double seconds);

}  // namespace qlora::plan
