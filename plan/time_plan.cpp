#include "plan/time_plan.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <map>

#include "common/error.h"

namespace qlora::plan {

TokenFlops token_flops(const MemoryPlanInputs& in) {
  const io::LlamaConfig& c = in.config;
  TokenFlops f;
  double layer = 0;
  for (const auto& p : io::layer_projections(c)) layer += static_cast<double>(p.out) * static_cast<double>(p.in);
  const double n_layers = static_cast<double>(c.num_hidden_layers) * layer;
  f.n_frozen = n_layers + static_cast<double>(c.vocab_size) * static_cast<double>(c.hidden_size);
  double lora_layers = 0;
  for (const auto& m : in.lora) {
    const double n = static_cast<double>(m.r) * static_cast<double>(m.in + m.out);
    f.n_lora += n;
    if (m.layer >= 0) lora_layers += n;
  }
  f.seq = static_cast<double>(in.seq_len);
  // Each layer attends over T positions, or its sliding window where that is shorter.
  double attn_positions = 0;  // sum over layers of the positions one query attends to (at most)
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const int64_t span = c.layer_is_sliding(l) ? std::min(in.seq_len, c.sliding_window) : in.seq_len;
    attn_positions += static_cast<double>(span);
  }
  const double q = static_cast<double>(c.q_dim());
  f.frozen = 4 * f.n_frozen;
  f.lora = 6 * f.n_lora;
  f.attention = 12 * q * attn_positions;
  f.per_token = f.frozen + f.lora + f.attention;
  f.recompute = in.gradient_checkpointing ? 2 * n_layers + 2 * lora_layers + 4 * q * attn_positions : 0.0;
  return f;
}

TimePlan plan_time(const MemoryPlan& plan, int64_t steps, double rate, std::string rate_source) {
  if (!(rate > 0) || !std::isfinite(rate)) throw Error("time plan: the rate must be a positive number of FLOP/s");
  const MemoryPlanInputs& in = plan.inputs;
  TimePlan t;
  t.flops = token_flops(in);
  t.tokens_per_step =
      static_cast<double>(in.micro_batch) * static_cast<double>(in.seq_len) * static_cast<double>(in.grad_accum);
  t.flops_per_step = (t.flops.per_token + t.flops.recompute) * t.tokens_per_step;
  t.rate = rate;
  t.rate_source = std::move(rate_source);
  t.steps = std::max<int64_t>(0, steps);
  t.seconds_per_step = t.flops_per_step / rate;
  t.total_seconds = static_cast<double>(t.steps) * t.seconds_per_step;
  return t;
}

std::string format_duration(double seconds) {
  if (seconds < 90) return fmt::format("{:.1f} s", seconds);
  if (seconds < 90 * 60) return fmt::format("{:.1f} min", seconds / 60);
  if (seconds < 48 * 3600) return fmt::format("{:.1f} h", seconds / 3600);
  return fmt::format("{:.1f} days", seconds / 86400);
}

std::string format_time_plan(const TimePlan& t) {
  const TokenFlops& f = t.flops;
  std::string s = "time plan (model FLOPs as bench/bench_train counts them; docs in plan/time_plan.h)\n";
  s += fmt::format(
      "  per trained token   {:.3f} GFLOP = 4*N_frozen {:.3f} (N_frozen {:.2f} B) + 6*N_lora {:.3f} (N_lora {:.1f} M) "
      "+ "
      "attention {:.3f} (T {:.0f})\n",
      f.per_token / 1e9, f.frozen / 1e9, f.n_frozen / 1e9, f.lora / 1e9, f.n_lora / 1e6, f.attention / 1e9, f.seq);
  if (f.recompute > 0) {
    s += fmt::format(
        "  + recomputation     {:.3f} GFLOP per token (gradient checkpointing: each layer's forward again)\n",
        f.recompute / 1e9);
  }
  s += fmt::format("  per optimizer step  {:.0f} tokens, {:.3g} FLOP\n", t.tokens_per_step, t.flops_per_step);
  s += fmt::format("  rate                {:.3g} TFLOP/s ({})\n", t.rate / 1e12, t.rate_source);
  s += fmt::format("  time                {} per step, {} per 1000 steps", format_duration(t.seconds_per_step),
                   format_duration(1000 * t.seconds_per_step));
  if (t.steps > 0) {
    s += fmt::format(", {} for the run's {} steps\n", format_duration(t.total_seconds), t.steps);
  } else {
    s += " (train.epochs: the run's step count depends on the dataset)\n";
  }
  return s;
}

double parse_flop_rate(const std::string& text) {
  std::string t;
  for (char ch : text) {
    if (!std::isspace(static_cast<unsigned char>(ch)))
      t += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  }
  const auto bad = [&]() {
    return Error("FLOP rate '" + text + "': expected a number with an optional unit, e.g. 40T, 680G, 6.8e11");
  };
  size_t pos = 0;
  double value = 0.0;
  try {
    value = std::stod(t, &pos);
  } catch (const std::exception&) {
    throw bad();
  }
  std::string unit = t.substr(pos);
  for (const char* suffix : {"flop/s", "flops"}) {
    const std::string sfx = suffix;
    if (unit.size() >= sfx.size() && unit.compare(unit.size() - sfx.size(), sfx.size(), sfx) == 0) {
      unit.erase(unit.size() - sfx.size());
      break;
    }
  }
  static const std::map<std::string, double> kUnits = {{"", 1.0},  {"k", 1e3},  {"m", 1e6},
                                                       {"g", 1e9}, {"t", 1e12}, {"p", 1e15}};
  const auto it = kUnits.find(unit);
  if (it == kUnits.end() || !(value > 0) || !std::isfinite(value)) throw bad();
  return value * it->second;
}

double measure_cpu_matmul_flops(torch::ScalarType dtype, int64_t m, int64_t k, int64_t n, int reps) {
  torch::NoGradGuard no_grad;
  const auto a = torch::randn({m, k}).to(dtype);
  const auto b = torch::randn({k, n}).to(dtype);
  auto c = torch::matmul(a, b);  // warm-up (oneDNN picks its kernel)
  double best = 1e30;
  for (int i = 0; i < std::max(1, reps); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    c = torch::matmul(a, b);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * static_cast<double>(m) * static_cast<double>(k) * static_cast<double>(n) / best;
}

}  // namespace qlora::plan
