#include "trainer/run_plan.h"

#if defined(QLORA_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <spdlog/spdlog.h>

#include <cstdlib>
#include <string>

#include "common/error.h"
#include "common/host_memory.h"
#include "lora/lora_model.h"
#include "model/llama.h"
#include "ops/attention.h"

namespace qlora::trainer {

fs::path plan_config_json(const TrainConfig& cfg, const fs::path& plan_config) {
  if (!plan_config.empty()) {
    if (!fs::is_regular_file(plan_config)) {
      throw Error("--plan-config " + plan_config.string() +
                  ": no such file\nHINT: configs/models/ holds the "
                  "config.json of the public Llama checkpoints");
    }
    return plan_config;
  }
  const fs::path p = cfg.model.path / "config.json";
  if (!fs::is_regular_file(p) && !cfg.model.plan_config.empty()) {
    // Weights not there yet: the config's own model.plan_config (e.g. configs/models/<model>.json) stands in.
    if (!fs::is_regular_file(cfg.model.plan_config)) {
      throw Error(cfg.source_file + ": model.plan_config: no such file " + cfg.model.plan_config.string() +
                  "\nHINT: configs/models/ holds the config.json of the public Llama checkpoints");
    }
    return cfg.model.plan_config;
  }
  if (!fs::is_regular_file(p)) {
    throw Error(cfg.source_file + (cfg.model.path_line > 0 ? ":" + std::to_string(cfg.model.path_line) : "") +
                ": model.path: no config.json in " + cfg.model.path.string() +
                "\nHINT: to plan before downloading, pass --plan-config configs/models/<model>.json (e.g. "
                "configs/models/llama-2-70b.json)");
  }
  return p;
}

plan::MemoryPlanInputs plan_inputs(const TrainConfig& cfg, const io::LlamaConfig& mc, int64_t baseline_bytes) {
  plan::MemoryPlanInputs in;
  in.config = mc;
  const model::LoadOptions lo = load_options(cfg);  // what Trainer::setup loads
  in.compute_dtype = lo.compute_dtype;
  in.quant_targets = lo.quant_targets;
  in.quant = lo.quant;
  in.blocksize = lo.blocksize;
  in.double_quant = lo.double_quant;
  // The modules attach_lora adapts, with their ranks (same LoraConfig as Trainer::setup).
  const lora::LoraConfig lc = lora_config(cfg);
  const int64_t h = mc.hidden_size;
  std::vector<std::tuple<std::string, std::string, int64_t, int64_t>> projs;  // group, name, fan in, fan out
  for (const auto& p : io::layer_projections(mc)) projs.emplace_back(p.group, p.name, p.in, p.out);
  for (int64_t l = 0; l < mc.num_hidden_layers; ++l) {
    for (const auto& [group, proj, fan_in, fan_out] : projs) {
      const std::string name = "model.layers." + std::to_string(l) + "." + group + "." + proj;
      if (!lora::is_lora_target(name, lc)) continue;
      in.lora.push_back({l, proj, fan_in, fan_out, lora::lora_options_for(name, lc).r});
    }
  }
  if (!mc.tie_word_embeddings && lora::is_lora_target("lm_head", lc)) {
    in.lora.push_back({-1, "lm_head", h, mc.vocab_size, lora::lora_options_for("lm_head", lc).r});
  }
  in.lora_dropout = cfg.lora.dropout;
  in.lora_dtype = cfg.lora.torch_dtype();
  in.optimizer_offload = cfg.train.optimizer_offload;
  in.micro_batch = cfg.train.micro_batch_size;
  in.grad_accum = cfg.train.grad_accum;
  in.seq_len = cfg.data_config.max_seq_len;
  in.gradient_checkpointing = cfg.model.gradient_checkpointing;
  in.loss_chunk_tokens = cfg.train.loss_chunk_tokens;
  in.blocked_cpu_attention = ops::blocked_cpu_attention_runs();
  // On CUDA the plan is of the device's allocations (what max-allocated reports): no process baseline there.
  in.baseline_bytes = cfg.device.rfind("cuda", 0) == 0 ? 0 : baseline_bytes;
  in.device = cfg.device;
  return in;
}

plan::MemoryPlan plan_run(const TrainConfig& cfg, const fs::path& plan_config, int64_t baseline_bytes) {
  const io::LlamaConfig mc = io::load_llama_config(plan_config_json(cfg, plan_config));
  return plan::plan_memory(plan_inputs(cfg, mc, baseline_bytes));
}

bool rss_tuning_requested() {
  const char* mode = std::getenv("QLORA_MALLOC_TUNING");
  return mode != nullptr && std::string(mode) == "rss";
}

std::optional<int64_t> device_peak_allocated_bytes(const torch::Device& device) {
#if defined(QLORA_WITH_CUDA)
  if (device.is_cuda()) {
    const int index = device.has_index() ? device.index() : c10::cuda::current_device();
    // allocated_bytes[0]: the aggregate over pools (StatType::AGGREGATE), whose name moved between versions.
    return static_cast<int64_t>(c10::cuda::CUDACachingAllocator::getDeviceStats(index).allocated_bytes[0].peak);
  }
#endif
  (void)device;
  return std::nullopt;
}

void return_freed_tensor_memory_to_os() {
  // Opt-in (QLORA_MALLOC_TUNING=rss): on the bench model a 1 MiB threshold made training ~8x slower than the
  // apps' default 1 GiB threshold (45 vs 377 tokens/s, bench/RESULTS.md): every activation page-faults in anew.
  if (rss_tuning_requested()) configure_host_allocator(kMmapThresholdBytes);
}

}  // namespace qlora::trainer
