// Data-parallel training (trainer/dist/distributed.h) on CPU with Gloo over loopback, with real qlora-train processes:
// 2 ranks x micro batch 4 reach the adapter of 1 process x micro batch 4 x grad accum 2 on the same data; a rank
// that is stopped (hung) or killed makes the other exit non-zero naming it; a job killed mid-checkpoint resumes
// to the adapter of an uninterrupted 2-rank run.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>

#include "common/atomic_file.h"
#include "common/error.h"
#include "lora/peft_io.h"
#include "test_util.h"
#include "trainer/config.h"
#include "trainer/dist/distributed.h"

namespace qlora::trainer {
namespace {

using Clock = std::chrono::steady_clock;

// 2 ranks vs. grad accumulation: the same micro-batches, the same per-micro-batch gradients (threads: 1 in both);
// only the order of float additions may differ (Gloo's sum vs. AccumulateGrad), so the adapters agree to float
// rounding amplified by 4 AdamW steps. Measured max |difference|: 0 (bitwise equal) on this machine.
constexpr float kAdapterTolerance = 1e-5f;
// Eval loss: float64 sums of the same per-batch float sums, grouped differently across ranks.
constexpr double kEvalLossTolerance = 1e-9;
// Seconds a collective may wait for a silent rank in these tests, and the slack allowed on top for the
// heartbeat check (2 s) and process exit.
constexpr int kTimeoutS = 4;
constexpr int kSlackS = 10;

void write_dataset(const fs::path& file) {
  const char* qa[][2] = {
      {"What color is the sky?", "The sky is blue."},  {"What is two plus two?", "Two plus two is four."},
      {"Name a fruit.", "An apple is a fruit."},       {"What do cats say?", "Cats say meow."},
      {"Where is the sun?", "The sun is in the sky."}, {"What is ice?", "Ice is frozen water."}};
  std::ofstream out(file);
  for (int r = 0; r < 10; ++r) {
    for (const auto& p : qa)
      out << R"({"instruction": ")" << p[0] << R"(", "input": "", "output": ")" << p[1] << "\"}\n";
  }
}

struct Spec {
  int64_t max_steps = 4;
  int64_t micro_batch = 4;
  int64_t grad_accum = 1;
  double dropout = 0.0;
  int64_t checkpoint_every = 0;
  double bucket_mb = 0.05;  // several buckets on the tiny model
};

fs::path make_run(const fs::path& dir, const Spec& s) {
  fs::create_directories(dir);
  write_dataset(dir / "train.jsonl");
  std::ostringstream y;
  y << "model: {path: " << test::tiny_model_dir().string() << ", compute_dtype: fp32, gradient_checkpointing: true}\n"
    << "lora: {r: 8, alpha: 16, dropout: " << s.dropout << ", targets: all-linear}\n"
    << "data: {train: " << (dir / "train.jsonl").string() << ", eval: " << (dir / "train.jsonl").string()
    << ", format: alpaca, max_seq_len: 64, packing: true, shuffle_buffer: 16}\n"
    << "train: {seed: 7, max_steps: " << s.max_steps << ", micro_batch_size: " << s.micro_batch
    << ", grad_accum: " << s.grad_accum << ", lr: 5e-3, schedule: cosine, warmup_steps: 1, threads: 1}\n"
    << "eval: {at_end: true, max_batches: 5}\n"  // 2 ranks: batches 0, 2, 4 and 1, 3
    << "checkpoint: {dir: " << (dir / "ckpt").string() << ", every: " << s.checkpoint_every << ", keep: 3}\n"
    << "output_dir: " << (dir / "out").string() << "\n"
    << "log: {every: 1, metrics: " << (dir / "metrics.jsonl").string() << "}\n"
    << "dist: {backend: gloo, timeout_s: " << kTimeoutS << ", bucket_mb: " << s.bucket_mb << "}\n";
  write_file_atomic(dir / "config.yaml", y.str());
  return dir / "config.yaml";
}

float max_adapter_difference(const fs::path& a, const fs::path& b) {
  const auto fa = lora::load_adapter(a), fb = lora::load_adapter(b);
  EXPECT_EQ(fa.modules.size(), fb.modules.size());
  float worst = 0.0f;
  for (size_t i = 0; i < fa.modules.size() && i < fb.modules.size(); ++i) {
    EXPECT_EQ(fa.modules[i].module, fb.modules[i].module);
    worst = std::max(worst, (fa.modules[i].a - fb.modules[i].a).abs().max().item<float>());
    worst = std::max(worst, (fa.modules[i].b - fb.modules[i].b).abs().max().item<float>());
  }
  return worst;
}

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// One rank of qlora-train started the torchrun way (environment variables), output to `log`.
pid_t spawn_rank(const fs::path& config, int rank, int world, int port, const fs::path& log) {
  const std::string app = (test::bin_dir() / "qlora-train").string();
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::setenv("RANK", std::to_string(rank).c_str(), 1);
    ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
    ::setenv("MASTER_ADDR", "127.0.0.1", 1);
    ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
    ::execl(app.c_str(), app.c_str(), config.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

// Waits for `pid` up to `limit`; returns the exit code (128+signal), or -1 on timeout.
int wait_for(pid_t pid, std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

bool wait_for_file(const fs::path& f, std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (fs::exists(f) && fs::file_size(f) > 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

class DataParallel : public test::TinyModelTest {};

TEST_F(DataParallel, EnvironmentParsing) {
  ::unsetenv("RANK");
  ::unsetenv("WORLD_SIZE");
  EXPECT_FALSE(dist::dist_env_from_environment().enabled());
  ::setenv("WORLD_SIZE", "2", 1);
  EXPECT_THROW(dist::dist_env_from_environment(), Error);  // RANK missing
  ::setenv("RANK", "2", 1);
  EXPECT_THROW(dist::dist_env_from_environment(), Error);  // out of range
  ::setenv("RANK", "1", 1);
  const dist::DistEnv env = dist::dist_env_from_environment();
  EXPECT_EQ(env.rank, 1);
  EXPECT_EQ(env.world_size, 2);
  EXPECT_EQ(env.local_rank, 1);
  ::unsetenv("RANK");
  ::unsetenv("WORLD_SIZE");
}

// The kernel's view of who listens on `port` (/proc/net/tcp and tcp6, state 0A): the local addresses, in hex.
std::vector<std::string> listening_addresses(int port) {
  char want[8];
  std::snprintf(want, sizeof(want), "%04X", port);
  std::vector<std::string> out;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string slot, local, remote, state;
      f >> slot >> local >> remote >> state;
      const size_t colon = local.rfind(':');
      if (state == "0A" && colon != std::string::npos && local.substr(colon + 1) == want)
        out.push_back(local.substr(0, colon));
    }
  }
  return out;
}

TEST_F(DataParallel, StoreListensOnlyOnMasterAddr) {
  // The rendezvous store is unauthenticated: rank 0 listens on MASTER_ADDR's address (loopback here), not on every
  // interface as TCPStore's own server socket would.
  dist::DistEnv env;
  env.master_addr = "127.0.0.1";
  env.master_port = free_port();
  dist::DistGroup group(env, dist::DistOptions{});
  const auto addrs = listening_addresses(env.master_port);
  ASSERT_FALSE(addrs.empty()) << "nothing listens on port " << env.master_port;
  for (const auto& a : addrs) EXPECT_EQ(a, "0100007F") << "listening on " << a << " (0100007F is 127.0.0.1)";
}

TEST_F(DataParallel, ConfigSection) {
  const fs::path cfg = make_run(test::temp_dir(), Spec{});
  const TrainConfig c = load_config(cfg);
  EXPECT_EQ(c.dist.backend, "gloo");
  EXPECT_DOUBLE_EQ(c.dist.timeout_s, kTimeoutS);
  // Without a dist section the backend follows the device.
  std::string text = read_file(cfg);
  text = text.substr(0, text.find("dist:"));
  EXPECT_EQ(parse_config(text, "c.yaml").dist.backend, "gloo");
  EXPECT_EQ(parse_config(text, "c.yaml", {"device=cuda"}).dist.backend, "nccl");
  EXPECT_DOUBLE_EQ(parse_config(text, "c.yaml").dist.timeout_s, 300.0);
  try {
    load_config(cfg, {"dist.backend=mpi"});
    FAIL() << "dist.backend=mpi accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dist.backend (from --set dist.backend=mpi): unknown value `mpi`"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(load_config(cfg, {"dist.timeout_s=0"}), Error);
  EXPECT_THROW(load_config(cfg, {"dist.bucket_size=1"}), Error);  // unknown key
  // Not part of the trajectory: changing it keeps checkpoints resumable.
  EXPECT_EQ(config_hash(load_config(cfg, {"dist.timeout_s=9", "dist.bucket_mb=1", "dist.backend=nccl"})),
            config_hash(c));
}

TEST_F(DataParallel, TwoRanksMatchOneRankWithGradAccum) {
  const fs::path root = test::temp_dir();
  Spec one;
  one.grad_accum = 2;
  auto r1 = test::run_app("qlora-train", make_run(root / "one", one).string());
  ASSERT_EQ(r1.exit_code, 0) << r1.output;

  Spec two;  // micro batch 4, grad accum 1, 2 ranks
  auto r2 = test::run_app("qlora-train", make_run(root / "two", two).string() + " --nproc 2");
  ASSERT_EQ(r2.exit_code, 0) << r2.output;
  EXPECT_NE(r2.output.find("global batch 8 rows = micro batch 4 x grad accum 1 x world size 2"), std::string::npos)
      << r2.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r2.output, m, std::regex(R"(in (\d+) buckets)"))) << r2.output;
  EXPECT_GE(std::stoi(m[1]), 2) << "the test should exercise several buckets";

  const float diff = max_adapter_difference(root / "one" / "out", root / "two" / "out");
  EXPECT_LE(diff, kAdapterTolerance);
  std::printf("max |adapter difference| 2 ranks vs grad accum 2: %g\n", diff);
  // Sharded eval (the same adapter on both sides) sums to the same loss over the same label tokens.
  const auto summary = [&](const char* run) {
    return nlohmann::json::parse(read_file(root / run / "out" / "training_summary.json"));
  };
  EXPECT_NEAR(summary("one").at("final_eval_loss").get<double>(), summary("two").at("final_eval_loss").get<double>(),
              kEvalLossTolerance);
  // And the adapter did train (the comparison is not between two untouched initialisations).
  const auto trained = lora::load_adapter(root / "two" / "out");
  EXPECT_GT(trained.modules[0].b.abs().max().item<float>(), 0.0f);
}

TEST_F(DataParallel, HungRankIsNamedWithinTimeout) {
  const fs::path root = test::temp_dir();
  Spec s;
  s.max_steps = 100000;
  const fs::path cfg = make_run(root, s);
  const int port = free_port();
  const pid_t r0 = spawn_rank(cfg, 0, 2, port, root / "rank0.log");
  const pid_t r1 = spawn_rank(cfg, 1, 2, port, root / "rank1.log");
  ASSERT_TRUE(wait_for_file(root / "metrics.jsonl", std::chrono::seconds(120))) << read_file(root / "rank0.log");
  ::kill(r1, SIGSTOP);  // hung: alive, silent
  const auto t0 = Clock::now();
  const int code = wait_for(r0, std::chrono::seconds(kTimeoutS + kSlackS));
  const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
  ::kill(r1, SIGKILL);
  ::waitpid(r1, nullptr, 0);
  if (code == -1) ::kill(r0, SIGKILL), ::waitpid(r0, nullptr, 0);
  const std::string log = read_file(root / "rank0.log");
  ASSERT_NE(code, -1) << "rank 0 did not stop within " << kTimeoutS + kSlackS << " s\n" << log;
  EXPECT_NE(code, 0);
  EXPECT_NE(log.find("rank 1 stopped responding"), std::string::npos) << log;
  EXPECT_GE(waited, kTimeoutS - 1.0);  // it waited for the timeout (a stopped peer closes no connection)
  std::printf("rank 0 stopped %.1f s after rank 1 hung (timeout %d s)\n", waited, kTimeoutS);
}

TEST_F(DataParallel, KilledRankStopsJobAndResumeMatchesUninterruptedRun) {
  const fs::path root = test::temp_dir();
  Spec s;
  s.max_steps = 6;
  s.checkpoint_every = 2;
  s.dropout = 0.1;  // rank 1's dropout stream must resume too
  auto full = test::run_app("qlora-train", make_run(root / "full", s).string() + " --nproc 2");
  ASSERT_EQ(full.exit_code, 0) << full.output;

  // SIGKILL of rank 0 (the checkpoint writer and store host) after the adapter files of checkpoint-4 (the same
  // run by a test-only build of qlora-train: tests/helpers/train_crash_mid_checkpoint.cpp).
  const std::string args = make_run(root / "split", s).string() + " --nproc 2";
  const std::string cmd = (test::bin_dir() / "qlora-train").string() + " " + args;
  const auto t0 = Clock::now();
  auto killed =
      test::run_app("train_crash_mid_checkpoint", args + " --step 4 --after " + std::string(lora::kAdapterConfigFile));
  const double took = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_NE(killed.exit_code, 0) << killed.output;
  EXPECT_NE(killed.output.find("rank 0 was killed by signal 9"), std::string::npos) << killed.output;  // launcher
  EXPECT_NE(killed.output.find("rank 0 stopped responding"), std::string::npos) << killed.output;      // rank 1
  EXPECT_LT(took, 120.0);
  ASSERT_TRUE(fs::exists(root / "split" / "ckpt" / "checkpoint-2" / "trainer_state.json"));
  EXPECT_FALSE(fs::exists(root / "split" / "ckpt" / "checkpoint-4"));  // never half-written in place
  EXPECT_FALSE(fs::exists(root / "split" / "out"));

  auto resumed = test::run_command(cmd);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos) << resumed.output;
  EXPECT_EQ(max_adapter_difference(root / "full" / "out", root / "split" / "out"), 0.0f);

  // Another world size is refused, naming both.
  auto other =
      test::run_command((test::bin_dir() / "qlora-train").string() + " " + (root / "split" / "config.yaml").string());
  EXPECT_EQ(other.exit_code, 2) << other.output;
  EXPECT_NE(other.output.find("written by a run of 2 process(es); this run has 1"), std::string::npos) << other.output;
}

}  // namespace
}  // namespace qlora::trainer
