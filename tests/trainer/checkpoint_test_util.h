// Shared by the checkpoint and resume tests of tests/trainer: the small run on the tiny model and qlora-train started
// in the background (the log capture is test_util.h's).
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "test_util.h"

namespace qlora::test {

// A small alpaca run on the tiny model (24 records in <dir>/train.jsonl): `steps` updates, a checkpoint after each,
// the newest `keep` of them kept (0: all), on `threads` threads; writes <dir>/config.yaml and returns its path.
inline std::string write_run(const fs::path& dir, int64_t steps, const std::string& resume = "auto", int64_t keep = 0,
                             int threads = 2) {
  fs::create_directories(dir);
  std::string data;
  for (int i = 0; i < 24; ++i) {
    data += R"({"instruction": "Say )" + std::to_string(i) + R"(.", "input": "", "output": "Number )" +
            std::to_string(i * 7) + ".\"}\n";
  }
  if (!fs::exists(dir / "train.jsonl")) write_file_atomic(dir / "train.jsonl", data);
  const std::string yaml =
      "model:\n  path: " + tiny_model_dir().string() +
      "\n  compute_dtype: fp32\n  quant: {type: nf4, blocksize: 64, double_quant: true}\n"
      "lora: {r: 4, alpha: 8, dropout: 0.1, targets: all-linear, dtype: fp32}\n"
      "data:\n  train: " +
      (dir / "train.jsonl").string() +
      "\n  format: alpaca\n  max_seq_len: 48\n  shuffle_buffer: 8\n"
      "train:\n  seed: 3\n  max_steps: " +
      std::to_string(steps) +
      "\n  micro_batch_size: 2\n  grad_accum: 1\n  lr: 5.0e-3\n  threads: " + std::to_string(threads) +
      "\ncheckpoint: {dir: " + (dir / "ckpt").string() + ", every: 1, keep: " + std::to_string(keep) +
      ", resume: " + resume + "}\noutput_dir: " + (dir / "out").string() +
      "\nlog: {every: 1, metrics: " + (dir / "metrics.jsonl").string() + "}\n";
  write_file_atomic(dir / "config.yaml", yaml);
  return (dir / "config.yaml").string();
}

// Starts build/bin/`app` with `args` in the background, stdout and stderr to `log`; returns its pid.
inline pid_t start_app(const std::string& app, const std::vector<std::string>& args, const std::string& log) {
  const std::string path = (bin_dir() / app).string();
  std::vector<char*> argv = {const_cast<char*>(path.c_str())};
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execv(path.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

}  // namespace qlora::test
