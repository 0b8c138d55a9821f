// The memory plan (qlora-train --plan) against the measured peak RSS of real training runs: each configuration
// runs in a fresh process of its own, this program started again (so its peak RSS, VmHWM, is its own; a forked
// child would start without the parent's library pages in its RSS and under-count its baseline by ~40 MiB), plans
// with its own measured baseline RSS as qlora-train does, trains a few steps and reports both. The target:
// within 10% on the bench model.
//
//   build/bin/bench_memory_plan [configs/bench.yaml] [--steps N=3] [--threads T=0]
//   (make the model first: build/bin/qlora-make-tiny --out models/bench --preset bench)
//
// Configurations: gradient checkpointing on/off x the config's micro batch and half of it. The host allocator is set
// up as qlora-train sets it (common/host_memory.h: the caching CPU allocator by default; QLORA_MALLOC_TUNING=heap
// keeps glibc's tuned heap without the cache, =rss returns freed tensors at once, =0 leaves glibc as is); tokens/s
// shows what the setting costs in speed.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "bench/machine_limits.h"
#include "common/caching_cpu_allocator.h"
#include "common/host_memory.h"
#include "common/log.h"
#include "plan/memory_plan.h"
#include "trainer/run_plan.h"
#include "trainer/trainer.h"

namespace {

using namespace qlora;

struct Case {
  bool checkpointing;
  int64_t micro_batch;
};

// One configuration, in the process that bench::run_in_fresh_process started (main's --run-case).
nlohmann::json run_case(const std::string& config_file, const Case& c, int steps, int threads) {
  const std::string dir = "runs/bench_memory_plan";
  auto cfg = trainer::load_config(
      config_file,
      {"model.gradient_checkpointing=" + std::string(c.checkpointing ? "true" : "false"),
       "train.micro_batch_size=" + std::to_string(c.micro_batch), "train.max_steps=" + std::to_string(steps),
       "train.threads=" + std::to_string(threads), "checkpoint.dir=" + dir, "checkpoint.every=0",
       "checkpoint.resume=none", "log.metrics=" + dir + "/metrics.jsonl", "eval.every=0", "eval.at_end=false"});
  trainer::TrainerOptions opts;
  opts.overwrite = true;
  opts.write_outputs = false;
  const size_t baseline = current_rss_bytes();
  auto s = trainer::run_training(cfg, opts);
  const auto plan = trainer::plan_run(cfg, {}, static_cast<int64_t>(baseline));
  const CpuCacheStats cache = cpu_cache_stats();
  return nlohmann::json{{"ok", true},
                        {"peak_rss", s.peak_rss_bytes},
                        {"tokens_per_s", s.tokens_per_s},
                        {"cache_hits", cache.hits},
                        {"cache_misses", cache.misses},
                        {"planned", s.planned_peak_bytes},
                        {"baseline", baseline},
                        {"phase", plan.peak_phase},
                        {"activations", plan.activation_bytes},
                        {"tokens", cfg.train.micro_batch_size * cfg.data_config.max_seq_len}};
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_file = "configs/bench.yaml";
  int steps = 3, threads = 0;
  std::optional<Case> run_one;  // --run-case ON MICRO: this process is one configuration's fresh process
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--run-case" && i + 2 < argc) {
      run_one = Case{std::string(argv[i + 1]) == "on", std::atoll(argv[i + 2])};
      i += 2;
    } else if (a == "--steps" && i + 1 < argc) {
      steps = std::atoi(argv[++i]);
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--help" || a == "-h") {
      std::printf("usage: bench_memory_plan [CONFIG=configs/bench.yaml] [--steps N=3] [--threads T=0 (all)]\n");
      return 0;
    } else {
      config_file = a;
    }
  }
  init_logging("warn");
  configure_host_allocator();  // as every app does (apps/app_main.h)
  if (run_one) return bench::print_child_answer([&] { return run_case(config_file, *run_one, steps, threads); });
  const char* tuning = std::getenv("QLORA_MALLOC_TUNING");
  std::printf("host allocator: %s (QLORA_MALLOC_TUNING=%s)\n",
              caching_cpu_allocator_installed() ? "caching CPU allocator" : "no tensor cache",
              tuning == nullptr ? "unset" : tuning);
  try {
    const auto cfg = trainer::load_config(config_file);
    std::printf("bench_memory_plan: %s (%s, seq %lld), %d steps per run, each run in its own process\n",
                config_file.c_str(), cfg.model.path.c_str(), static_cast<long long>(cfg.data_config.max_seq_len),
                steps);
    std::printf("%-14s %6s %8s %12s %12s %12s %9s %8s %13s  %s\n", "checkpointing", "micro", "tokens", "baseline",
                "planned", "measured", "error", "tok/s", "cache hit/miss", "planned peak phase (activations)");
    const int64_t mb = cfg.train.micro_batch_size;
    int worst_ok = 1;
    double worst = 0;
    for (bool ck : {true, false}) {
      for (int64_t b : {mb, std::max<int64_t>(1, mb / 2)}) {
        const auto j =
            bench::run_in_fresh_process({config_file, "--run-case", ck ? "on" : "off", std::to_string(b), "--steps",
                                         std::to_string(steps), "--threads", std::to_string(threads)});
        if (!j.value("ok", false)) {
          std::printf("%-14s %6lld failed: %s\n", ck ? "on" : "off", static_cast<long long>(b),
                      j.value("error", "").c_str());
          worst_ok = 0;
          continue;
        }
        const double planned = j["planned"].get<double>(), measured = j["peak_rss"].get<double>();
        const double err = measured / planned - 1.0;
        worst = std::max(worst, std::abs(err));
        const std::string cache =
            std::to_string(j["cache_hits"].get<int64_t>()) + "/" + std::to_string(j["cache_misses"].get<int64_t>());
        std::printf("%-14s %6lld %8lld %12s %12s %12s %+8.1f%% %8.0f %13s  %s (%s)\n", ck ? "on" : "off",
                    static_cast<long long>(b), static_cast<long long>(j["tokens"].get<int64_t>()),
                    plan::format_gib(j["baseline"].get<int64_t>()).c_str(),
                    plan::format_gib(static_cast<int64_t>(planned)).c_str(),
                    plan::format_gib(static_cast<int64_t>(measured)).c_str(), 100 * err,
                    j["tokens_per_s"].get<double>(), cache.c_str(), j["phase"].get<std::string>().c_str(),
                    plan::format_gib(j["activations"].get<int64_t>()).c_str());
      }
    }
    std::printf("largest |measured / planned - 1|: %.1f%% (target: 10%%)\n", 100 * worst);
    return worst_ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
