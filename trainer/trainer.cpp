#include "trainer/trainer.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <limits>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/labels.h"
#include "common/log.h"
#include "common/progress.h"
#include "common/threads.h"
#include "data/data_loader.h"
#include "lora/lora_model.h"
#include "lora/peft_io.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"
#include "trainer/dist/distributed.h"
#include "trainer/optimizer.h"
#include "trainer/run_plan.h"

namespace qlora::trainer {

namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kSummaryFile = "training_summary.json";

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Labels that count in the causal-LM loss: positions 1..T-1 (position t's logits predict label t+1).
int64_t count_loss_tokens(const torch::Tensor& labels) {
  if (labels.size(1) < 2) return 0;
  return (labels.narrow(1, 1, labels.size(1) - 1) != kIgnoreIndex).sum().item<int64_t>();
}

[[noreturn]] void config_error(const TrainConfig& cfg, int line, const std::string& key, const std::string& what,
                               const std::string& hint) {
  std::string msg = cfg.source_file + (line > 0 ? ":" + std::to_string(line) : "") + ": " + key + ": " + what;
  if (!hint.empty()) msg += "\nHINT: " + hint;
  throw Error(msg);
}

}  // namespace

struct Trainer::Impl {
  torch::Device device = torch::kCPU;
  std::optional<torch::Device> cuda_device;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  std::optional<data::DataLoader> train_data;
  std::optional<data::DataLoader> eval_data;
  model::LlamaModel model{nullptr};
  lora::LoraAdapters adapters;
  std::unique_ptr<AdapterAdamW> optimizer;
  std::unique_ptr<CheckpointManager> checkpoints;
  MetricsWriter metrics;
  LrSchedule schedule;
  std::string config_hash;
  nlohmann::json trajectory;
  std::string fingerprint;
  std::string effective_config;
  int threads = 0;
  // Data parallel (trainer/dist/distributed.h); world_size 1 and no group for a single process.
  dist::DistEnv env;
  std::unique_ptr<dist::DistGroup> dist;
  std::unique_ptr<dist::GradientReducer> reducer;  // declared after dist: destroyed first
  bool stop_agreed = false;                  // some rank saw a stop signal (agreed in the last update's all-reduce)
  double allreduce_s = 0.0;                  // time blocked in the gradient + loss all-reduces, this process
  int64_t planned_peak_bytes = 0;            // the memory plan's total (trainer/run_plan.h)
};

namespace {

// Rank r > 0 reseeds its LoRA-dropout generator per update from (seed, rank, step): its stream differs from the
// other ranks' and needs no saved state to resume exactly (rank 0 keeps the checkpointed generator).
uint64_t rank_step_seed(uint64_t seed, int rank, int64_t step) {
  uint64_t x = seed ^ (0x9E3779B97F4A7C15ULL * static_cast<uint64_t>(rank)) ^ (0xBF58476D1CE4E5B9ULL * step);
  x ^= x >> 31;
  return x * 0x94D049BB133111EBULL;
}

}  // namespace

Trainer::Trainer(TrainConfig config, TrainerOptions options)
    : cfg_(std::move(config)), opts_(std::move(options)), impl_(std::make_unique<Impl>()) {}

Trainer::~Trainer() {
  cleanup();
}

// ---------------------------------------------------------------------------------------------------------------
// setup

void Trainer::setup() {
  auto& I = *impl_;
  return_freed_tensor_memory_to_os();  // so the peak RSS is what the memory plan counts (trainer/run_plan.h)
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
    I.dist = std::make_unique<dist::DistGroup>(I.env, dopt);
  }
  I.config_hash = config_hash(cfg_);
  I.trajectory = trajectory_fields(cfg_);
  I.fingerprint = model_fingerprint(cfg_.model.path);
  I.effective_config = effective_config_yaml(cfg_);
  I.checkpoints = std::make_unique<CheckpointManager>(cfg_.checkpoint.dir, cfg_.checkpoint.keep);

  // Decide where we start before the expensive parts, so a refused resume or output costs nothing. Data
  // parallel: rank 0 decides (and alone touches checkpoint.dir); every rank resumes from its choice.
  if (I.env.rank == 0) {
    resolve_resume_point();
    check_output_dir();
    fs::create_directories(cfg_.checkpoint.dir);
    write_file_atomic(cfg_.checkpoint.dir / kEffectiveConfigFile, I.effective_config);
  }
  if (I.dist) {
    const std::string from = I.dist->share_from_rank0("resume_from", resume_from_ ? resume_from_->string() : "");
    if (!from.empty()) resume_from_ = fs::path(from);
  }

  // Data.
  I.tokenizer = tokenizer::load_tokenizer(cfg_.model.path);
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

  // The memory plan, with the process's own resident memory before the model as its baseline.
  {
    const plan::MemoryPlan plan = plan_run(cfg_, {}, static_cast<int64_t>(current_rss_bytes()));
    I.planned_peak_bytes = plan.total_bytes;
    spdlog::info("{}", plan::format_plan(plan));
  }

  // Model: frozen (4-bit) base, then LoRA. The seed fixes LoRA init (per module) and dropout.
  torch::manual_seed(cfg_.train.seed);
  model::LoadOptions lo;
  lo.compute_dtype = cfg_.model.dtype();
  if (cfg_.model.quant_type == "none") {
    lo.quant = std::nullopt;
  } else {
    lo.quant = quant::parse_quant_type(cfg_.model.quant_type);
  }
  lo.blocksize = cfg_.model.quant_blocksize;
  lo.double_quant = cfg_.model.double_quant;
  lo.device = I.device;
  I.model = model::load_model(cfg_.model.path, lo);
  I.model->set_gradient_checkpointing(cfg_.model.gradient_checkpointing);

  I.adapters = lora::attach_lora(I.model, lora_config(cfg_), cfg_.train.seed);

  // AdamW over the adapter parameters only, fp32 states (trainer/optimizer.h); with optimizer_offload the states
  // live in host memory and the update runs there.
  auto adam = torch::optim::AdamWOptions(cfg_.train.lr)
                  .betas({cfg_.train.adam_beta1, cfg_.train.adam_beta2})
                  .eps(cfg_.train.adam_eps)
                  .weight_decay(cfg_.train.weight_decay);
  I.optimizer = std::make_unique<AdapterAdamW>(
      I.adapters.adapter_parameters(), adam,
      cfg_.train.optimizer_offload ? std::optional<torch::Device>(torch::kCPU) : std::nullopt);

  if (resume_from_) {
    const fs::path& ck = *resume_from_;
    const TrainerState saved = read_trainer_state(ck);
    load_adapter_weights(ck, I.adapters);
    load_optimizer_state(ck, *I.optimizer);
    load_rng_state(ck, I.cuda_device);
    I.train_data->restore(saved.data_state);
    const int64_t total = state_.total_steps;
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
  state_.config_hash = I.config_hash;
  state_.trajectory = I.trajectory;
  state_.model_fingerprint = I.fingerprint;
  state_.threads = I.threads;
  state_.world_size = I.env.world_size;

  I.metrics = MetricsWriter(I.env.rank == 0 ? cfg_.log.metrics : fs::path(),
                            resume_from_ ? std::optional<int64_t>(state_.step) : std::nullopt);
  if (I.dist) {
    // Every rank starts from rank 0's adapter (equal by construction; this makes it so whatever happened).
    I.dist->broadcast(I.adapters.adapter_parameters(), /*root=*/0, "broadcast of the initial adapter");
    I.reducer = std::make_unique<dist::GradientReducer>(*I.dist, I.adapters.adapter_parameters(), cfg_.dist.bucket_mb);
    spdlog::info(
        "data parallel: {} ranks ({}), global batch {} rows = micro batch {} x grad accum {} x world size "
        "{}; rank r takes micro-batches r, r+{}, ... of the data stream",
        I.env.world_size, cfg_.dist.backend, cfg_.train.micro_batch_size * cfg_.train.grad_accum * I.env.world_size,
        cfg_.train.micro_batch_size, cfg_.train.grad_accum, I.env.world_size, I.env.world_size);
  }

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
    resume_from_ = I.checkpoints->latest();
  } else {
    const fs::path p = mode;
    if (!fs::is_regular_file(p / kTrainerStateFile)) {
      throw Error(cfg_.source_file + ": checkpoint.resume: " + p.string() +
                  " is not a complete checkpoint (no trainer_state.json)\nHINT: give a checkpoint-<step> directory, "
                  "auto or none");
    }
    resume_from_ = p;
  }
  if (resume_from_) {
    const TrainerState saved = read_trainer_state(*resume_from_);
    check_resume_compatible(saved, I.config_hash, I.trajectory, I.fingerprint, *resume_from_, opts_.force_resume);
    check_resume_world_size(saved.world_size, I.env.world_size, *resume_from_, opts_.force_resume);
  }
}

void Trainer::check_output_dir() {
  output_overwrite_ = opts_.overwrite;
  if (!opts_.write_outputs || !fs::exists(cfg_.output_dir) || opts_.overwrite) return;
  // The final adapter of this same run (e.g. a finished run started again) may be replaced.
  const fs::path summary = cfg_.output_dir / kSummaryFile;
  if (fs::is_regular_file(summary)) {
    try {
      auto j = nlohmann::json::parse(read_file(summary));
      if (j.value("config_hash", "") == impl_->config_hash) {
        output_overwrite_ = true;
        return;
      }
    } catch (const nlohmann::json::exception&) {
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

// ---------------------------------------------------------------------------------------------------------------
// train

EvalResult Trainer::evaluate() {
  auto& I = *impl_;
  EvalResult r;
  if (!I.eval_data) return r;
  torch::NoGradGuard no_grad;
  I.model->eval();
  I.eval_data->reset();
  double loss_sum = 0.0;
  // Data parallel: rank r evaluates batches r, r+W, ...; the sums are all-reduced.
  while (cfg_.eval.max_batches == 0 || r.batches < cfg_.eval.max_batches) {
    auto batch = I.eval_data->next();
    if (!batch) break;
    if (r.batches++ % I.env.world_size != I.env.rank) continue;
    model::ForwardInputs in{batch->attention_mask.to(I.device), batch->position_ids.to(I.device),
                            batch->segment_ids.to(I.device)};
    auto [sum, n] = I.model->causal_lm_loss(batch->input_ids.to(I.device), batch->labels.to(I.device), in,
                                            cfg_.train.loss_chunk_tokens);
    loss_sum += sum.item<double>();
    r.label_tokens += n;
  }
  if (I.dist) {
    auto sums = torch::tensor({loss_sum, static_cast<double>(r.label_tokens)}, torch::kDouble);
    I.dist->all_reduce_sum({sums}, "eval all-reduce at step " + std::to_string(state_.step));
    loss_sum = sums[0].item<double>();
    r.label_tokens = static_cast<int64_t>(sums[1].item<double>());
  }
  I.model->train();
  r.loss = r.label_tokens > 0 ? loss_sum / static_cast<double>(r.label_tokens) : std::nan("");
  r.perplexity = std::exp(r.loss);
  return r;
}

fs::path Trainer::save_checkpoint() {
  auto& I = *impl_;
  state_.data_state = I.train_data->state();
  // Rank 0 writes; every rank's cursor is the same (all read the whole stream), so its checkpoint is everyone's.
  if (I.env.rank != 0) return CheckpointManager::checkpoint_path(cfg_.checkpoint.dir, state_.step);
  CheckpointContents c;
  c.adapters = &I.adapters;
  c.optimizer = I.optimizer.get();
  c.effective_config = I.effective_config;
  c.base_model = cfg_.model.path.string();
  c.cuda_device = I.cuda_device;
  const auto t0 = Clock::now();
  fs::path p = I.checkpoints->save(state_, c);
  spdlog::info("saved checkpoint {} ({:.1f}s)", p.string(), seconds_since(t0));
  return p;
}

TrainSummary Trainer::train() {
  auto& I = *impl_;
  TORCH_CHECK(I.optimizer, "Trainer::train() before setup()");
  const auto& tc = cfg_.train;
  const std::vector<torch::Tensor> params = I.adapters.adapter_parameters();
  const double clip = tc.max_grad_norm > 0 ? tc.max_grad_norm : std::numeric_limits<double>::infinity();

  TrainSummary summary;
  summary.start_step = state_.step;
  summary.total_steps = state_.total_steps;
  summary.checkpoint_dir = cfg_.checkpoint.dir;
  summary.metrics_file = cfg_.log.metrics;

  const auto t_start = Clock::now();
  const double elapsed_before = state_.elapsed_s;
  auto window_start = t_start;
  int64_t window_tokens = 0;
  double first_step_s = 0.0;
  int64_t first_step_tokens = 0;
  int64_t last_checkpoint_step = -1;
  std::optional<double> last_eval;

  I.model->train();
  if (state_.step >= state_.total_steps) spdlog::info("the run is already complete at step {}", state_.step);
  while (state_.step < state_.total_steps) {
    const bool stop_signal = I.dist ? I.stop_agreed : stop_requested();
    if (stop_signal || (opts_.stop_after_steps > 0 && state_.step >= opts_.stop_after_steps)) {
      const fs::path p = save_checkpoint();
      throw Interrupted("stopped at step " + std::to_string(state_.step) + "/" + std::to_string(state_.total_steps) +
                        (stop_signal ? " on a signal" : "") + "; checkpoint saved to " + p.string() +
                        "; run the same command again to resume");
    }

    // 1. Gather the micro-batches of this update and count their label tokens.
    const auto t_step = Clock::now();
    // Data parallel: every rank reads the update's grad_accum x W micro-batches (so all count the same label
    // tokens and keep the same cursor) and trains on micro-batches rank, rank+W, ...
    std::vector<data::Batch> micro;
    int64_t label_tokens = 0, tokens = 0, global_micro = 0;
    for (int64_t i = 0; i < tc.grad_accum * I.env.world_size; ++i) {
      auto b = I.train_data->next();
      if (!b) break;
      label_tokens += count_loss_tokens(b->labels);
      tokens += b->num_tokens;
      ++global_micro;
      if (i % I.env.world_size == I.env.rank) micro.push_back(std::move(*b));
    }
    if (global_micro == 0) {
      spdlog::warn("the training data ran out at step {} of {}", state_.step, state_.total_steps);
      break;
    }

    // 2. Forward/backward each micro-batch with loss = sum / (label tokens of the whole update).
    const double lr = lr_at(I.schedule, state_.step);
    for (auto& group : I.optimizer->param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    }
    I.optimizer->zero_grad();
    if (I.dist && I.env.rank > 0) torch::manual_seed(rank_step_seed(tc.seed, I.env.rank, state_.step));
    double loss_sum = 0.0;
    for (const auto& b : micro) {
      if (label_tokens == 0) break;
      if (I.reducer && &b == &micro.back()) I.reducer->arm();  // its backward launches the bucket all-reduces
      model::ForwardInputs in{b.attention_mask.to(I.device), b.position_ids.to(I.device), b.segment_ids.to(I.device)};
      auto [sum, n] =
          I.model->causal_lm_loss(b.input_ids.to(I.device), b.labels.to(I.device), in, tc.loss_chunk_tokens);
      (sum / static_cast<double>(label_tokens)).backward();
      loss_sum += sum.item<double>();
    }
    if (I.dist) {
      // Gradients: sum over ranks (each rank's loss is already divided by the update's global label count).
      const auto t_comm = Clock::now();
      I.reducer->finish("gradient all-reduce of step " + std::to_string(state_.step + 1));
      auto sums = torch::tensor({loss_sum, stop_requested() ? 1.0 : 0.0}, torch::kDouble);
      I.dist->all_reduce_sum({sums}, "loss all-reduce of step " + std::to_string(state_.step + 1));
      loss_sum = sums[0].item<double>();
      I.stop_agreed = sums[1].item<double>() > 0.0;
      I.allreduce_s += seconds_since(t_comm);
    }
    const double loss = label_tokens > 0 ? loss_sum / static_cast<double>(label_tokens) : std::nan("");

    // 3. Clip, check, update.
    const double grad_norm = clip_grad_norm_fp32(params, clip);
    const bool finite = std::isfinite(loss) && std::isfinite(grad_norm);
    if (finite) {
      I.optimizer->step();
      state_.nonfinite_in_row = 0;
    } else {
      I.optimizer->zero_grad();
      ++state_.nonfinite_in_row;
      ++state_.nonfinite_total;
      spdlog::warn("step {}: non-finite {} (loss {}, grad norm {}): update skipped ({} in a row)", state_.step + 1,
                   std::isfinite(loss) ? "gradient" : "loss", loss, grad_norm, state_.nonfinite_in_row);
    }
    ++state_.step;
    state_.tokens_seen += tokens;
    state_.label_tokens_seen += label_tokens;
    state_.last_loss = loss;
    summary.tokens_this_run += tokens;
    window_tokens += tokens;
    if (state_.step == summary.start_step + 1) {
      first_step_s = seconds_since(t_step);
      first_step_tokens = tokens;
      summary.first_loss = loss;
    }
    state_.elapsed_s = elapsed_before + seconds_since(t_start);

    if (state_.nonfinite_in_row >= tc.max_nonfinite_steps) {
      const fs::path p = save_checkpoint();
      throw Error("training diverged: " + std::to_string(state_.nonfinite_in_row) +
                  " non-finite steps in a row (train.max_nonfinite_steps) at step " + std::to_string(state_.step) +
                  "; state saved to " + p.string() +
                  "\nHINT: lower train.lr, set train.max_grad_norm (e.g. 0.3), or use compute_dtype bf16/fp32 "
                  "instead of fp16");
    }

    // 4. Eval, log, checkpoint.
    std::optional<double> eval_loss;
    if (I.eval_data && cfg_.eval.every > 0 && state_.step % cfg_.eval.every == 0) {
      EvalResult ev = evaluate();
      eval_loss = ev.loss;
      last_eval = ev.loss;
    }
    const bool last = state_.step == state_.total_steps;
    if (state_.step % cfg_.log.every == 0 || last || eval_loss || opts_.on_step) {
      StepMetrics m;
      m.step = state_.step;
      m.total_steps = state_.total_steps;
      m.loss = loss;
      m.lr = lr;
      m.grad_norm = grad_norm;
      m.tokens = state_.tokens_seen;
      const double window_s = seconds_since(window_start);
      m.tokens_per_s = window_s > 0 ? static_cast<double>(window_tokens) / window_s : 0.0;
      m.elapsed_s = state_.elapsed_s;
      const int64_t done_here = state_.step - summary.start_step;
      m.eta_s = seconds_since(t_start) / static_cast<double>(done_here) *
                static_cast<double>(state_.total_steps - state_.step);
      m.rss_bytes = current_rss_bytes();
      m.eval_loss = eval_loss;
      m.skipped = !finite;
      if (state_.step % cfg_.log.every == 0 || last || eval_loss) {
        spdlog::info("{}", format_progress_line(m));
        I.metrics.write(metrics_record(m));
        window_start = Clock::now();
        window_tokens = 0;
      }
      if (opts_.on_step) opts_.on_step(m);
    }
    if (cfg_.checkpoint.every > 0 && state_.step % cfg_.checkpoint.every == 0) {
      save_checkpoint();
      last_checkpoint_step = state_.step;
    }
  }

  // Final eval and checkpoint, then the summary.
  if (I.eval_data && cfg_.eval.at_end && state_.step > summary.start_step &&
      !(cfg_.eval.every > 0 && state_.step % cfg_.eval.every == 0)) {
    EvalResult ev = evaluate();
    last_eval = ev.loss;
    spdlog::info("eval at step {}: loss {:.4f}, perplexity {:.2f} ({} tokens)", state_.step, ev.loss, ev.perplexity,
                 ev.label_tokens);
    nlohmann::json rec = {
        {"step", state_.step}, {"eval_loss", ev.loss}, {"eval_ppl", ev.perplexity}, {"elapsed", state_.elapsed_s}};
    I.metrics.write(rec);
  }
  if (cfg_.checkpoint.every > 0 && last_checkpoint_step != state_.step && state_.step > summary.start_step) {
    save_checkpoint();
  }

  summary.steps = state_.step;
  summary.tokens = state_.tokens_seen;
  summary.wall_s = seconds_since(t_start);
  summary.tokens_per_s = summary.wall_s > 0 ? static_cast<double>(summary.tokens_this_run) / summary.wall_s : 0.0;
  const double steady_s = summary.wall_s - first_step_s;
  const int64_t steady_tokens = summary.tokens_this_run - first_step_tokens;
  summary.steady_tokens_per_s =
      steady_s > 0 && steady_tokens > 0 ? static_cast<double>(steady_tokens) / steady_s : summary.tokens_per_s;
  summary.peak_rss_bytes = peak_rss_bytes();
  summary.planned_peak_bytes = I.planned_peak_bytes;
  summary.final_loss = state_.last_loss;
  summary.final_eval_loss = last_eval;
  summary.nonfinite_steps = state_.nonfinite_total;
  const int64_t steps_here = state_.step - summary.start_step;
  summary.allreduce_s_per_step = steps_here > 0 ? I.allreduce_s / static_cast<double>(steps_here) : 0.0;
  if (opts_.write_outputs && I.env.rank == 0) write_final_outputs(summary);

  spdlog::info("done: {} steps, {} tokens in {} ({:.0f} tok/s), peak RSS {}", summary.steps, summary.tokens_this_run,
               format_duration(summary.wall_s), summary.tokens_per_s, format_bytes(double(summary.peak_rss_bytes)));
  {
    // The plan counts live bytes; compare it with what the device's allocator reports (CUDA) or the process's
    // peak RSS (CPU), and say why they may differ.
    const auto device_peak = device_peak_allocated_bytes(I.device);
    const double measured = device_peak ? double(*device_peak) : double(summary.peak_rss_bytes);
    const double planned = double(summary.planned_peak_bytes);
    std::string why;
    if (I.device.is_cuda() && !device_peak) {
      why = "; host RSS: this build has no CUDA allocator statistics (QLORA_CUDA=OFF)";
    } else if (!I.device.is_cuda() && !rss_tuning_requested()) {
      why = "; glibc keeps freed memory for reuse (faster here); QLORA_MALLOC_TUNING=rss returns it at once";
    }
    spdlog::info("memory: measured peak {} {} vs planned {} ({:+.1f}%{})",
                 device_peak ? "CUDA allocated" : (I.device.is_cuda() ? "RSS (host)" : "RSS"), format_bytes(measured),
                 format_bytes(planned), planned > 0 ? 100.0 * (measured / planned - 1.0) : 0.0, why);
  }
  spdlog::info("loss {:.4f} -> {:.4f}{}", summary.first_loss, summary.final_loss,
               last_eval ? fmt::format(", eval loss {:.4f} (ppl {:.2f})", *last_eval, std::exp(*last_eval)) : "");
  if (!summary.adapter_dir.empty()) spdlog::info("adapter:     {}", summary.adapter_dir.string());
  spdlog::info("checkpoints: {}", summary.checkpoint_dir.string());
  if (I.metrics.enabled()) spdlog::info("metrics:     {}", summary.metrics_file.string());
  if (I.dist) {
    spdlog::info("data parallel: {} ranks, all-reduce {:.1f} ms per step on rank 0 (time blocked after the backward)",
                 I.env.world_size, summary.allreduce_s_per_step * 1e3);
  }
  return summary;
}

void Trainer::write_final_outputs(TrainSummary& summary) {
  auto& I = *impl_;
  nlohmann::json j = {
      {"config_hash", I.config_hash},
      {"config_file", cfg_.source_file},
      {"base_model", cfg_.model.path.string()},
      {"steps", summary.steps},
      {"total_steps", summary.total_steps},
      {"resumed_from_step", summary.start_step},
      {"tokens", summary.tokens},
      {"label_tokens", state_.label_tokens_seen},
      {"wall_s_this_process", summary.wall_s},
      {"train_time_s", state_.elapsed_s},
      {"tokens_per_s", summary.tokens_per_s},
      {"peak_rss_bytes", summary.peak_rss_bytes},
      {"planned_peak_bytes", summary.planned_peak_bytes},
      {"final_train_loss", std::isfinite(summary.final_loss) ? nlohmann::json(summary.final_loss) : nlohmann::json()},
      {"nonfinite_steps", summary.nonfinite_steps},
      {"trainable_parameters", num_trainable_parameters()},
      {"threads", I.threads},
      {"checkpoint_dir", cfg_.checkpoint.dir.string()},
      {"metrics", cfg_.log.metrics.string()}};
  if (summary.final_eval_loss) {
    j["final_eval_loss"] = *summary.final_eval_loss;
    j["final_eval_ppl"] = std::exp(*summary.final_eval_loss);
  }
  AtomicDir out(cfg_.output_dir, output_overwrite_);
  lora::SaveAdapterOptions so;
  so.base_model_name_or_path = cfg_.model.path.string();
  lora::write_adapter_files(out.path(), I.adapters, so);
  write_file_atomic(out.path() / kEffectiveConfigFile, I.effective_config);
  write_file_atomic(out.path() / kSummaryFile, j.dump(2) + "\n");
  out.commit();
  summary.adapter_dir = cfg_.output_dir;
  write_file_atomic(cfg_.checkpoint.dir / kSummaryFile, j.dump(2) + "\n");
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
