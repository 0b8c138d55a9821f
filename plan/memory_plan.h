// Memory plan of a QLoRA training run, from the model's config.json alone (no weights read): what the run
// holds at its peak, item by item, and whether it fits a memory budget.
//
// The accounting follows what the code allocates, not a rule of thumb:
//  - frozen 4-bit projections: quant::QuantizedTensor::nbytes_for (the byte count the loader's tensors have);
//    dense tensors (embeddings, norms, lm_head, unquantized projections) in the compute dtype;
//  - LoRA: A/B in their storage dtype (fp32 masters or bf16, lora/lora_linear.h) and gradients in the same dtype,
//    AdamW's fp32 exp_avg/exp_avg_sq (on the device, or in host memory with optimizer offload: trainer/optimizer.h,
//    then not part of a GPU's total), and the compute-dtype copies of A/B that each forward casts and autograd
//    keeps (none when the storage dtype is the compute dtype);
//  - activations of one micro-batch of N = B*T tokens: what autograd saves per decoder layer (listed tensor by
//    tensor in memory_plan.cpp, following model/llama.cpp, ops/attention.cpp and lora/lora_linear.cpp), or with
//    gradient checkpointing only each layer's input plus one layer recomputed during backward;
//  - the causal-LM loss (model/llama.h causal_lm_loss): logits of one chunk of `loss_chunk_tokens` tokens in fp32,
//    with the log-softmax and its gradient, instead of the whole (N, V);
//  - the dequantized weight of the largest 4-bit projection (linear_4bit dequantizes on the fly);
//  - the process baseline (runtime libraries, measured at start or a stated constant), the library code training
//    pages in after it, and allocator slack.
// The peak is baseline + persistent + max over phases (forward, loss, backward, optimizer) of that phase's live
// transient bytes.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "quant/quantized_tensor.h"

namespace qlora::plan {

// LibTorch (CPU) + the app + tokenizer and data loader, resident before the model is loaded: qlora-train measured
// 365.9-366.1 MiB at that point with LibTorch 2.15 (the torch wheel's libraries, CUDA build, run on the CPU), on
// configs/bench.yaml and on the tiny model (the memory plan it prints at start). Used by --plan; a running trainer
// measures its own baseline instead.
constexpr int64_t kDefaultCpuBaselineBytes = 366ll << 20;
// Library code and data that training touches only after that baseline is read (LibTorch's autograd and the
// oneDNN / MKL kernels of the first forward, backward and optimizer step), counted whenever the process baseline is:
// file-backed RSS (RssFile) grew by 23.6-23.8 MiB from the trainer's baseline to the end of training in all four
// bench_memory_plan runs of 2026-12-05 (bench model, checkpointing on/off, micro batch 4/2; LibTorch 2.x on an
// AVX-512 CPU), independent of the model's size.
constexpr int64_t kCpuTrainingCodeBytes = 24ll << 20;
// Slack the CPU allocator (glibc malloc) keeps on top of the live tensors: freed blocks under the mmap threshold
// (1 MiB, set by trainer::return_freed_tensor_memory_to_os) that stay in the heap. A fraction of the transient bytes.
constexpr double kAllocatorSlackFraction = 0.05;

struct LoraModuleShape {
  int64_t layer = 0;  // decoder layer index, -1 for lm_head
  std::string proj;   // "q_proj", ..., "down_proj", "lm_head"
  int64_t in = 0, out = 0, r = 0;
};

struct MemoryPlanInputs {
  io::LlamaConfig config;
  torch::ScalarType compute_dtype = torch::kBFloat16;
  std::optional<quant::QuantType> quant = quant::QuantType::kNF4;  // nullopt: projections dense
  int64_t blocksize = quant::kDefaultBlocksize;
  bool double_quant = true;
  std::vector<std::string> quant_targets = io::llama_projection_names();
  std::vector<LoraModuleShape> lora;               // one entry per adapted module, each module as attach_lora makes it
  double lora_dropout = 0.0;                       // > 0: each adapted module keeps its dropout output and mask
  torch::ScalarType lora_dtype = torch::kFloat32;  // storage dtype of A/B and their gradients (lora.dtype)
  bool optimizer_offload = false;                  // AdamW states in host memory (train.optimizer_offload)
  int64_t micro_batch = 1;
  int64_t grad_accum = 1;  // micro-batches per update (bf16 adapters accumulate their gradients in fp32 when > 1)
  int64_t seq_len = 2048;
  bool gradient_checkpointing = true;
  int64_t loss_chunk_tokens = 1024;
  // ops/fused_ops.h and ops/rope.h: on CPU, RMSNorm, rotary embedding, SwiGLU, dropout and the loss run as fused
  // kernels that keep their inputs in the compute dtype (no fp32 copies, no dropout noise: only a seed).
  bool fused_cpu_ops = true;
  // ops/attention.h blocked_cpu_attention_runs(): bf16 attention on this CPU runs the blocked kernel, which keeps
  // the mask as (T, 3) int32 intervals instead of SDPA's additive (B, 1, T, T) copy and converts no mask.
  bool blocked_cpu_attention = false;
  int64_t baseline_bytes = kDefaultCpuBaselineBytes;
  std::string device = "cpu";
};

struct PlanItem {
  std::string group;  // "frozen", "lora", "activations", "loss", "temporary", "process"
  std::string name;
  int64_t bytes = 0;
  std::string note;  // how it is counted
};

struct MemoryPlan {
  MemoryPlanInputs inputs;
  std::vector<PlanItem> items;  // every line that adds to total_bytes, in print order
  int64_t frozen_bytes = 0;     // frozen 4-bit + dense base tensors
  int64_t frozen_quantized_bytes = 0;
  int64_t frozen_dense_bytes = 0;
  int64_t quantized_params = 0;  // elements of the 4-bit projections
  int64_t lora_params = 0;
  int64_t lora_state_bytes = 0;  // weights + grads + Adam states (when on the device) + compute copies
  int64_t host_bytes = 0;        // offloaded to host memory, not in total_bytes (AdamW states on a GPU run)
  int64_t activation_bytes = 0;  // peak live activations of one micro-batch (the winning phase)
  std::string peak_phase;        // forward | loss | backward
  int64_t total_bytes = 0;
};

// The itemized plan (no weights read).
MemoryPlan plan_memory(const MemoryPlanInputs& in);

// The decoder-layer activation bytes autograd keeps for one layer and N tokens (no checkpointing).
int64_t layer_saved_activation_bytes(const MemoryPlanInputs& in);

// The plan as a table (one line per item, then the total and, with a budget, fits / does not fit).
std::string format_plan(const MemoryPlan& plan, std::optional<int64_t> budget_bytes = std::nullopt);

// Changes that bring the plan under `budget_bytes`, cheapest first: each a description and the new total.
struct PlanChange {
  std::string change;  // e.g. "--set model.gradient_checkpointing=true"
  int64_t total_bytes = 0;
};
std::vector<PlanChange> cheapest_changes(const MemoryPlan& plan, int64_t budget_bytes);

// PCIe rate and GPU rate the streaming summary uses (docs/layer-streaming.md): PCIe 4.0 x16 in practice, and a
// 24 GB card's sustained bf16 matmul rate with fp32 accumulation (RTX 4090 class: 82.6 TFLOP/s peak, ~50% of it).
constexpr double kStreamPcieBytesPerS = 25e9;
constexpr double kStreamGpuFlopsPerS = 40e12;

// Frozen decoder layers moved per optimizer micro-batch when layers are streamed from host memory (forward once,
// backward recompute + backward once: each layer copied in twice), and the bytes one layer occupies.
struct StreamingPlan {
  int64_t layer_bytes = 0;  // 4-bit parts (+ dense norms) of one decoder layer
  int64_t bytes_per_micro_batch = 0;
  int64_t device_bytes = 0;          // device-resident total with 2 layers in flight, layer inputs on the host
  int64_t host_bytes = 0;            // pinned host: all decoder layers + checkpointed layer inputs
  double flops_per_micro_batch = 0;  // plan/time_plan.h's FLOPs of B*T tokens, the recomputed forward included
};
StreamingPlan plan_streaming(const MemoryPlan& plan);

// "1.23 GiB" style.
std::string format_gib(int64_t bytes);
// Parses "24GiB", "24 GB", "512MiB", "1.5G" (G/GiB = 2^30, GB = 10^9). qlora::Error on anything else.
int64_t parse_byte_size(const std::string& text);

}  // namespace qlora::plan
