// The training loop on the tiny model: the loss falls on a learnable dataset, eval runs on the eval split,
// resume is bitwise exact, a crash during a checkpoint write leaves the previous one usable, SIGINT stops
// cleanly with a checkpoint and exit code 130.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/atomic_file.h"
#include "common/error.h"
#include "lora/peft_io.h"
#include "test_util.h"
#include "tools/tiny_model.h"
#include "trainer/trainer.h"

namespace qlora::trainer {
namespace {

// The loss of the last updates must fall below this fraction of the first ones (measured: see the test).
constexpr double kLossFallFraction = 0.5;
// Same for the 128k-vocabulary tiny-llama3 model (its loss starts near ln(128256) + the random head's spread).
constexpr double kLlama3LossFallFraction = 0.5;

// A small learnable alpaca dataset: a few question/answer pairs, repeated.
void write_dataset(const fs::path& file, int repeats) {
  const std::vector<std::pair<std::string, std::string>> qa = {
      {"What color is the sky?", "The sky is blue."},  {"What is two plus two?", "Two plus two is four."},
      {"Name a fruit.", "An apple is a fruit."},       {"What do cats say?", "Cats say meow."},
      {"Where is the sun?", "The sun is in the sky."}, {"What is ice?", "Ice is frozen water."},
  };
  std::ofstream out(file);
  for (int r = 0; r < repeats; ++r) {
    for (const auto& [q, a] : qa) {
      out << R"({"instruction": ")" << q << R"(", "input": "", "output": ")" << a << "\"}\n";
    }
  }
}

struct RunSpec {
  int64_t max_steps = 8;
  int64_t checkpoint_every = 4;
  int64_t eval_every = 0;
  int64_t grad_accum = 2;
  int64_t micro_batch = 2;
  double lr = 5e-3;
  double dropout = 0.1;
  std::string schedule = "cosine";
  std::string dtype = "fp32";
  bool checkpointing = true;
  int64_t log_every = 1;
  fs::path model;    // empty: the tiny model fixture
  std::string tmpl;  // data.template; empty: the format's default
  std::string lora_dtype = "fp32";
  bool optimizer_offload = false;
};

// Writes data + config under `dir` and returns the config text.
std::string make_config(const fs::path& dir, const RunSpec& s) {
  fs::create_directories(dir);
  if (!fs::exists(dir / "train.jsonl")) write_dataset(dir / "train.jsonl", 10);
  if (!fs::exists(dir / "eval.jsonl")) write_dataset(dir / "eval.jsonl", 1);
  std::ostringstream y;
  y << "model:\n"
    << "  path: " << (s.model.empty() ? test::tiny_model_dir() : s.model).string() << "\n"
    << "  compute_dtype: " << s.dtype << "\n"
    << "  quant: {type: nf4, blocksize: 64, double_quant: true}\n"
    << "  gradient_checkpointing: " << (s.checkpointing ? "true" : "false") << "\n"
    << "lora: {r: 8, alpha: 16, dropout: " << s.dropout << ", targets: all-linear, dtype: " << s.lora_dtype << "}\n"
    << "data:\n"
    << "  train: " << (dir / "train.jsonl").string() << "\n"
    << "  eval: " << (dir / "eval.jsonl").string() << "\n"
    << "  format: alpaca\n"
    << (s.tmpl.empty() ? "" : "  template: " + s.tmpl + "\n") << "  max_seq_len: 64\n"
    << "  packing: true\n"
    << "  shuffle_buffer: 16\n"
    << "train:\n"
    << "  seed: 7\n"
    << "  max_steps: " << s.max_steps << "\n"
    << "  micro_batch_size: " << s.micro_batch << "\n"
    << "  grad_accum: " << s.grad_accum << "\n"
    << "  lr: " << s.lr << "\n"
    << "  schedule: " << s.schedule << "\n"
    << "  warmup_steps: 2\n"
    << "  max_grad_norm: 1.0\n"
    << "  optimizer_offload: " << (s.optimizer_offload ? "true" : "false") << "\n"
    << "  threads: 2\n"
    << "eval: {every: " << s.eval_every << ", max_batches: 4, at_end: " << (s.eval_every > 0 ? "true" : "false")
    << "}\n"
    << "checkpoint: {dir: " << (dir / "ckpt").string() << ", every: " << s.checkpoint_every
    << ", keep: 2, resume: auto}\n"
    << "output_dir: " << (dir / "out").string() << "\n"
    << "log: {every: " << s.log_every << ", metrics: " << (dir / "metrics.jsonl").string() << "}\n";
  write_file_atomic(dir / "config.yaml", y.str());
  return y.str();
}

TrainConfig config_in(const fs::path& dir, const RunSpec& s) {
  return parse_config(make_config(dir, s), (dir / "config.yaml").string());
}

std::vector<nlohmann::json> read_metrics(const fs::path& file) {
  std::vector<nlohmann::json> out;
  std::istringstream in(read_file(file));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  }
  return out;
}

// Bitwise comparison of two adapter folders: same modules, equal tensors, identical weight files.
void expect_same_adapter(const fs::path& a, const fs::path& b) {
  const auto fa = lora::load_adapter(a), fb = lora::load_adapter(b);
  ASSERT_EQ(fa.modules.size(), fb.modules.size());
  for (size_t i = 0; i < fa.modules.size(); ++i) {
    EXPECT_EQ(fa.modules[i].module, fb.modules[i].module);
    EXPECT_TRUE(torch::equal(fa.modules[i].a, fb.modules[i].a)) << fa.modules[i].module << " lora_A differs";
    EXPECT_TRUE(torch::equal(fa.modules[i].b, fb.modules[i].b)) << fa.modules[i].module << " lora_B differs";
  }
  EXPECT_EQ(read_file(a / lora::kAdapterWeightsFile), read_file(b / lora::kAdapterWeightsFile));
}

// A short run that must learn: one micro-batch of 4 rows per step, lr 1e-2 constant, no dropout, no
// gradient checkpointing, no checkpoints, a log line every 10 steps.
RunSpec learning_spec(int64_t steps) {
  RunSpec s;
  s.max_steps = steps;
  s.checkpoint_every = 0;
  s.grad_accum = 1;
  s.micro_batch = 4;
  s.lr = 1e-2;
  s.dropout = 0.0;
  s.schedule = "constant";
  s.checkpointing = false;
  s.log_every = 10;
  return s;
}

// Trains `cfg` and returns the loss of every step (and the summary in `summary` when given).
std::vector<double> step_losses(const TrainConfig& cfg, TrainSummary* summary = nullptr) {
  std::vector<double> losses;
  TrainerOptions opts;
  opts.on_step = [&](const StepMetrics& m) { losses.push_back(m.loss); };
  TrainSummary sum = run_training(cfg, opts);
  if (summary) *summary = sum;
  return losses;
}

// Mean of losses[begin, end).
double mean_loss(const std::vector<double>& losses, size_t begin, size_t end) {
  double sum = 0.0;
  for (size_t i = begin; i < end; ++i) sum += losses[i];
  return sum / static_cast<double>(end - begin);
}

class TrainerRun : public test::TinyModelTest {};

TEST_F(TrainerRun, LossFallsOnLearnableData) {
  const fs::path dir = test::temp_dir();
  RunSpec s = learning_spec(40);
  s.eval_every = 20;
  TrainSummary sum;
  const std::vector<double> losses = step_losses(config_in(dir, s), &sum);

  ASSERT_EQ(losses.size(), 40u);
  const double first = mean_loss(losses, 0, 3);
  const double last = mean_loss(losses, 35, 40);
  EXPECT_LT(last, kLossFallFraction * first) << "first " << first << " last " << last;
  EXPECT_EQ(sum.steps, 40);
  EXPECT_GT(sum.tokens, 0);
  EXPECT_GT(sum.peak_rss_bytes, 0u);

  // Outputs: the adapter in PEFT layout, the summary, metrics with eval records at steps 20 and 40.
  EXPECT_TRUE(fs::exists(dir / "out" / lora::kAdapterWeightsFile));
  EXPECT_TRUE(fs::exists(dir / "out" / lora::kAdapterConfigFile));
  EXPECT_TRUE(fs::exists(dir / "out" / "training_summary.json"));
  EXPECT_TRUE(fs::exists(dir / "out" / kEffectiveConfigFile));
  const auto metrics = read_metrics(dir / "metrics.jsonl");
  std::vector<int64_t> logged, evaluated;
  for (const auto& m : metrics) {
    logged.push_back(m.at("step").get<int64_t>());
    if (m.contains("eval_loss")) {
      evaluated.push_back(m.at("step").get<int64_t>());
      const double el = m.at("eval_loss").get<double>();
      EXPECT_TRUE(std::isfinite(el) && el > 0.0) << m.dump();
      EXPECT_NEAR(m.at("eval_ppl").get<double>(), std::exp(el), 1e-9 * std::exp(el));
    }
    for (const char* key : {"loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed"}) {
      EXPECT_TRUE(m.contains(key) || m.contains("eval_loss")) << key << " missing in " << m.dump();
    }
  }
  EXPECT_EQ(logged, (std::vector<int64_t>{10, 20, 30, 40}));
  EXPECT_EQ(evaluated, (std::vector<int64_t>{20, 40}));
  ASSERT_TRUE(sum.final_eval_loss.has_value());
  // Eval data are the training questions: the final eval loss is below the first training loss.
  EXPECT_LT(*sum.final_eval_loss, first);
}

TEST_F(TrainerRun, ResumeIsBitwiseExact) {
  const fs::path root = test::temp_dir();
  RunSpec s;  // 8 steps, grad_accum 2, dropout 0.1, checkpointing, cosine, shuffle + packing
  // Uninterrupted reference.
  TrainSummary full = run_training(config_in(root / "full", s), {});
  EXPECT_EQ(full.steps, 8);

  // Stopped after 3 steps (not a checkpoint multiple), resumed to the end.
  const TrainConfig cfg = config_in(root / "split", s);
  TrainerOptions stop;
  stop.stop_after_steps = 3;
  EXPECT_THROW(run_training(cfg, stop), Interrupted);
  ASSERT_TRUE(fs::exists(root / "split" / "ckpt" / "checkpoint-3" / kTrainerStateFile));
  EXPECT_FALSE(fs::exists(root / "split" / "out"));
  TrainSummary resumed = run_training(cfg, {});
  EXPECT_EQ(resumed.start_step, 3);
  EXPECT_EQ(resumed.steps, 8);
  EXPECT_EQ(resumed.tokens, full.tokens);
  expect_same_adapter(root / "full" / "out", root / "split" / "out");
  // Keep-2 pruning: checkpoint-3 (stop), 4, 8 were written; the newest two remain.
  EXPECT_FALSE(fs::exists(root / "split" / "ckpt" / "checkpoint-3"));
  EXPECT_TRUE(fs::exists(root / "split" / "ckpt" / "checkpoint-4"));
  EXPECT_TRUE(fs::exists(root / "split" / "ckpt" / "checkpoint-8"));
  // Metrics of the resumed run continue the first segment without duplicates.
  std::vector<int64_t> steps;
  for (const auto& m : read_metrics(root / "split" / "metrics.jsonl")) steps.push_back(m.at("step").get<int64_t>());
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));
}

// bf16 adapter storage with the AdamW states offloaded (trainer/optimizer.h): the run learns like the fp32 one, its
// adapters are bf16-representable (what the parameters held), and resuming is still bitwise exact.
TEST_F(TrainerRun, Bf16AdaptersWithOffloadLearnAndResumeExactly) {
  const fs::path root = test::temp_dir();
  RunSpec s;  // checkpoints every 4 steps, dropout 0.1, gradient checkpointing on
  s.lora_dtype = "bf16";
  s.optimizer_offload = true;
  s.max_steps = 16;
  s.grad_accum = 2;  // the second micro-batch accumulates into fp32 gradients (promote_grads_to_fp32)
  s.micro_batch = 2;
  s.lr = 1e-2;
  s.schedule = "constant";
  TrainSummary full;
  const std::vector<double> losses = step_losses(config_in(root / "full", s), &full);
  ASSERT_EQ(losses.size(), 16u);
  const double first = mean_loss(losses, 0, 3);
  const double last = mean_loss(losses, 13, 16);
  EXPECT_LT(last, 0.8 * first) << "first " << first << " last " << last;
  const auto adapter = lora::load_adapter(root / "full" / "out");
  ASSERT_FALSE(adapter.modules.empty());
  for (const auto& m : adapter.modules) {
    EXPECT_TRUE(torch::equal(m.a, m.a.to(torch::kBFloat16).to(m.a.scalar_type()))) << m.module;
    EXPECT_TRUE(torch::equal(m.b, m.b.to(torch::kBFloat16).to(m.b.scalar_type()))) << m.module;
    EXPECT_GT(m.b.abs().max().item<double>(), 0.0) << m.module << ": B never moved";
  }

  const TrainConfig cfg = config_in(root / "split", s);
  TrainerOptions stop;
  stop.stop_after_steps = 5;
  EXPECT_THROW(run_training(cfg, stop), Interrupted);
  TrainSummary resumed = run_training(cfg, {});
  EXPECT_EQ(resumed.start_step, 5);
  EXPECT_EQ(resumed.steps, 16);
  EXPECT_EQ(resumed.tokens, full.tokens);
  expect_same_adapter(root / "full" / "out", root / "split" / "out");
}

TEST_F(TrainerRun, ResumeRefusesChangedConfig) {
  const fs::path dir = test::temp_dir();
  RunSpec s;
  s.max_steps = 4;
  TrainerOptions stop;
  stop.stop_after_steps = 1;
  EXPECT_THROW(run_training(config_in(dir, s), stop), Interrupted);
  TrainConfig changed = parse_config(make_config(dir, s), (dir / "config.yaml").string(), {"train.lr=1e-4"});
  try {
    run_training(changed, {});
    FAIL() << "resume with another lr was accepted";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("cannot resume"), std::string::npos) << msg;
    EXPECT_NE(msg.find("train.lr"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--force-resume"), std::string::npos) << msg;
  }
  // --force-resume accepts it.
  TrainerOptions force;
  force.force_resume = true;
  TrainSummary s2 = run_training(changed, force);
  EXPECT_EQ(s2.start_step, 1);
  EXPECT_EQ(s2.steps, 4);
}

TEST_F(TrainerRun, FailedCheckpointWriteKeepsPreviousOne) {
  const fs::path dir = test::temp_dir();
  RunSpec s;
  s.max_steps = 6;
  s.checkpoint_every = 2;
  const TrainConfig cfg = config_in(dir, s);
  TrainerOptions failing;  // checkpoint-4 fails after its adapter and optimizer files
  failing.after_checkpoint_file = [](int64_t step, const std::string& file) {
    if (step == 4 && file == kOptimizerFile) throw Error("injected failure after " + file + " of checkpoint-4");
  };
  EXPECT_THROW(run_training(cfg, failing), Error);
  EXPECT_TRUE(fs::exists(dir / "ckpt" / "checkpoint-2" / kTrainerStateFile));
  EXPECT_FALSE(fs::exists(dir / "ckpt" / "checkpoint-4"));
  for (const auto& e : fs::directory_iterator(dir / "ckpt")) {
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  }
  TrainSummary resumed = run_training(cfg, {});
  EXPECT_EQ(resumed.start_step, 2);
  EXPECT_EQ(resumed.steps, 6);
  // Same as an uninterrupted run.
  run_training(config_in(dir / "ref", s), {});
  expect_same_adapter(dir / "ref" / "out", dir / "out");
}

TEST_F(TrainerRun, AppKilledDuringCheckpointWriteResumes) {
  const fs::path dir = test::temp_dir();
  RunSpec s;
  s.max_steps = 6;
  s.checkpoint_every = 2;
  make_config(dir, s);
  const std::string config = (dir / "config.yaml").string();
  const std::string cmd = (test::bin_dir() / "qlora-train").string() + " " + config;
  // kill -9 (SIGKILL) after the adapter, optimizer and RNG files of checkpoint-4 are written: the same run by a
  // test-only build of qlora-train (tests/helpers/train_crash_mid_checkpoint.cpp).
  auto r = test::run_app("train_crash_mid_checkpoint", config + " --step 4 --after " + kRngFile);
  EXPECT_EQ(r.exit_code, 128 + SIGKILL) << r.output;
  EXPECT_TRUE(fs::exists(dir / "ckpt" / "checkpoint-2" / kTrainerStateFile));
  EXPECT_FALSE(fs::exists(dir / "ckpt" / "checkpoint-4"));
  bool leftover = false;
  for (const auto& e : fs::directory_iterator(dir / "ckpt")) {
    leftover |= e.path().filename().string().rfind("checkpoint-4.tmp-", 0) == 0;
  }
  EXPECT_TRUE(leftover) << "expected the half-written checkpoint-4.tmp-<pid>";
  // The previous checkpoint is loadable, and rerunning resumes from it and finishes.
  EXPECT_EQ(read_trainer_state(dir / "ckpt" / "checkpoint-2").step, 2);
  EXPECT_NO_THROW(lora::load_adapter(dir / "ckpt" / "checkpoint-2"));
  r = test::run_command(cmd);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("checkpoint-2"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(dir / "out" / lora::kAdapterWeightsFile));
  for (const auto& e : fs::directory_iterator(dir / "ckpt")) {
    EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path() << " not cleaned up";
  }
  // A second run of the finished config is refused for another output, accepted for the same run.
  r = test::run_command(cmd);
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST_F(TrainerRun, SigintSavesCheckpointAndExits130) {
  const fs::path dir = test::temp_dir();
  RunSpec s;
  s.max_steps = 100000;
  s.checkpoint_every = 0;
  make_config(dir, s);
  const std::string app = (test::bin_dir() / "qlora-train").string();
  const std::string cfg = (dir / "config.yaml").string();
  const std::string log = (dir / "log.txt").string();
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execl(app.c_str(), app.c_str(), cfg.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Wait for the first logged step.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  bool logged = false;
  while (std::chrono::steady_clock::now() < deadline) {
    if (fs::exists(dir / "metrics.jsonl") && fs::file_size(dir / "metrics.jsonl") > 0) {
      logged = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(logged) << read_file(log);
  ::kill(pid, SIGINT);
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << read_file(log);
  EXPECT_EQ(WEXITSTATUS(status), 130) << read_file(log);
  // A checkpoint at the step it stopped at.
  CheckpointManager m(dir / "ckpt", 0);
  auto latest = m.latest();
  ASSERT_TRUE(latest.has_value()) << read_file(log);
  const TrainerState st = read_trainer_state(*latest);
  EXPECT_GE(st.step, 1);
  EXPECT_EQ(*latest, CheckpointManager::checkpoint_path(dir / "ckpt", st.step));
  EXPECT_NE(read_file(log).find("checkpoint saved"), std::string::npos) << read_file(log);
}

TEST_F(TrainerRun, OutputDirOfAnotherRunIsRefused) {
  const fs::path dir = test::temp_dir();
  RunSpec s;
  s.max_steps = 1;
  s.checkpoint_every = 0;
  make_config(dir, s);
  fs::create_directories(dir / "out");
  write_file_atomic(dir / "out" / "keep.txt", "x");
  try {
    run_training(config_in(dir, s), {});
    FAIL() << "an existing output_dir was overwritten";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--overwrite"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::exists(dir / "out" / "keep.txt"));
  TrainerOptions ow;
  ow.overwrite = true;
  run_training(config_in(dir, s), ow);
  EXPECT_FALSE(fs::exists(dir / "out" / "keep.txt"));
  EXPECT_TRUE(fs::exists(dir / "out" / lora::kAdapterWeightsFile));
}

// Issue #11: a tiny random Llama with Meta's real Llama 3 vocabulary (qlora-make-tiny --preset tiny-llama3) trains
// through the normal loop with the llama3 chat template (special-token ids from tokenizer.json).
TEST(TrainerLlama3, TinyLlama3TrainsWithLlama3Template) {
  const fs::path dir = test::temp_dir();
  tools::TinyModelOptions mo;
  mo.preset = "tiny-llama3";
  mo.seed = 5;
  mo.tokenizer_dir = test::source_dir() / "assets" / "llama3-tokenizer";
  const auto report = tools::make_tiny_model(dir / "model", mo);
  ASSERT_EQ(report.config.vocab_size, 128256);
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "LICENSE", "NOTICE", "model.safetensors"}) {
    EXPECT_TRUE(fs::exists(dir / "model" / f)) << f;
  }
  RunSpec s = learning_spec(30);
  s.model = dir / "model";
  s.tmpl = "llama3";
  TrainSummary sum;
  const std::vector<double> losses = step_losses(config_in(dir / "run", s), &sum);
  ASSERT_EQ(losses.size(), 30u);
  const double first = mean_loss(losses, 0, 3);
  const double last = mean_loss(losses, 25, 30);
  EXPECT_LT(last, kLlama3LossFallFraction * first) << "first " << first << " last " << last;
  std::printf("    tiny-llama3 loss: first 3 steps %.3f, last 5 steps %.3f (ratio %.3f)\n", first, last, last / first);
  EXPECT_TRUE(fs::exists(dir / "run" / "out" / lora::kAdapterWeightsFile));
  EXPECT_EQ(sum.steps, 30);
}

}  // namespace
}  // namespace qlora::trainer
