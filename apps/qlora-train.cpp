// qlora-train: QLoRA fine-tuning from a YAML config.
//
//   qlora-train configs/tiny.yaml
//   qlora-train configs/llama2-7b.yaml --set train.lr=1e-4 --set lora.r=32
//   qlora-train --help-config          # every config key: type, default, allowed values (docs/config.md)
//   qlora-train --plot runs/tiny       # the loss curve of a run, finished or not: runs/tiny/loss.svg
//   qlora-train configs/llama3-8b.yaml --plan --device-memory 24GiB   # memory and time, before any download
//
// Ctrl-C (SIGINT) or SIGTERM finishes the current step, saves a checkpoint and exits with code 130; running the
// same command again resumes from it (checkpoint.resume: auto) and ends bitwise identical to an uninterrupted run.
//
// Data parallel: `qlora-train cfg.yaml --nproc 2` starts 2 local ranks; across machines start one process per
// rank with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), e.g. by torchrun itself
// (`torchrun --nnodes 2 --nproc-per-node 1 ... --no-python qlora-train cfg.yaml`).
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <optional>
#include <string>
#include <vector>

#include "app_main.h"
#include "common/threads.h"
#include "model/compute_dtype.h"
#include "plan/time_plan.h"
#include "trainer/dist/launch.h"
#include "trainer/loss_plot.h"
#include "trainer/run_plan.h"
#include "trainer/trainer.h"

namespace {

// --plan's time estimate: the rate from --plan-flops, or measured (CPU) / assumed (GPU).
qlora::plan::TimePlan time_plan(const qlora::trainer::TrainConfig& config, const qlora::plan::MemoryPlan& p,
                                const std::string& plan_flops) {
  double rate = 0;
  std::string source;
  if (!plan_flops.empty()) {
    rate = qlora::plan::parse_flop_rate(plan_flops);
    source = "--plan-flops";
  } else if (p.inputs.device.rfind("cpu", 0) == 0) {
    const int threads = qlora::configure_threads(config.train.threads);
    // In the run's compute dtype, so an explicit bf16 on a CPU without bf16 matmul instructions is priced at the
    // reference loops it will get (at 256^3 there: 1024^3 takes ~3 s a product).
    const int64_t n = qlora::model::cpu_matmul_native(config.model.dtype()) ? 1024 : 256;
    const double mm = qlora::plan::measure_cpu_matmul_flops(config.model.dtype(), n, n, n);
    rate = qlora::plan::kCpuStepEfficiency * mm;
    source = fmt::format(
        "{:.0f}% of the {} matmul rate measured now on {} threads, {:.0f} GFLOP/s; --plan-flops to "
        "set",
        100 * qlora::plan::kCpuStepEfficiency, config.model.compute_dtype, threads, mm / 1e9);
  } else {
    rate = qlora::plan::kStreamGpuFlopsPerS;
    source = "assumed for a 24 GB RTX 4090-class GPU, not measured; --plan-flops to set";
  }
  return qlora::plan::plan_time(p, config.train.max_steps, rate, source);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"qlora-train: fine-tune a Llama-family model with QLoRA (4-bit frozen base + LoRA adapters)"};
  std::string config_file;
  std::vector<std::string> overrides;
  qlora::trainer::TrainerOptions options;
  bool print_config = false;
  int nproc = 0;
  bool plan = false;
  std::string plan_config, device_memory, plan_flops;
  bool help_config = false;
  std::string plot_run;
  cli.add_option("config", config_file, "training config (YAML), e.g. configs/tiny.yaml (required)");
  cli.add_option("--set", overrides,
                 "override a config key, e.g. --set train.lr=1e-4 --set lora.r=32 (typed and validated like the "
                 "file; repeatable)")
      ->take_all()
      ->allow_extra_args(false);
  cli.add_flag("--overwrite", options.overwrite,
               "replace an existing output_dir; with checkpoint.resume: none also delete old checkpoints");
  cli.add_flag("--force-resume", options.force_resume,
               "resume from a checkpoint even if its config hash or base model differs");
  cli.add_option("--stop-after-steps", options.stop_after_steps,
                 "save a checkpoint and stop (exit 130) after this many steps; run again to continue");
  cli.add_option("--nproc", nproc,
                 "start this many local data-parallel ranks (Gloo on CPU, NCCL on GPU; see dist: in the config)");
  cli.add_flag("--print-config", print_config, "print the effective config (after --set) and exit");
  cli.add_flag("--help-config", help_config, "print the reference of every config key (Markdown: docs/config.md)");
  cli.add_option("--plot", plot_run,
                 "write the loss curve (SVG) of a run from its metrics.jsonl and exit; RUN_DIR is its checkpoint.dir")
      ->option_text("RUN_DIR");
  cli.add_flag("--plan", plan, "print the memory and time plan (from config.json alone, no weights read) and exit");
  cli.add_option("--plan-config", plan_config,
                 "config.json to plan with instead of model.path/config.json, e.g. configs/models/llama-2-70b.json");
  cli.add_option("--device-memory", device_memory,
                 "with --plan: the memory budget to check (e.g. 24GiB, 80GB); says what would make it fit");
  cli.add_option("--plan-flops", plan_flops,
                 "with --plan: the FLOP/s a training step sustains (e.g. 40T); default on a CPU: half the bf16 matmul "
                 "rate measured now, on a GPU: 40T (assumed)");
  cli.footer(
      "Outputs: checkpoints in checkpoint.dir/checkpoint-<step>/, the final adapter (PEFT layout) in output_dir,\n"
      "metrics in log.metrics (JSON lines) and log.tensorboard, the loss curve in loss.svg. Exit codes: 0 done, 2 bad "
      "config/input, 1 internal error, 3 (--plan) does "
      "not fit --device-memory, 130 stopped.");

  return qlora::app::run(cli, argc, argv, [&]() {
    if (help_config) {
      std::printf("%s", qlora::trainer::config_reference_markdown().c_str());
      return 0;
    }
    if (!plot_run.empty()) {
      std::printf("%s\n", qlora::trainer::plot_run(plot_run).string().c_str());
      return 0;
    }
    if (config_file.empty()) {
      throw qlora::Error("no training config given\nHINT: qlora-train configs/tiny.yaml (see --help, --help-config)");
    }
    const auto config = qlora::trainer::load_config(config_file, overrides);
    if (print_config) {
      std::printf("%s", qlora::trainer::effective_config_yaml(config).c_str());
      return 0;
    }
    if (plan) {
      const auto p = qlora::trainer::plan_run(config, plan_config);
      std::optional<int64_t> budget;
      if (!device_memory.empty()) budget = qlora::plan::parse_byte_size(device_memory);
      std::printf("%s", qlora::plan::format_plan(p, budget).c_str());
      std::printf("%s", qlora::plan::format_time_plan(time_plan(config, p, plan_flops)).c_str());
      return budget && p.total_bytes > *budget ? 3 : 0;
    }
    if (nproc > 0) return qlora::dist::launch_local_ranks(nproc, std::vector<std::string>(argv, argv + argc));
    qlora::trainer::run_training(config, options);
    return 0;
  });
}
