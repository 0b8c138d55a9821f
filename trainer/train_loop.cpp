// Trainer::train(): the recipe's loop, top to bottom (setup is in trainer.cpp; the loss math is at the top of
// trainer.h). Each update:
//
//   stop_if_requested()     SIGINT/SIGTERM (agreed by all ranks) or --stop-after-steps: checkpoint, Interrupted
//   next_update()           grad_accum x world_size micro-batches from the stream, their label tokens
//   train_step()            forward/backward of this rank's micro-batches, gradient all-reduce, clip, AdamW
//   count_step()            counters and clocks; stop_if_diverged() after max_nonfinite_steps skipped in a row
//   maybe_evaluate(), log_step(), maybe_checkpoint()
//
// then the final eval and checkpoint, the loss plot, the summary, and (rank 0) the final adapter. Data parallel hides
// behind Impl::dp (trainer/data_parallel.h), which does nothing for a single process. On a terminal (rank 0) a
// progress bar moves with every micro-batch (common/progress.h); the step lines are logged above it.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>

#include "common/atomic_file.h"
#include "common/caching_cpu_allocator.h"
#include "common/error.h"
#include "common/labels.h"
#include "common/log.h"
#include "common/progress.h"
#include "lora/peft_io.h"
#include "trainer/loss_plot.h"
#include "trainer/run_plan.h"
#include "trainer/trainer_impl.h"

namespace qlora::trainer {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Labels that count in the causal-LM loss: positions 1..T-1 (position t's logits predict label t+1).
int64_t count_loss_tokens(const torch::Tensor& labels) {
  if (labels.size(1) < 2) return 0;
  return (labels.narrow(1, 1, labels.size(1) - 1) != kIgnoreIndex).sum().item<int64_t>();
}

// Summed token loss of one micro-batch (input_ids, labels: (B, T)) and the number of label tokens in it.
std::pair<torch::Tensor, int64_t> batch_loss(model::LlamaModelImpl& model, const data::Batch& b, torch::Device device,
                                             int64_t chunk_tokens) {
  model::ForwardInputs in{b.attention_mask.to(device), b.position_ids.to(device), b.segment_ids.to(device)};
  return model.causal_lm_loss(b.input_ids.to(device), b.labels.to(device), in, chunk_tokens);
}

// The loss plot beside metrics.jsonl (trainer/loss_plot.h).
fs::path loss_plot_path(const TrainConfig& cfg) {
  return cfg.log.metrics.parent_path() / kLossPlotFile;
}

}  // namespace

struct Trainer::Update {
  Clock::time_point started;                    // the update's wall time includes reading its batches
  std::vector<data::Batch> micro;               // this rank's micro-batches
  int64_t micro_batches = 0;                    // read from the stream for all ranks; 0: the data ran out
  int64_t tokens = 0;                           // non-padding tokens of all ranks' micro-batches
  int64_t label_tokens = 0;                     // loss tokens of all ranks' micro-batches: each loss is divided by this
  std::function<void(int64_t)> on_micro_batch;  // after each of this rank's micro-batches (the progress bar)
};

struct Trainer::StepResult {
  double loss = 0.0;       // mean token loss of the update (NaN without label tokens)
  double lr = 0.0;         // the learning rate it used
  double grad_norm = 0.0;  // global L2 norm of the adapter gradients before clipping
  bool finite = true;      // false: skipped (non-finite loss or gradient norm), no update
};

struct Trainer::LoopState {
  int64_t start_step = 0;       // state_.step when this process started (> 0: resumed)
  double elapsed_before = 0.0;  // training time of the run's earlier segments
  Clock::time_point start = Clock::now();
  int64_t tokens = 0;                      // tokens fed forward by this process
  double first_loss = 0.0;                 // this process's first update, and its time (warm-up: left out of
  double first_step_s = 0.0;               // the steady throughput) ...
  int64_t first_step_tokens = 0;           // ... and tokens
  Clock::time_point window_start = start;  // throughput of the progress line: since the last logged step
  int64_t window_tokens = 0;
  std::optional<double> last_eval_loss;
  int64_t last_checkpoint_step = -1;
  std::optional<Progress> bar;  // rank 0 on a terminal: steps, moving with each micro-batch

  // The bar at `st.step` updates plus `micro_done` of the current update's `micro_total` micro-batches (this
  // process's throughput counts `tokens_done` of them), the last loss, and what else the loop is doing (`note`).
  void show(const TrainerState& st, double tokens_done, int64_t micro_done, int64_t micro_total,
            const std::string& note = "") {
    if (!bar) return;
    const double s = seconds_since(start);
    std::string extra = st.step < st.total_steps
                            ? fmt::format("step {} micro-batch {}/{} | ", st.step + 1, micro_done, micro_total)
                            : std::string();
    extra += fmt::format("{:.0f} tok/s", s > 0 ? (static_cast<double>(tokens) + tokens_done) / s : 0.0);
    if (st.step > start_step && std::isfinite(st.last_loss)) extra += fmt::format(" | loss {:.4f}", st.last_loss);
    if (!note.empty()) extra += " | " + note;
    const double frac = micro_total > 0 ? static_cast<double>(micro_done) / static_cast<double>(micro_total) : 0.0;
    if (note.empty()) {
      bar->set(static_cast<double>(st.step) + frac, extra);
    } else {
      bar->set_now(static_cast<double>(st.step) + frac, extra);  // a new phase shows at once
    }
  }
};

TrainSummary Trainer::train() {
  TORCH_CHECK(impl_->optimizer, "Trainer::train() before setup()");
  LoopState loop;
  loop.start_step = state_.step;
  loop.elapsed_before = state_.elapsed_s;

  impl_->model->train();
  if (state_.stopped_early) {
    spdlog::info("the run already stopped early at step {} of {} (eval.early_stopping_patience)", state_.step,
                 state_.total_steps);
  } else if (state_.step >= state_.total_steps) {
    spdlog::info("the run is already complete at step {}", state_.step);
  }
  if (cfg_.eval.keep_best && impl_->dp.rank() == 0) clean_best_dir(cfg_.checkpoint.dir, loop.start_step == 0);
  if (impl_->dp.rank() == 0 && progress_mode() == ProgressMode::kBar && state_.step < state_.total_steps) {
    loop.bar.emplace("train", static_cast<double>(state_.total_steps), "steps");
    loop.bar->start_at(static_cast<double>(state_.step));
  }
  const int64_t micro_total = cfg_.train.grad_accum;  // this rank's micro-batches per update
  while (state_.step < state_.total_steps && !state_.stopped_early) {
    stop_if_requested();
    loop.show(state_, 0, 0, micro_total);
    Update update = next_update();
    if (update.micro_batches == 0) {
      spdlog::warn("the training data ran out at step {} of {}", state_.step, state_.total_steps);
      break;
    }
    update.on_micro_batch = [&](int64_t done) {
      const double share = static_cast<double>(done) / static_cast<double>(std::max<size_t>(update.micro.size(), 1));
      loop.show(state_, share * static_cast<double>(update.tokens), done, micro_total);
    };
    const StepResult result = train_step(update);
    count_step(update, result, loop);
    stop_if_diverged();
    const std::optional<double> eval_loss = maybe_evaluate(loop);
    log_step(result, eval_loss, loop);
    maybe_checkpoint(loop);
  }
  evaluate_and_checkpoint_at_end(loop);
  if (loop.bar) loop.bar->finish();
  if (impl_->metrics.enabled()) {  // rank 0
    write_loss_plot(cfg_.log.metrics, loss_plot_path(cfg_), cfg_.checkpoint.dir.filename().string() + ": loss");
  }

  TrainSummary summary = summarize(loop);
  if (opts_.write_outputs && impl_->dp.rank() == 0) write_final_outputs(summary);
  log_summary(summary);
  return summary;
}

void Trainer::stop_if_requested() {
  const bool signal = impl_->dp.stop_requested();
  if (!signal && !(opts_.stop_after_steps > 0 && state_.step >= opts_.stop_after_steps)) return;
  const fs::path p = save_checkpoint();
  throw Interrupted("stopped at step " + std::to_string(state_.step) + "/" + std::to_string(state_.total_steps) +
                    (signal ? " on a signal" : "") + "; checkpoint saved to " + p.string() +
                    "; run the same command again to resume");
}

// Every rank reads the update's grad_accum x world_size micro-batches (so all count the same label tokens and
// keep the same cursor) and keeps its own: rank, rank + world_size, ...
Trainer::Update Trainer::next_update() {
  Update u;
  u.started = Clock::now();
  for (int64_t i = 0; i < cfg_.train.grad_accum * impl_->dp.world_size(); ++i) {
    auto b = impl_->train_data->next();
    if (!b) break;
    u.label_tokens += count_loss_tokens(b->labels);
    u.tokens += b->num_tokens;
    ++u.micro_batches;
    if (impl_->dp.owns(i)) u.micro.push_back(std::move(*b));
  }
  return u;
}

// One optimizer update. Each micro-batch backpropagates sum_loss / (label tokens of the whole update), the
// gradients are summed over ranks, clipped to train.max_grad_norm, and AdamW steps, unless the loss or the
// gradient norm is not finite: then the gradients are dropped and the step only counts as skipped.
Trainer::StepResult Trainer::train_step(const Update& u) {
  StepResult r;
  r.lr = lr_at(impl_->schedule, state_.step);
  for (auto& group : impl_->optimizer->param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(r.lr);
  }
  impl_->optimizer->zero_grad();
  impl_->dp.seed_update(cfg_.train.seed, state_.step);
  double loss_sum = 0.0;
  int64_t done = 0;
  for (const auto& b : u.micro) {
    if (u.label_tokens == 0) break;
    if (&b == &u.micro.back()) impl_->dp.before_last_backward();
    auto [sum, n] = batch_loss(*impl_->model, b, impl_->device, cfg_.train.loss_chunk_tokens);
    (sum / static_cast<double>(u.label_tokens)).backward();
    loss_sum += sum.item<double>();
    // bf16 adapters: the following micro-batches accumulate into fp32 gradients.
    if (&b == &u.micro.front() && u.micro.size() > 1) promote_grads_to_fp32(impl_->adapters.adapter_parameters());
    if (u.on_micro_batch) u.on_micro_batch(++done);
  }
  loss_sum = impl_->dp.reduce_update(loss_sum, state_.step + 1);
  r.loss = u.label_tokens > 0 ? loss_sum / static_cast<double>(u.label_tokens) : std::nan("");

  const double clip = cfg_.train.max_grad_norm > 0 ? cfg_.train.max_grad_norm : std::numeric_limits<double>::infinity();
  r.grad_norm = clip_grad_norm_fp32(impl_->adapters.adapter_parameters(), clip);
  r.finite = std::isfinite(r.loss) && std::isfinite(r.grad_norm);
  if (r.finite) {
    impl_->optimizer->step();
    state_.nonfinite_in_row = 0;
  } else {
    impl_->optimizer->zero_grad();
    ++state_.nonfinite_in_row;
    ++state_.nonfinite_total;
    spdlog::warn("step {}: non-finite {} (loss {}, grad norm {}): update skipped ({} in a row)", state_.step + 1,
                 std::isfinite(r.loss) ? "gradient" : "loss", r.loss, r.grad_norm, state_.nonfinite_in_row);
  }
  return r;
}

void Trainer::count_step(const Update& u, const StepResult& r, LoopState& loop) {
  ++state_.step;
  state_.tokens_seen += u.tokens;
  state_.label_tokens_seen += u.label_tokens;
  state_.last_loss = r.loss;
  loop.tokens += u.tokens;
  loop.window_tokens += u.tokens;
  if (state_.step == loop.start_step + 1) {
    loop.first_step_s = seconds_since(u.started);
    loop.first_step_tokens = u.tokens;
    loop.first_loss = r.loss;
  }
  state_.elapsed_s = loop.elapsed_before + seconds_since(loop.start);
}

void Trainer::stop_if_diverged() {
  if (state_.nonfinite_in_row < cfg_.train.max_nonfinite_steps) return;
  const fs::path p = save_checkpoint();
  throw Error("training diverged: " + std::to_string(state_.nonfinite_in_row) +
              " non-finite steps in a row (train.max_nonfinite_steps) at step " + std::to_string(state_.step) +
              "; state saved to " + p.string() +
              "\nHINT: lower train.lr, set train.max_grad_norm (e.g. 0.3), or use compute_dtype bf16/fp32 "
              "instead of fp16");
}

std::optional<double> Trainer::maybe_evaluate(LoopState& loop) {
  if (!impl_->eval_data || cfg_.eval.every <= 0 || state_.step % cfg_.eval.every != 0) return std::nullopt;
  loop.show(state_, 0, 0, cfg_.train.grad_accum, "evaluating");
  loop.last_eval_loss = evaluate().mean_loss();
  track_best(*loop.last_eval_loss);
  return loop.last_eval_loss;
}

// The progress line and a metrics.jsonl record every log.every steps, at the last step and with an eval; the
// on_step callback after every step.
void Trainer::log_step(const StepResult& r, std::optional<double> eval_loss, LoopState& loop) {
  const bool logged = state_.step % cfg_.log.every == 0 || state_.step == state_.total_steps || eval_loss;
  if (!logged && !opts_.on_step) return;
  StepMetrics m;
  m.step = state_.step;
  m.total_steps = state_.total_steps;
  m.loss = r.loss;
  m.lr = r.lr;
  m.grad_norm = r.grad_norm;
  m.tokens = state_.tokens_seen;
  const double window_s = seconds_since(loop.window_start);
  m.tokens_per_s = window_s > 0 ? static_cast<double>(loop.window_tokens) / window_s : 0.0;
  m.elapsed_s = state_.elapsed_s;
  const int64_t done_here = state_.step - loop.start_step;
  m.eta_s = seconds_since(loop.start) / static_cast<double>(done_here) *
            static_cast<double>(state_.total_steps - state_.step);
  m.rss_bytes = current_rss_bytes();
  m.device_peak_bytes = device_peak_allocated_bytes(impl_->device);
  m.eval_loss = eval_loss;
  m.skipped = !r.finite;
  if (logged) {
    spdlog::info("{}", format_progress_line(m));
    impl_->metrics.write(metrics_record(m));
    loop.window_start = Clock::now();
    loop.window_tokens = 0;
  }
  if (opts_.on_step) opts_.on_step(m);
}

void Trainer::maybe_checkpoint(LoopState& loop) {
  if (cfg_.checkpoint.every <= 0 || state_.step % cfg_.checkpoint.every != 0) return;
  loop.show(state_, 0, 0, cfg_.train.grad_accum, "saving a checkpoint");
  save_checkpoint();
  loop.last_checkpoint_step = state_.step;
}

// After the loop, when this process trained: the final eval unless the last step had one (eval.at_end), and a
// checkpoint unless the last step wrote one.
void Trainer::evaluate_and_checkpoint_at_end(LoopState& loop) {
  const bool trained = state_.step > loop.start_step;
  if (impl_->eval_data && cfg_.eval.at_end && trained && !(cfg_.eval.every > 0 && state_.step % cfg_.eval.every == 0)) {
    loop.show(state_, 0, 0, cfg_.train.grad_accum, "evaluating");
    const model::EvalResult ev = evaluate();
    loop.last_eval_loss = ev.mean_loss();
    track_best(ev.mean_loss());
    spdlog::info("eval at step {}: loss {:.4f}, perplexity {:.2f} ({} tokens)", state_.step, ev.mean_loss(),
                 ev.perplexity(), ev.tokens);
    nlohmann::json rec = {{"step", state_.step},
                          {"eval_loss", ev.mean_loss()},
                          {"eval_ppl", ev.perplexity()},
                          {"elapsed", state_.elapsed_s}};
    impl_->metrics.write(rec);
  }
  if (cfg_.checkpoint.every > 0 && loop.last_checkpoint_step != state_.step && trained) save_checkpoint();
}

model::EvalResult Trainer::evaluate() {
  model::EvalResult r;
  if (!impl_->eval_data) return r;
  torch::NoGradGuard no_grad;
  impl_->model->eval();
  impl_->eval_data->reset();
  // Data parallel: rank r evaluates batches r, r + world_size, ...; the sums are all-reduced.
  for (int64_t i = 0; cfg_.eval.max_batches == 0 || i < cfg_.eval.max_batches; ++i) {
    auto batch = impl_->eval_data->next();
    if (!batch) break;
    if (!impl_->dp.owns(i)) continue;
    auto [sum, n] = batch_loss(*impl_->model, *batch, impl_->device, cfg_.train.loss_chunk_tokens);
    r.loss_sum += sum.item<double>();
    r.tokens += n;
  }
  impl_->dp.reduce_eval(r.loss_sum, r.tokens, state_.step);
  impl_->model->train();
  return r;
}

fs::path Trainer::save_checkpoint() {
  state_.data_state = impl_->train_data->state();
  // Rank 0 writes; every rank's cursor is the same (all read the whole stream), so its checkpoint is everyone's.
  if (impl_->dp.rank() != 0) return CheckpointManager::checkpoint_path(cfg_.checkpoint.dir, state_.step);
  merge_data_reads(impl_->data_files, impl_->train_data->files(), impl_->train_data->read_digests());
  if (impl_->eval_data)
    merge_data_reads(impl_->data_files, impl_->eval_data->files(), impl_->eval_data->read_digests());
  state_.data_files = impl_->data_files;
  CheckpointContents c;
  c.adapters = &impl_->adapters;
  c.optimizer = impl_->optimizer.get();
  c.effective_config = impl_->effective_config;
  c.base_model = cfg_.model.path.string();
  c.cuda_device = impl_->cuda_device;
  const auto t0 = Clock::now();
  fs::path p = impl_->checkpoints->save(state_, c, opts_.after_checkpoint_file);
  spdlog::info("saved checkpoint {} ({:.1f}s)", p.string(), seconds_since(t0));
  return p;
}

TrainSummary Trainer::summarize(const LoopState& loop) const {
  TrainSummary s;
  s.start_step = loop.start_step;
  s.steps = state_.step;
  s.total_steps = state_.total_steps;
  s.tokens = state_.tokens_seen;
  s.tokens_this_run = loop.tokens;
  s.wall_s = seconds_since(loop.start);
  s.tokens_per_s = s.wall_s > 0 ? static_cast<double>(s.tokens_this_run) / s.wall_s : 0.0;
  const double steady_s = s.wall_s - loop.first_step_s;
  const int64_t steady_tokens = s.tokens_this_run - loop.first_step_tokens;
  s.steady_tokens_per_s =
      steady_s > 0 && steady_tokens > 0 ? static_cast<double>(steady_tokens) / steady_s : s.tokens_per_s;
  s.peak_rss_bytes = peak_rss_bytes();
  s.planned_peak_bytes = impl_->planned_peak_bytes;
  s.first_loss = loop.first_loss;
  s.final_loss = state_.last_loss;
  s.final_eval_loss = loop.last_eval_loss;
  if (state_.best_step >= 0) {
    s.best_eval_loss = state_.best_eval_loss;
    s.best_step = state_.best_step;
  }
  s.stopped_early = state_.stopped_early;
  s.nonfinite_steps = state_.nonfinite_total;
  const int64_t steps_here = state_.step - loop.start_step;
  s.allreduce_s_per_step = steps_here > 0 ? impl_->dp.allreduce_seconds() / static_cast<double>(steps_here) : 0.0;
  s.checkpoint_dir = cfg_.checkpoint.dir;
  s.metrics_file = cfg_.log.metrics;
  return s;
}

void Trainer::write_final_outputs(TrainSummary& summary) {
  nlohmann::json j = {
      {"config_hash", impl_->config_hash},
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
      {"threads", impl_->threads},
      {"checkpoint_dir", cfg_.checkpoint.dir.string()},
      {"metrics", cfg_.log.metrics.string()}};
  if (summary.final_eval_loss) {
    j["final_eval_loss"] = *summary.final_eval_loss;
    j["final_eval_ppl"] = std::exp(*summary.final_eval_loss);
  }
  AtomicDir out(cfg_.output_dir, output_overwrite_);
  write_best_outputs(out.path(), summary);
  if (summary.best_eval_loss) {
    j["best_eval_loss"] = *summary.best_eval_loss;
    j["best_step"] = summary.best_step;
    if (!summary.best_adapter_dir.empty()) j["best_adapter_dir"] = summary.best_adapter_dir.string();
  }
  if (summary.stopped_early) j["stopped_early"] = true;
  lora::SaveAdapterOptions so;
  so.base_model_name_or_path = cfg_.model.path.string();
  lora::write_adapter_files(out.path(), impl_->adapters, so);
  write_file_atomic(out.path() / kEffectiveConfigFile, impl_->effective_config);
  write_file_atomic(out.path() / kSummaryFile, j.dump(2) + "\n");
  if (fs::is_regular_file(loss_plot_path(cfg_))) fs::copy_file(loss_plot_path(cfg_), out.path() / kLossPlotFile);
  out.commit();
  summary.adapter_dir = cfg_.output_dir;
  write_file_atomic(cfg_.checkpoint.dir / kSummaryFile, j.dump(2) + "\n");
}

void Trainer::log_summary(const TrainSummary& summary) const {
  spdlog::info("done: {} steps, {} tokens in {} ({:.0f} tok/s), peak RSS {}", summary.steps, summary.tokens_this_run,
               format_duration(summary.wall_s), summary.tokens_per_s, format_bytes(double(summary.peak_rss_bytes)));
  {
    // The plan counts live bytes; compare it with what the device's allocator reports (CUDA) or the process's
    // peak RSS (CPU), and say why they may differ.
    const torch::Device device = impl_->device;
    const auto device_peak = device_peak_allocated_bytes(device);
    const double measured = device_peak ? double(*device_peak) : double(summary.peak_rss_bytes);
    const double planned = double(summary.planned_peak_bytes);
    std::string why;
    if (device.is_cuda() && !device_peak) {
      why = "; host RSS: this build has no CUDA allocator statistics (QLORA_CUDA=OFF)";
    } else if (!device.is_cuda() && !rss_tuning_requested() && !caching_cpu_allocator_installed()) {
      why = "; QLORA_MALLOC_TUNING=0/heap: no tensor cache, glibc keeps freed memory beyond the plan";
    }
    spdlog::info("memory: measured peak {} {} vs planned {} ({:+.1f}%{})",
                 device_peak ? "CUDA allocated" : (device.is_cuda() ? "RSS (host)" : "RSS"), format_bytes(measured),
                 format_bytes(planned), planned > 0 ? 100.0 * (measured / planned - 1.0) : 0.0, why);
  }
  const std::optional<double> eval = summary.final_eval_loss;
  spdlog::info("loss {:.4f} -> {:.4f}{}", summary.first_loss, summary.final_loss,
               eval ? fmt::format(", eval loss {:.4f} (ppl {:.2f})", *eval, std::exp(*eval)) : "");
  if (summary.stopped_early) {
    spdlog::info("stopped early at step {} of {} (eval loss did not improve for {} evaluations)", summary.steps,
                 summary.total_steps, cfg_.eval.early_stopping_patience);
  }
  if (!summary.adapter_dir.empty()) spdlog::info("adapter:     {}", summary.adapter_dir.string());
  if (!summary.best_adapter_dir.empty()) {
    spdlog::info("best:        {} (eval loss {:.4f} at step {})", summary.best_adapter_dir.string(),
                 *summary.best_eval_loss, summary.best_step);
  }
  spdlog::info("checkpoints: {}", summary.checkpoint_dir.string());
  if (impl_->metrics.enabled()) spdlog::info("metrics:     {}", summary.metrics_file.string());
  const fs::path tb = impl_->metrics.tensorboard().dir();
  if (impl_->metrics.tensorboard().enabled()) {
    spdlog::info("tensorboard: {} (view: tensorboard --logdir {})", tb.string(), tb.string());
  }
  if (fs::is_regular_file(loss_plot_path(cfg_)) && impl_->metrics.enabled()) {
    spdlog::info("loss plot:   {}{}", loss_plot_path(cfg_).string(),
                 summary.adapter_dir.empty() ? "" : " (and in " + summary.adapter_dir.string() + ")");
  }
  if (impl_->dp.enabled()) {
    spdlog::info("data parallel: {} ranks, all-reduce {:.1f} ms per step on rank 0 (time blocked after the backward)",
                 impl_->dp.world_size(), summary.allreduce_s_per_step * 1e3);
  }
}

}  // namespace qlora::trainer
