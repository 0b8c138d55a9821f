#include "bench/machine_limits.h"

#include <ATen/Parallel.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "plan/time_plan.h"

namespace qlora::bench {

double measure_copy_bandwidth_gbs(size_t bytes, int reps) {
  std::vector<char> src(bytes), dst(bytes);
  for (size_t i = 0; i < bytes; i += 4096) src[i] = static_cast<char>(i * 31);  // fault the pages in
  std::memset(dst.data(), 1, bytes);
  const int64_t chunk = 1 << 20;
  const double s = time_best(
      [&] {
        at::parallel_for(0, static_cast<int64_t>(bytes) / chunk, 1, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) std::memcpy(dst.data() + i * chunk, src.data() + i * chunk, chunk);
        });
      },
      reps);
  return 2.0 * static_cast<double>(bytes) / s / 1e9;
}

double measure_read_bandwidth_gbs(size_t bytes, int reps) {
  const size_t words = bytes / sizeof(uint64_t);
  std::vector<uint64_t> src(words);
  for (size_t i = 0; i < words; ++i) src[i] = i;  // every page faulted in and distinct
  const int64_t chunk = (int64_t{1} << 20) / static_cast<int64_t>(sizeof(uint64_t));
  const int64_t chunks = static_cast<int64_t>(words) / chunk;
  std::vector<uint64_t> sums(static_cast<size_t>(chunks));
  const double s = time_best(
      [&] {
        at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
          for (int64_t c = b; c < e; ++c) {
            const uint64_t* p = src.data() + c * chunk;
            uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
            for (int64_t i = 0; i < chunk; i += 4) a0 += p[i], a1 += p[i + 1], a2 += p[i + 2], a3 += p[i + 3];
            sums[static_cast<size_t>(c)] = a0 + a1 + a2 + a3;
          }
        });
      },
      reps);
  uint64_t total = 0;
  for (uint64_t v : sums) total += v;
  const uint64_t n = static_cast<uint64_t>(chunks * chunk);
  if (total != n * (n - 1) / 2) throw std::runtime_error("measure_read_bandwidth_gbs: the sum is wrong");
  return static_cast<double>(n * sizeof(uint64_t)) / s / 1e9;
}

double measure_matmul_gflops(c10::ScalarType dtype, int64_t m, int64_t k, int64_t n, int reps) {
  return plan::measure_cpu_matmul_flops(dtype, m, k, n, reps) / 1e9;
}

namespace {

std::string answer_line(const std::function<nlohmann::json()>& fn) {
  nlohmann::json out;
  try {
    out = fn();
  } catch (const std::exception& e) {
    out = {{"ok", false}, {"error", e.what()}};
  }
  return out.dump() + "\n";
}

// Reads the child's end of the pipe to EOF, reaps it and parses the last non-empty line as JSON.
nlohmann::json collect_answer(int fd, pid_t pid) {
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;) text.append(buf, static_cast<size_t>(n));
  ::close(fd);
  int status = 0;
  ::waitpid(pid, &status, 0);
  while (!text.empty() && text.back() == '\n') text.pop_back();
  const size_t nl = text.rfind('\n');
  try {
    return nlohmann::json::parse(nl == std::string::npos ? text : text.substr(nl + 1));
  } catch (const std::exception&) {
    return {{"ok", false}, {"error", "child exited without a result (status " + std::to_string(status) + ")"}};
  }
}

}  // namespace

nlohmann::json run_in_child(const std::function<nlohmann::json()>& fn) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    const std::string line = answer_line(fn);
    ssize_t w = ::write(fds[1], line.data(), line.size());
    (void)w;
    ::close(fds[1]);
    ::_exit(0);
  }
  ::close(fds[1]);
  return collect_answer(fds[0], pid);
}

nlohmann::json run_in_fresh_process(const std::vector<std::string>& args) {
  // argv is built before the fork: the child of a multithreaded process only calls async-signal-safe functions.
  std::vector<std::string> argv_s{"/proc/self/exe"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
  std::fflush(nullptr);  // what this process buffered must not be printed twice
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[1]);
    ::execv("/proc/self/exe", argv.data());
    ::_exit(127);
  }
  ::close(fds[1]);
  return collect_answer(fds[0], pid);
}

int print_child_answer(const std::function<nlohmann::json()>& fn) {
  const std::string line = answer_line(fn);
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fflush(stdout);
  return 0;
}

}  // namespace qlora::bench
