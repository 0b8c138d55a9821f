// The memory plan of a training config (plan/memory_plan.h), built the way Trainer::setup builds the run: the
// same loader options (load_options), LoRA targeting (lora_config, lora::is_lora_target / lora_options_for) and
// batch geometry.
//
//   qlora-train configs/llama2-70b.yaml --plan --plan-config configs/models/llama-2-70b.json --device-memory 48GB
//
// config.json comes from --plan-config when given, else from model.path/config.json (or, while that folder has
// none, from the YAML's model.plan_config); nothing else is read, so a
// plan works before the weights are downloaded (configs/models/ ships the public Llama config.json files).
#pragma once

#include <filesystem>
#include <optional>

#include "lora/lora_model.h"
#include "plan/memory_plan.h"
#include "trainer/config.h"

namespace qlora::trainer {

// --plan-config if not empty, else model.path/config.json; qlora::Error with a HINT naming configs/models/ when
// neither exists.
fs::path plan_config_json(const TrainConfig& cfg, const fs::path& plan_config = {});

// Plan inputs for `cfg` on a model described by `mc`; `baseline_bytes` is the process's resident memory before
// the model is loaded (plan::kDefaultCpuBaselineBytes when not measured).
plan::MemoryPlanInputs plan_inputs(const TrainConfig& cfg, const io::LlamaConfig& mc,
                                   int64_t baseline_bytes = plan::kDefaultCpuBaselineBytes);

// Reads config.json (plan_config_json) and plans.
plan::MemoryPlan plan_run(const TrainConfig& cfg, const fs::path& plan_config = {},
                          int64_t baseline_bytes = plan::kDefaultCpuBaselineBytes);

// On glibc: serve every allocation of kMmapThresholdBytes or more with its own mapping, so a freed tensor's memory
// returns to the OS at once. With glibc's default (a dynamic threshold rising to 32 MiB) freed tensors stay in the
// heap, and the peak RSS becomes the sum of the peaks of the run's phases rather than their maximum, which is what
// the plan counts (measured on the bench model: +40% over the plan without this, within 6% with it;
// bench/RESULTS.md). Trainer::setup calls it, and it acts only when the environment sets QLORA_MALLOC_TUNING=rss: the
// small threshold page-faults every activation in anew (~1.5-1.9x slower bench training than the default, 8x on an
// earlier machine). The default is the caching CPU allocator (common/caching_cpu_allocator.h), which holds no more
// than the peak of live tensor bytes at the heap's speed.
constexpr size_t kMmapThresholdBytes = size_t{1} << 20;
void return_freed_tensor_memory_to_os();
// Whether return_freed_tensor_memory_to_os() is in effect (QLORA_MALLOC_TUNING=rss).
bool rss_tuning_requested();

// The CUDA caching allocator's peak allocated bytes on `device` (what torch.cuda.max_memory_allocated reports),
// the number a CUDA run's plan is compared with; nullopt for CPU devices and in builds without QLORA_CUDA.
std::optional<int64_t> device_peak_allocated_bytes(const torch::Device& device);

}  // namespace qlora::trainer
