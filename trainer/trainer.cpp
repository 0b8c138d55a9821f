#include "trainer/trainer.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>

#include "common/atomic_file.h"
#include "common/caching_cpu_allocator.h"
#include "common/error.h"
#include "common/json_read.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/threads.h"
#include "data/data_loader.h"
#include "lora/lora_model.h"
#include "lora/peft_io.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "trainer/run_plan.h"
#include "trainer/trainer_impl.h"

namespace qlora::trainer {

namespace {

[[noreturn]] void config_error(const TrainConfig& cfg, int line, const std::string& key, const std::string& what,
                               const std::string& hint) {
  std::string msg = cfg.source_file + (line > 0 ? ":" + std::to_string(line) : "") + ": " + key + ": " + what;
  if (!hint.empty()) msg += "\nHINT: " + hint;
  throw Error(msg);
}

}  // namespace

Trainer::Trainer(TrainConfig config, TrainerOptions options)
    : cfg_(std::move(config)), opts_(std::move(options)), impl_(std::make_unique<Impl>()) {}

Trainer::~Trainer() {
  cleanup();
}

// ---------------------------------------------------------------------------------------------------------------
// setup

// torchtune's recipe shape: each step below sets up one part, in the order the run needs them (the seed is set
// just before the model so LoRA init and dropout match every earlier version bit for bit).
void Trainer::setup() {
  return_freed_tensor_memory_to_os();  // so the peak RSS is what the memory plan counts (trainer/run_plan.h)
  setup_runtime();
  setup_start_point();
  setup_data();
  setup_model();
  setup_optimizer();
  if (resume_from_) restore_checkpoint(*resume_from_);
  setup_outputs();
  log_setup();
}

// Threads, device, the model folder and the data-parallel group.
void Trainer::setup_runtime() {
  auto& I = *impl_;
  I.threads = configure_threads(cfg_.train.threads);
  I.device = torch::Device(cfg_.device);
  if (I.device.is_cuda()) {
    if (!torch::cuda::is_available()) {
      config_error(cfg_, 0, "device", "`" + cfg_.device + "` requested but this build/machine has no CUDA",
                   "set device: cpu, or build against a CUDA-enabled LibTorch");
    }
    I.cuda_device = I.device;
  }
  if (!fs::is_regular_file(cfg_.model.path / "config.json")) {
    config_error(cfg_, cfg_.model.path_line, "model.path", "no HF model folder at " + cfg_.model.path.string(),
                 "point model.path at a folder with config.json and *.safetensors (qlora-make-tiny makes one)");
  }
  I.env = dist::dist_env_from_environment();
  if (I.env.enabled()) {
    if (I.env.rank > 0) spdlog::set_level(spdlog::level::warn);  // rank 0 logs
    if (I.device.is_cuda() && cfg_.device == "cuda") I.device = torch::Device(torch::kCUDA, I.env.local_rank);
    if (I.device.is_cuda()) I.cuda_device = I.device;
    dist::DistOptions dopt;
    dopt.backend = cfg_.dist.backend;
    dopt.timeout = std::chrono::milliseconds(static_cast<int64_t>(cfg_.dist.timeout_s * 1000.0));
    I.dp = DataParallel(I.env, dopt);
  }
}

// The run's identity (config hash, base model fingerprint) and where it starts: decided before the expensive
// parts, so a refused resume or output costs nothing. Data parallel: rank 0 decides (and alone touches
// checkpoint.dir); every rank resumes from its choice.
void Trainer::setup_start_point() {
  auto& I = *impl_;
  I.config_hash = config_hash(cfg_);
  I.trajectory = trajectory_fields(cfg_);
  I.fingerprint = model_fingerprint(cfg_.model.path);
  I.effective_config = effective_config_yaml(cfg_);
  I.checkpoints = std::make_unique<CheckpointManager>(cfg_.checkpoint.dir, cfg_.checkpoint.keep);
  if (I.env.rank == 0) {
    I.checkpoints->lock();  // one run per checkpoint.dir, held until the run ends
    resolve_resume_point();
    check_output_dir();
    fs::create_directories(cfg_.checkpoint.dir);
    write_file_atomic(cfg_.checkpoint.dir / kEffectiveConfigFile, I.effective_config);
  }
  if (I.dp.enabled()) {
    const std::string from = I.dp.share_from_rank0("resume_from", resume_from_ ? resume_from_->string() : "");
    if (!from.empty()) resume_from_ = fs::path(from);
  }
}

// Tokenizer, train/eval loaders, the step budget and the learning-rate schedule.
void Trainer::setup_data() {
  auto& I = *impl_;
  I.tokenizer = tokenizer::load_tokenizer(cfg_.model.path);
  cfg_.data_config.chat_template =  // for data.template: auto
      std::make_shared<const data::ModelChatTemplate>(data::load_model_chat_template(cfg_.model.path));
  const int64_t max_epochs = cfg_.train.epochs > 0 ? cfg_.train.epochs : 0;  // 0 = loop for max_steps
  I.train_data.emplace(cfg_.data_config, *I.tokenizer, data::Split::kTrain, cfg_.train.micro_batch_size,
                       cfg_.train.seed, max_epochs);
  if (data::has_eval_split(cfg_.data_config)) {
    I.eval_data.emplace(cfg_.data_config, *I.tokenizer, data::Split::kEval, cfg_.train.micro_batch_size,
                        cfg_.train.seed, /*max_epochs=*/1);
  } else if (cfg_.eval.every > 0) {
    spdlog::warn("eval.every is set but the data has no eval split (data.eval / data.eval_fraction): no eval");
  }
  state_.total_steps = count_total_steps();
  I.schedule.kind = parse_schedule_kind(cfg_.train.schedule);
  I.schedule.base_lr = cfg_.train.lr;
  I.schedule.total_steps = state_.total_steps;
  I.schedule.warmup_steps = resolve_warmup_steps(cfg_.train.warmup_steps, cfg_.train.warmup_ratio, state_.total_steps);
}

// The memory plan (with the process's own resident memory as its baseline), then the frozen (4-bit) base and
// the LoRA adapters. The seed fixes LoRA init (per module) and dropout.
void Trainer::setup_model() {
  auto& I = *impl_;
  const plan::MemoryPlan plan = plan_run(cfg_, {}, static_cast<int64_t>(current_rss_bytes()));
  I.planned_peak_bytes = plan.total_bytes;
  spdlog::info("{}", plan::format_plan(plan));

  torch::manual_seed(cfg_.train.seed);
  model::LoadOptions lo = load_options(cfg_);
  lo.device = I.device;
  I.model = model::load_model(cfg_.model.path, lo);
  I.model->set_gradient_checkpointing(cfg_.model.gradient_checkpointing);
  I.adapters = lora::attach_lora(I.model, lora_config(cfg_), cfg_.train.seed);
  // Loading's temporaries (full-precision weights before quantization) are in no training phase: give their cached
  // blocks back so the tensor cache's bound is training's own peak (common/caching_cpu_allocator.h).
  const int64_t trimmed = trim_cpu_cache();
  if (trimmed > 0) spdlog::debug("tensor cache: {} of loading's freed blocks returned", format_bytes(double(trimmed)));
}

// AdamW over the adapter parameters only, fp32 states (trainer/optimizer.h); with optimizer_offload the states
// live in host memory and the update runs there.
void Trainer::setup_optimizer() {
  auto& I = *impl_;
  auto adam = torch::optim::AdamWOptions(cfg_.train.lr)
                  .betas({cfg_.train.adam_beta1, cfg_.train.adam_beta2})
                  .eps(cfg_.train.adam_eps)
                  .weight_decay(cfg_.train.weight_decay);
  I.optimizer = std::make_unique<AdapterAdamW>(
      I.adapters.adapter_parameters(), adam,
      cfg_.train.optimizer_offload ? std::optional<torch::Device>(torch::kCPU) : std::nullopt);
}

// Adapter weights, optimizer state, RNG state, data cursor and counters of checkpoint `ck`.
void Trainer::restore_checkpoint(const fs::path& ck) {
  auto& I = *impl_;
  const TrainerState saved = read_trainer_state(ck);
  load_adapter_weights(ck, I.adapters);
  load_optimizer_state(ck, *I.optimizer);
  load_rng_state(ck, I.cuda_device);
  I.train_data->restore(saved.data_state);
  const int64_t total = state_.total_steps;
  if (saved.total_steps != total) {
    spdlog::warn(
        "the run's step budget is now {} (the checkpoint was written with {}): train.max_steps changed, or "
        "(train.epochs) the data did; the learning-rate schedule follows the new budget",
        total, saved.total_steps);
  }
  state_ = saved;
  state_.total_steps = total;
  if (saved.threads != 0 && saved.threads != I.threads) {
    spdlog::warn(
        "the checkpoint was written with {} threads, this run uses {}: the result will not be bitwise "
        "identical to an uninterrupted run (set train.threads: {})",
        saved.threads, I.threads, saved.threads);
  }
  spdlog::info("resumed from {} at step {}/{}", ck.string(), state_.step, state_.total_steps);
}

// What checkpoints record about this run, the metrics file and TensorBoard events, and the ranks' common start.
void Trainer::setup_outputs() {
  auto& I = *impl_;
  state_.config_hash = I.config_hash;
  state_.trajectory = I.trajectory;
  state_.model_fingerprint = I.fingerprint;
  state_.threads = I.threads;
  state_.world_size = I.env.world_size;
  state_.lineage = resume_from_ ? continue_lineage(state_.lineage, state_.step) : start_lineage();

  I.metrics = MetricsWriter(I.env.rank == 0 ? cfg_.log.metrics : fs::path(),
                            resume_from_ ? std::optional<int64_t>(state_.step) : std::nullopt,
                            I.env.rank == 0 ? cfg_.log.tensorboard : fs::path());
  if (I.dp.enabled()) {
    I.dp.start(I.adapters.adapter_parameters(), cfg_.dist.bucket_mb);  // rank 0's adapter everywhere, buckets
    spdlog::info(
        "data parallel: {} ranks ({}), global batch {} rows = micro batch {} x grad accum {} x world size "
        "{}; rank r takes micro-batches r, r+{}, ... of the data stream",
        I.env.world_size, cfg_.dist.backend, cfg_.train.micro_batch_size * cfg_.train.grad_accum * I.env.world_size,
        cfg_.train.micro_batch_size, cfg_.train.grad_accum, I.env.world_size, I.env.world_size);
  }
}

void Trainer::log_setup() const {
  const auto& I = *impl_;
  const auto& mc = I.model->config();
  spdlog::info("model {}: {} layers, hidden {}, {} params, {} {}; LoRA r={} alpha={} on {} modules ({} trainable)",
               cfg_.model.path.string(), mc.num_hidden_layers, mc.hidden_size, num_model_parameters(),
               cfg_.model.quant_type, cfg_.model.compute_dtype, cfg_.lora.r, cfg_.lora.alpha, I.adapters.modules.size(),
               num_trainable_parameters());
  spdlog::info("training {} steps x {} micro-batches x {} rows (seq <= {}), lr {:.2e} {} (warmup {}), {} threads",
               state_.total_steps, cfg_.train.grad_accum, cfg_.train.micro_batch_size, cfg_.data_config.max_seq_len,
               cfg_.train.lr, cfg_.train.schedule, I.schedule.warmup_steps, I.threads);
}

void Trainer::resolve_resume_point() {
  auto& I = *impl_;
  I.checkpoints->remove_stale_temp_dirs();
  const std::string& mode = cfg_.checkpoint.resume;
  if (mode == "none") {
    if (!I.checkpoints->list().empty()) {
      if (!opts_.overwrite) {
        throw Error(cfg_.checkpoint.dir.string() +
                    ": holds checkpoints of an earlier run, and checkpoint.resume is "
                    "none\nHINT: set checkpoint.resume: auto to continue it, choose another checkpoint.dir, or pass "
                    "--overwrite to delete them and start over");
      }
      I.checkpoints->remove_all_checkpoints();
    }
    return;
  }
  if (mode == "auto") {
    resume_from_ = I.checkpoints->latest_verified();
  } else {
    const fs::path p = mode;
    if (!fs::is_regular_file(p / kTrainerStateFile)) {
      throw Error(cfg_.source_file + ": checkpoint.resume: " + p.string() +
                  " is not a complete checkpoint (no trainer_state.json)\nHINT: give a checkpoint-<step> directory, "
                  "auto or none");
    }
    verify_checkpoint(p);
    resume_from_ = p;
  }
  if (resume_from_) {
    const TrainerState saved = read_trainer_state(*resume_from_);
    check_resume_compatible(saved, I.config_hash, I.trajectory, I.fingerprint, *resume_from_, opts_.force_resume);
    check_resume_world_size(saved.world_size, I.env.world_size, *resume_from_, opts_.force_resume);
    if (saved.data_files) {  // carried on; after --force-resume, as the files are now
      I.data_files = opts_.force_resume ? redigest_data_files(*saved.data_files) : *saved.data_files;
    }
  }
}

void Trainer::check_output_dir() {
  output_overwrite_ = opts_.overwrite;
  if (!opts_.write_outputs || !fs::exists(cfg_.output_dir) || opts_.overwrite) return;
  // The final adapter of this same run (e.g. a finished run started again) may be replaced.
  const fs::path summary = cfg_.output_dir / kSummaryFile;
  if (fs::is_regular_file(summary)) {
    std::string why;
    const auto j = try_parse_json(read_file(summary), &why);
    if (j && j->is_object() && j->contains("config_hash") && j->at("config_hash") == impl_->config_hash) {
      output_overwrite_ = true;
      return;
    }
  }
  throw Error(cfg_.output_dir.string() +
              ": output_dir already exists (from another run)\nHINT: pass --overwrite to "
              "replace it, or set output_dir to a new folder");
}

int64_t Trainer::count_total_steps() {
  if (cfg_.train.max_steps > 0) return cfg_.train.max_steps;
  // Epochs: count the micro-batches of all epochs with a separate loader (tokenizes the data once per epoch).
  data::DataLoader counter(cfg_.data_config, *impl_->tokenizer, data::Split::kTrain, cfg_.train.micro_batch_size,
                           cfg_.train.seed, cfg_.train.epochs);
  Progress progress("counting batches", 0, "batches", 5.0);
  int64_t micro = 0;
  while (counter.next()) {
    ++micro;
    progress.advance();
  }
  if (micro == 0) throw Error(cfg_.source_file + ": data.train: the training split yields no examples");
  const int64_t per_step = cfg_.train.grad_accum * impl_->env.world_size;  // micro-batches per update, all ranks
  return (micro + per_step - 1) / per_step;
}

int64_t Trainer::num_trainable_parameters() const {
  return impl_->adapters.num_parameters();
}

int64_t Trainer::num_model_parameters() const {
  return impl_->model->config().num_parameters();
}

void Trainer::cleanup() {
  // Free the big parts in reverse order of creation (the model last).
  if (!impl_) return;
  impl_->optimizer.reset();
  impl_->adapters = {};
  impl_->model = nullptr;
}

TrainSummary run_training(const TrainConfig& config, const TrainerOptions& options) {
  Trainer trainer(config, options);
  trainer.setup();
  return trainer.train();
}

}  // namespace qlora::trainer
