// The schema table of the training config: one row per key (common/yaml_schema.h), in the order the effective
// config prints them. A row's `hash` is where it enters trajectory_fields / config_hash: those names and the
// hashed set are frozen (checkpoints of existing runs store the hash), so a new key is unhashed or
// hash_unless_default.
#include <limits>

#include "quant/quantized_tensor.h"
#include "trainer/config.h"

namespace qlora::trainer {

namespace {

using K = ConfigKey<TrainConfig>;
using T = TrainConfig;
constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

// Relative paths resolve against the working directory (not the config file's folder).
fs::path resolve(const fs::path& p) {
  return p.empty() ? p : fs::absolute(p).lexically_normal();
}

// A path member of a section, resolved when set.
template <class S>
Field<T> path_member(S T::*s, fs::path S::*m) {
  return {.get = [s, m](const T& c) { return YamlValue((c.*s.*m).string()); },
          .set = [s, m](T& c, const YamlValue& v) { c.*s.*m = resolve(std::get<std::string>(v)); }};
}

std::optional<KeyProblem> power_of_two(const YamlValue& v) {
  const int64_t n = std::get<int64_t>(v);
  if ((n & (n - 1)) == 0) return std::nullopt;
  return KeyProblem{"must be a power of two (got " + std::to_string(n) + ")",
                    "bitsandbytes uses 64 (default), 128, 256, ... 4096"};
}

std::optional<KeyProblem> known_device(const YamlValue& v) {
  const std::string& d = std::get<std::string>(v);
  if (d == "cpu" || d == "cuda" || d.rfind("cuda:", 0) == 0) return std::nullopt;
  return KeyProblem{"unknown device `" + d + "`", "use cpu, cuda or cuda:<index>"};
}

void read_data_section(const YamlMap& top, const std::string& key, T& c) {
  c.data.reset(top.get(key));
  c.data_config = data::parse_data_config(c.data, top.ctx());
}

// Size: one row per key of the model: and lora: sections (and the data: section as a whole).
void add_model_and_lora_keys(std::vector<K>& keys) {
  const auto add = [&keys](K key) { keys.push_back(std::move(key)); };
  add({.path = "model.path",
       .type = PathKey{},
       .help = "HF model folder: config.json, tokenizer and *.safetensors (16-bit or bnb-4bit)",
       .field = path_member(&T::model, &ModelSection::path),
       .required_hint = "set model.path to an HF model folder (config.json + safetensors)"});
  add({.path = "model.compute_dtype",
       .type = ChoiceKey{.options = {"auto", "bf16", "fp16", "fp32"},
                         .aliases = {{"bfloat16", "bf16"}, {"float16", "fp16"}, {"float32", "fp32"}}},
       .help = "dtype of activations and dequantized weights; auto: bf16 on CUDA and on CPUs that multiply bf16 "
               "natively (AVX-512, AMX), fp32 on other CPUs",
       .hash = "model.compute_dtype",
       .field = member(&T::model, &ModelSection::compute_dtype)});
  add({.path = "model.quant.type",
       .type = ChoiceKey{.options = quant::quant_option_names()},
       .help = "4-bit format of the frozen base projections, or none (dense); `quant: nf4` is short for this",
       .hash = "model.quant_type",
       .field = member(&T::model, &ModelSection::quant_type),
       .shorthand = true});
  add({.path = "model.quant.blocksize",
       .type = IntKey{.min = 32, .max = 4096},
       .help = "elements per absmax block (a power of two)",
       .hash = "model.blocksize",
       .field = member(&T::model, &ModelSection::quant_blocksize),
       .check = power_of_two});
  add({.path = "model.quant.double_quant",
       .type = BoolKey{},
       .help = "quantize the absmax constants too (8-bit, blocks of 256)",
       .hash = "model.double_quant",
       .field = member(&T::model, &ModelSection::double_quant)});
  add({.path = "model.gradient_checkpointing",
       .type = BoolKey{},
       .help = "recompute each decoder layer in the backward instead of keeping its activations",
       .field = member(&T::model, &ModelSection::gradient_checkpointing)});
  add({.path = "model.plan_config",
       .type = PathKey{},
       .help = "config.json that --plan reads while model.path holds no weights yet (configs/models/)",
       .field = path_member(&T::model, &ModelSection::plan_config),
       .emit_if = [](const T& c) { return !c.model.plan_config.empty(); }});
  add({.path = "lora.r",
       .type = IntKey{.min = 1, .max = 65536},
       .help = "adapter rank",
       .hash = "lora.r",
       .field = member(&T::lora, &LoraSection::r)});
  add({.path = "lora.alpha",
       .type = RealKey{.min = 0.0, .max = 1e6, .min_open = true},
       .help = "scale: the update is (alpha / r) * B A (alpha / sqrt(r) with rslora)",
       .hash = "lora.alpha",
       .field = member(&T::lora, &LoraSection::alpha)});
  add({.path = "lora.dropout",
       .type = RealKey{.min = 0.0, .max = 1.0, .max_open = true},
       .help = "dropout on the adapter input",
       .hash = "lora.dropout",
       .field = member(&T::lora, &LoraSection::dropout)});
  add({.path = "lora.targets",
       .type = ListKey{.expected = "`all-linear` or a list of module names",
                       .empty_hint = "use all-linear or e.g. [q_proj, v_proj]"},
       .help = "adapted modules: all-linear, or module-name suffixes such as [q_proj, v_proj]",
       .hash = "lora.targets",
       .field = member(&T::lora, &LoraSection::targets)});
  add({.path = "lora.rslora",
       .type = BoolKey{},
       .help = "rank-stabilized scaling alpha / sqrt(r)",
       .hash = "lora.rslora",
       .field = member(&T::lora, &LoraSection::rslora)});
  add({.path = "lora.dtype",
       .type = ChoiceKey{.options = {"fp32", "bf16"}, .aliases = {{"float32", "fp32"}, {"bfloat16", "bf16"}}},
       .help = "storage dtype of the adapter weights and their gradients",
       .hash = "lora.dtype",
       .field = member(&T::lora, &LoraSection::dtype),
       .hash_unless_default = true});
  add({.path = "data",
       .type = MappingKey{.expected = "the data section (the data.* keys below)"},
       .help = "where the examples come from and how they become rows (data/data_config.h); hashed as written",
       .hash = "data",
       .field = member(&T::data),
       .parse = read_data_section,
       .required_hint = "set at least data.train: <file.jsonl>"});
}

// Size: one row per key of the train: section; the table is the section's definition.
void add_train_keys(std::vector<K>& keys) {
  const auto add = [&keys](K key) { keys.push_back(std::move(key)); };
  using S = TrainSection;
  const RealKey unit_open_end{.min = 0.0, .max = 1.0, .max_open = true};
  add({.path = "train.seed",
       .type = IntKey{.min = 0, .max = kMax},
       .help = "seeds LoRA init (per module), dropout and data order",
       .hash = "train.seed",
       .field = member(&T::train, &S::seed)});
  add({.path = "train.max_steps",
       .type = IntKey{.min = 1, .max = kMax},
       .help = "optimizer steps to train; exactly one of max_steps / epochs",
       .hash = "train.max_steps",
       .field = member(&T::train, &S::max_steps),
       .default_doc = "(none: give max_steps or epochs)",
       .emit_if = [](const T& c) { return c.train.max_steps > 0; }});
  add({.path = "train.epochs",
       .type = IntKey{.min = 1, .max = 1000000},
       .help = "passes over data.train; exactly one of max_steps / epochs",
       .hash = "train.epochs",
       .field = member(&T::train, &S::epochs),
       .default_doc = "(none: give max_steps or epochs)",
       .emit_if = [](const T& c) { return c.train.epochs > 0; },
       .exclusive_with = "max_steps"});
  add({.path = "train.micro_batch_size",
       .type = IntKey{.min = 1, .max = 1 << 20},
       .help = "rows per forward/backward",
       .hash = "train.micro_batch_size",
       .field = member(&T::train, &S::micro_batch_size)});
  add({.path = "train.grad_accum",
       .type = IntKey{.min = 1, .max = 1 << 20},
       .help = "micro-batches per optimizer step",
       .hash = "train.grad_accum",
       .field = member(&T::train, &S::grad_accum)});
  add({.path = "train.lr",
       .type = RealKey{.min = 0.0, .max = 10.0, .min_open = true},
       .help = "peak learning rate",
       .hash = "train.lr",
       .field = member(&T::train, &S::lr)});
  add({.path = "train.schedule",
       .type = ChoiceKey{.options = {"constant", "linear", "cosine"}},
       .help = "learning-rate schedule after warmup",
       .hash = "train.schedule",
       .field = member(&T::train, &S::schedule)});
  add({.path = "train.warmup_steps",
       .type = IntKey{.min = 0, .max = kMax},
       .help = "linear warmup steps; not with warmup_ratio",
       .hash = "train.warmup_steps",
       .field = member(&T::train, &S::warmup_steps),
       .emit_if = [](const T& c) { return c.train.warmup_ratio <= 0; }});
  add({.path = "train.warmup_ratio",
       .type = unit_open_end,
       .help = "warmup as a fraction of the total steps (rounded up); not with warmup_steps",
       .hash = "train.warmup_ratio",
       .field = member(&T::train, &S::warmup_ratio),
       .emit_if = [](const T& c) { return c.train.warmup_ratio > 0; },
       .exclusive_with = "warmup_steps"});
  add({.path = "train.weight_decay",
       .type = RealKey{.min = 0.0, .max = 10.0},
       .help = "AdamW decoupled weight decay",
       .hash = "train.weight_decay",
       .field = member(&T::train, &S::weight_decay)});
  add({.path = "train.max_grad_norm",
       .type = RealKey{.min = 0.0, .max = 1e9},
       .help = "clip the global gradient norm to this; 0 disables clipping",
       .hash = "train.max_grad_norm",
       .field = member(&T::train, &S::max_grad_norm)});
  add({.path = "train.optimizer",
       .type = ChoiceKey{.options = {"adamw"}, .aliases = {{"adamw_torch", "adamw"}}},
       .help = "optimizer over the adapter parameters",
       .hash = "train.optimizer",
       .field = member(&T::train, &S::optimizer)});
  add({.path = "train.optimizer_offload",
       .type = BoolKey{},
       .help = "AdamW states in host memory, updated there (trainer/optimizer.h)",
       .field = member(&T::train, &S::optimizer_offload)});
  add({.path = "train.adam_beta1",
       .type = unit_open_end,
       .help = "AdamW beta1",
       .hash = "train.betas",
       .field = member(&T::train, &S::adam_beta1)});
  add({.path = "train.adam_beta2",
       .type = unit_open_end,
       .help = "AdamW beta2",
       .hash = "train.betas",
       .field = member(&T::train, &S::adam_beta2)});
  add({.path = "train.adam_eps",
       .type = RealKey{.min = 0.0, .max = 1.0, .min_open = true},
       .help = "AdamW epsilon",
       .hash = "train.eps",
       .field = member(&T::train, &S::adam_eps)});
  add({.path = "train.threads",
       .type = IntKey{.min = 0, .max = 4096},
       .help = "CPU threads; 0 = all cores",
       .field = member(&T::train, &S::threads)});
  add({.path = "train.max_nonfinite_steps",
       .type = IntKey{.min = 1, .max = kMax},
       .help = "stop (after a checkpoint) after this many non-finite steps in a row",
       .field = member(&T::train, &S::max_nonfinite_steps)});
  add({.path = "train.loss_chunk_tokens",
       .type = IntKey{.min = 1, .max = kMax},
       .help = "logits are computed this many tokens at a time",
       .hash = "train.loss_chunk_tokens",
       .field = member(&T::train, &S::loss_chunk_tokens)});
}

// Size: one row per key of the sections that do not change the trajectory; the table is their definition.
void add_run_keys(std::vector<K>& keys) {
  const auto add = [&keys](K key) { keys.push_back(std::move(key)); };
  add({.path = "eval.every",
       .type = IntKey{.min = 0, .max = kMax},
       .help = "optimizer steps between evaluations; 0 = only at the end",
       .field = member(&T::eval, &EvalSection::every)});
  add({.path = "eval.max_batches",
       .type = IntKey{.min = 0, .max = kMax},
       .help = "batches per evaluation; 0 = the whole eval split",
       .field = member(&T::eval, &EvalSection::max_batches)});
  add({.path = "eval.at_end",
       .type = BoolKey{},
       .help = "evaluate once more after the last step",
       .field = member(&T::eval, &EvalSection::at_end)});
  add({.path = "eval.keep_best",
       .type = BoolKey{},
       .help = "keep the adapter of the lowest eval loss; written to <output_dir>/best/ at the end",
       .field = member(&T::eval, &EvalSection::keep_best)});
  add({.path = "eval.early_stopping_patience",
       .type = IntKey{.min = 0, .max = kMax},
       .help = "stop after this many evaluations in a row without improvement; 0 = never (needs eval.every)",
       .field = member(&T::eval, &EvalSection::early_stopping_patience)});
  add({.path = "eval.early_stopping_threshold",
       .type = RealKey{.min = 0.0, .max = 1e9},
       .help = "an evaluation improves when its loss is below the best by more than this",
       .field = member(&T::eval, &EvalSection::early_stopping_threshold)});
  add({.path = "checkpoint.dir",
       .type = PathKey{},
       .help = "holds the checkpoint-N/ directories",
       .field = path_member(&T::checkpoint, &CheckpointSection::dir),
       .default_doc = "runs/<config file name without .yaml>",
       .default_from = [](T& c) {
         const std::string stem = fs::path(c.source_file).stem().string();
         c.checkpoint.dir = resolve("runs/" + (stem.empty() ? std::string("run") : stem));
       }});
  add({.path = "checkpoint.every",
       .type = IntKey{.min = 0, .max = kMax},
       .help = "optimizer steps between checkpoints; 0 = only when stopped by a signal",
       .field = member(&T::checkpoint, &CheckpointSection::every)});
  add({.path = "checkpoint.keep",
       .type = IntKey{.min = 0, .max = kMax},
       .help = "keep the newest K checkpoints of this run's lineage (others in the folder are left alone); "
               "0 = keep all",
       .field = member(&T::checkpoint, &CheckpointSection::keep)});
  add({.path = "checkpoint.resume",
       .type = TextKey{},
       .help = "auto (the newest compatible checkpoint), none, or the path of a checkpoint-N directory",
       .field = {.get = [](const T& c) { return YamlValue(c.checkpoint.resume); },
                 .set =
                     [](T& c, const YamlValue& v) {
                       const std::string& s = std::get<std::string>(v);
                       c.checkpoint.resume = s == "auto" || s == "none" ? s : resolve(s).string();
                     }}});
  add({.path = "output_dir",
       .type = PathKey{},
       .help = "the final adapter (PEFT layout)",
       .field = {.get = [](const T& c) { return YamlValue(c.output_dir.string()); },
                 .set = [](T& c, const YamlValue& v) { c.output_dir = resolve(std::get<std::string>(v)); }},
       .default_doc = "<checkpoint.dir>/final",
       .default_from = [](T& c) { c.output_dir = resolve(c.checkpoint.dir / "final"); }});
  add({.path = "log.every",
       .type = IntKey{.min = 1, .max = kMax},
       .help = "optimizer steps between progress lines and metrics records",
       .field = member(&T::log, &LogSection::every)});
  add({.path = "log.metrics",
       .type = PathKey{},
       .help = "metrics file (JSON lines)",
       .field = path_member(&T::log, &LogSection::metrics),
       .default_doc = "<checkpoint.dir>/metrics.jsonl",
       .default_from = [](T& c) { c.log.metrics = resolve(c.checkpoint.dir / "metrics.jsonl"); }});
  add({.path = "log.tensorboard",
       .type = TextKey{},
       .help = "TensorBoard events folder (the metrics.jsonl scalars; `tensorboard --logdir runs`), or off",
       .field = {
           .get = [](const T& c) { return YamlValue(c.log.tensorboard.empty() ? "off" : c.log.tensorboard.string()); },
           .set =
               [](T& c, const YamlValue& v) {
                 const std::string& s = std::get<std::string>(v);
                 c.log.tensorboard = s == "off" ? fs::path() : resolve(s);
               }},
       .default_doc = "<checkpoint.dir>/tensorboard",
       .default_from = [](T& c) { c.log.tensorboard = resolve(c.checkpoint.dir / "tensorboard"); }});
  add({.path = "device",
       .type = TextKey{},
       .help = "cpu, cuda or cuda:N",
       .field = member(&T::device),
       .check = known_device});
  add({.path = "dist.backend",
       .type = ChoiceKey{.options = {"gloo", "nccl"}},
       .help = "data-parallel collectives (trainer/dist/distributed.h)",
       .field = member(&T::dist, &DistSection::backend),
       .default_doc = "gloo on cpu, nccl on cuda",
       .default_from = [](T& c) { c.dist.backend = c.device == "cpu" ? "gloo" : "nccl"; }});
  add({.path = "dist.timeout_s",
       .type = RealKey{.min = 0.0, .max = 86400.0, .min_open = true},
       .help = "a collective waiting longer than this fails, naming the unresponsive rank",
       .field = member(&T::dist, &DistSection::timeout_s)});
  add({.path = "dist.bucket_mb",
       .type = RealKey{.min = 0.0, .max = 4096.0, .min_open = true},
       .help = "adapter gradients are all-reduced in flat buckets of about this size",
       .field = member(&T::dist, &DistSection::bucket_mb)});
}

}  // namespace

const std::vector<ConfigKey<TrainConfig>>& train_config_keys() {
  static const std::vector<K> keys = [] {
    std::vector<K> all;
    add_model_and_lora_keys(all);
    add_train_keys(all);
    add_run_keys(all);
    return all;
  }();
  return keys;
}

std::string config_reference_markdown() {
  std::string md =
      "# Training config keys\n\n"
      "Generated from the schema tables (`trainer/config_schema.cpp`, `data/data_config.cpp`) by\n"
      "`qlora-train --help-config`; a test fails when this file is out of date. Configs are YAML\n"
      "(`configs/tiny.yaml` is a complete example); any key can be overridden with `--set key.path=value`.\n"
      "`hash`: whether the key enters the run's config hash, which a checkpoint must match to resume.\n\n"
      "## model, lora, train, eval, checkpoint, log, dist\n\n";
  md += keys_markdown(train_config_keys());
  md += "\n## data\n\nThe whole `data:` section enters the hash as written.\n\n";
  md += keys_markdown(data::data_config_keys());
  return md;
}

}  // namespace qlora::trainer
