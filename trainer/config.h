// The training run configuration: one YAML file (configs/<name>.yaml) parsed into plain structs and validated,
// with `--set key.path=value` overrides applied to the YAML tree before validation (so a type error in an
// override names its key just like one in the file).
//
// Each key is one row of a schema table (train_config_keys() here, data::data_config_keys() for `data:`;
// common/yaml_schema.h): parsing, unknown keys with "did you mean", --print-config, the run hash and the key
// reference docs/config.md (`qlora-train --help-config`) are all derived from it. Defaults are the member
// initializers below.
//
// Every user-facing problem is a qlora::Error of the form
//   "<file>:<line>: <key.path>: <what>\nHINT: <how to fix>"
// (or "<file>: <key.path> (from --set ...): <what>" for overridden keys), the `data:` section included.
#pragma once

#include <torch/types.h>
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/yaml_schema.h"
#include "data/data_config.h"
#include "lora/lora_model.h"
#include "model/llama.h"

namespace qlora::trainer {

namespace fs = std::filesystem;

struct ModelSection {
  fs::path path;                       // HF model folder (absolute after loading)
  std::string compute_dtype = "auto";  // auto | bf16 | fp16 | fp32; auto is resolved by parse_config (never left)
  std::string quant_type = "nf4";      // nf4 | fp4 | none (quant::parse_quant_option)
  int64_t quant_blocksize = 64;
  bool double_quant = true;
  bool gradient_checkpointing = true;
  // config.json that `--plan` reads while model.path holds no weights yet (e.g. configs/models/<model>.json);
  // planning only: the run itself always reads model.path/config.json. Empty: none.
  fs::path plan_config;
  int path_line = 0;  // line of model.path in the file (for later errors)

  torch::ScalarType dtype() const;  // compute_dtype as a torch dtype
};

struct LoraSection {
  int64_t r = 16;
  double alpha = 32.0;
  double dropout = 0.05;
  std::vector<std::string> targets = {"all-linear"};  // "all-linear" or module-name suffixes
  bool rslora = false;
  std::string dtype = "fp32";  // storage dtype of the adapter weights and gradients: fp32 | bf16

  torch::ScalarType torch_dtype() const;  // dtype as a torch dtype
};

struct TrainSection {
  uint64_t seed = 42;
  int64_t max_steps = 0;  // optimizer steps; exactly one of max_steps / epochs is > 0
  int64_t epochs = 0;
  int64_t micro_batch_size = 4;
  int64_t grad_accum = 1;
  double lr = 2e-4;
  std::string schedule = "cosine";  // constant | linear | cosine
  int64_t warmup_steps = 0;
  double warmup_ratio = 0.0;  // used when warmup_steps is not given: ceil(ratio * total steps)
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;  // 0 disables clipping
  std::string optimizer = "adamw";
  bool optimizer_offload = false;  // AdamW states in host memory, updated there (trainer/optimizer.h)
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_eps = 1e-8;
  int threads = 0;                   // 0 = all cores
  int64_t max_nonfinite_steps = 5;   // stop after this many non-finite steps in a row
  int64_t loss_chunk_tokens = 1024;  // logits are computed this many tokens at a time
};

struct EvalSection {
  int64_t every = 0;        // optimizer steps between evaluations; 0 = only at the end
  int64_t max_batches = 0;  // 0 = the whole eval split
  bool at_end = true;       // evaluate once more after the last step
  // The adapter of the lowest eval loss so far is kept (in <checkpoint.dir>/best/ while training) and written to
  // <output_dir>/best/ at the end (HF's load_best_model_at_end, keeping the last adapter as the main output).
  bool keep_best = false;
  // Stop after this many evaluations in a row without an improvement of more than early_stopping_threshold
  // (HF's EarlyStoppingCallback); 0 = never. Needs eval.every.
  int64_t early_stopping_patience = 0;
  double early_stopping_threshold = 0.0;
};

struct CheckpointSection {
  fs::path dir;                 // holds checkpoint-<step>/ directories
  int64_t every = 0;            // 0 = only when stopped by a signal
  int64_t keep = 3;             // keep the newest K; 0 = keep all
  std::string resume = "auto";  // auto | none | <path to a checkpoint-<step> dir>
};

struct LogSection {
  int64_t every = 10;
  fs::path metrics;  // metrics.jsonl; empty = <checkpoint.dir>/metrics.jsonl
  // TensorBoard events folder (trainer/tensorboard.h); `off` in the config (empty here) writes none.
  fs::path tensorboard;
};

// Data-parallel runs (trainer/dist/distributed.h); ignored by a single process. Not part of the trajectory hash.
struct DistSection {
  std::string backend;       // gloo | nccl; empty = by device (cpu: gloo, cuda: nccl)
  double timeout_s = 300.0;  // a collective waiting longer than this fails, naming the unresponsive rank
  double bucket_mb = 25.0;   // adapter gradients are all-reduced in flat buckets of about this size
};

struct TrainConfig {
  std::string source_file;  // the YAML file, as given
  ModelSection model;
  LoraSection lora;
  YAML::Node data;               // the `data:` node as written (after overrides)
  data::DataConfig data_config;  // ... as parsed by data::parse_data_config
  TrainSection train;
  EvalSection eval;
  CheckpointSection checkpoint;
  fs::path output_dir;  // final adapter
  LogSection log;
  std::string device = "cpu";  // cpu | cuda | cuda:N
  DistSection dist;
  YAML::Node tree;                     // the YAML tree after overrides (what was validated)
  std::vector<std::string> overrides;  // the --set strings, in order
};

// Applies `key.path=value` strings to a YAML tree. The value is parsed as YAML (so `1e-4`, `true`,
// `[q_proj, v_proj]` and `{r: 8}` work); intermediate maps are created. Malformed strings throw qlora::Error.
void apply_overrides(YAML::Node& root, const std::vector<std::string>& overrides);

// Loads `file`, applies overrides, validates, and resolves relative paths against the working directory.
TrainConfig load_config(const fs::path& file, const std::vector<std::string>& overrides = {});
// Same from YAML text (`source_name` is used in messages); paths are resolved the same way.
TrainConfig parse_config(const std::string& yaml_text, const std::string& source_name,
                         const std::vector<std::string>& overrides = {});

// The whole effective configuration (defaults filled in) as YAML text.
std::string effective_config_yaml(const TrainConfig& cfg);

// Hex digest of the fields that change the training trajectory (model numerics, LoRA, data, optimizer,
// schedule, seed, batch geometry, step budget). Logging, eval, checkpoint and output settings are left out,
// so changing them keeps checkpoints resumable.
std::string config_hash(const TrainConfig& cfg);
// The fields config_hash digests, as JSON (stored in checkpoints so a mismatch can say what changed).
nlohmann::json trajectory_fields(const TrainConfig& cfg);
// "train.lr: 0.0002 -> 0.0001; lora.r: 16 -> 32" for two trajectory_fields objects.
std::string describe_field_changes(const nlohmann::json& before, const nlohmann::json& after);

// What the sections yield, each built in this one place: the loader's options for the frozen base (device left
// at CPU for the caller to set) and the adapters to attach (Trainer::setup, the memory plan, bench_layer).
model::LoadOptions load_options(const TrainConfig& cfg);
lora::LoraConfig lora_config(const TrainConfig& cfg);

// The schema table (trainer/config_schema.cpp): one row per key of every section but `data:`'s own keys.
const std::vector<ConfigKey<TrainConfig>>& train_config_keys();
// The key reference in Markdown, every section's table (docs/config.md is this text; a test keeps it current).
std::string config_reference_markdown();

}  // namespace qlora::trainer
